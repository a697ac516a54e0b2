"""Distracting effect (Amiraz et al., ACL 2025): DE(p) = 1 - P(abstain | question, passage).

The scorer LM reads the paper's abstention instruction (as a system message), then one passage and the
question; DE is one minus the probability of the first token of `NO-RESPONSE` at the answer position
(algorithms.md §1.3, the chat-template variant of the co-authors' code). All passages of a request go
through one batched pass that encodes the shared instruction prefix once (`prefix_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from ragctx.models import LanguageModel
from ragctx.scoring.prefix_batch import last_token_logits, last_token_states
from ragctx.types import Passage

if TYPE_CHECKING:
    from ragctx.adapters import ReaderAdapter

ABSTAIN_INSTRUCTION = (
    "You are given a question and you must respond based on the provided documents. Respond directly "
    "without providing any premise or explanation. If none of the documents contain the answer, please "
    "respond with NO-RESPONSE. Do not try to respond based on your own knowledge."
)
ABSTAIN_STRING = "NO-RESPONSE"
RAG_PROMPT = "abstain-v1"  # the name of this prompt format, recorded with adapters trained on it


def rag_messages(question: str, context: str) -> list[dict[str, str]]:
    """The one prompt of the distracting-effect scorer and the adapted reader: the abstention instruction,
    then the documents (`Document: ...` for one passage, the rendered context for several; empty for
    none) and the question."""
    documents = f"{context}\n" if context else ""
    return [
        {"role": "system", "content": ABSTAIN_INSTRUCTION},
        {"role": "user", "content": f"{documents}Question: {question}\nAnswer:"},
    ]


def single_document(passage: Passage) -> str:
    return f"Document: {passage.titled_text}"


def chat_ids(lm: LanguageModel, messages: list[dict[str, str]]) -> list[int]:
    ids: Any = lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
        ids = ids["input_ids"]
    return [int(x) for x in ids]


@dataclass
class DistractionScorer:
    lm: LanguageModel
    batch_size: int = 16
    adapter: ReaderAdapter | None = None  # the trained reader adapter (`ragctx train reader`), if any
    # Where an adapted DE is read: "adapter" = the probe depth the adapter chose on its training fold
    # (if it has one; else the answer logits), None = the answer logits of the full model, k = probe k.
    read_at: int | Literal["adapter"] | None = "adapter"

    def prompt_ids(self, question: str, passage: Passage) -> list[int]:
        return chat_ids(self.lm, rag_messages(question, single_document(passage)))

    @property
    def abstain_token(self) -> int:
        return int(self.lm.tokenizer.encode(ABSTAIN_STRING, add_special_tokens=False)[0])

    def score(self, question: str, passages: Sequence[Passage]) -> list[float]:
        """DE per passage, in [0, 1]; higher = the model is more inclined to answer from it."""
        if not passages:
            return []
        seqs = [self.prompt_ids(question, p) for p in passages]
        if self.adapter is None:
            logits = last_token_logits(self.lm, seqs, self.batch_size)
        else:
            lm = self.adapter.merged(self.lm)
            layer = self.adapter.info.de_layer if self.read_at == "adapter" else self.read_at
            if layer is not None:
                if self.adapter.probes is None or layer not in self.adapter.probes.layers:
                    raise ValueError(f"the reader adapter has no probe at layer {layer}")
                # Early exit: the forward stops at the probe's depth.
                states = last_token_states(lm, seqs, layer, self.batch_size)
                with torch.inference_mode():
                    abstain = torch.sigmoid(self.adapter.probes.logit(layer, states))
                return [1.0 - float(x) for x in abstain]
            logits = last_token_logits(lm, seqs, self.batch_size)
        probs = logits.float().softmax(dim=-1)
        return [1.0 - float(x) for x in probs[:, self.abstain_token]]
