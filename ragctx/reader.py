"""The local reader: a small instruction-tuned LM that answers from a context (bench, local chat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ragctx.models import LanguageModel

QA_INSTRUCTION = (
    "Write a high-quality answer for the given question using only the provided search results "
    "(some of which might be irrelevant). Answer with a short phrase."
)
CLOSED_BOOK_INSTRUCTION = "Answer the question with a short phrase."


def qa_prompt(question: str, context: str | None) -> str:
    if context is None:
        return f"{CLOSED_BOOK_INSTRUCTION}\n\nQuestion: {question}"
    return f"{QA_INSTRUCTION}\n\n{context}\n\nQuestion: {question}"


@dataclass
class LocalAnswer:
    text: str
    prompt_tokens: int  # positions the reader read: tokens, or tokens + concept embeddings
    completion_tokens: int


@dataclass
class LocalReader:
    lm: LanguageModel
    max_new_tokens: int = 12

    def answer(self, question: str, context: str | None) -> str:
        """Greedy answer; `context=None` asks closed-book."""
        import torch

        tok = self.lm.tokenizer
        messages = [{"role": "user", "content": qa_prompt(question, context)}]
        enc: Any = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
        input_ids = enc["input_ids"].to(self.lm.device)
        with torch.inference_mode():
            out: Any = self.lm.model.generate(  # type: ignore[operator]
                input_ids,
                attention_mask=enc["attention_mask"].to(self.lm.device),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        text: Any = tok.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)
        return str(text).strip().split("\n")[0]
