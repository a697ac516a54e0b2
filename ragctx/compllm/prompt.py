"""The reader's prompt around a context that may be tokens or concept embeddings.

The chat template is rendered once with a placeholder where the context goes, and split there: the
tokens before and after stay tokens, the context is whatever the caller puts in between. Training and
answering use this same layout.
"""

from __future__ import annotations

from typing import Any

import torch

from ragctx.models import LanguageModel
from ragctx.reader import qa_prompt

_PLACEHOLDER = "<<ragctx-context>>"


def prompt_parts(lm: LanguageModel, question: str) -> tuple[list[int], list[int]]:
    """Token ids before and after the context in the reader's chat prompt for `question`."""
    tok: Any = lm.tokenizer
    messages = [{"role": "user", "content": qa_prompt(question, _PLACEHOLDER)}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    at = text.index(_PLACEHOLDER)
    before = tok.encode(text[:at], add_special_tokens=False)
    after = tok.encode(text[at + len(_PLACEHOLDER) :], add_special_tokens=False)
    return list(before), list(after)


def embed(lm: LanguageModel, ids: list[int]) -> torch.Tensor:
    emb: Any = lm.model.get_input_embeddings()
    return emb(torch.tensor(ids, dtype=torch.long, device=lm.device))  # type: ignore[no-any-return]
