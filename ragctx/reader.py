"""The local reader: a small instruction-tuned LM that answers from a context (bench, local chat)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ragctx.models import LanguageModel
from ragctx.scoring.distraction import rag_messages

if TYPE_CHECKING:
    from ragctx.adapters import ReaderAdapter

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


def reader_messages(question: str, context: str | None, adapter: ReaderAdapter | None) -> list[dict[str, str]]:
    """The base model reads `qa_prompt`; an adapted one reads the prompt it was trained on (which says
    NO-RESPONSE when no document holds the answer; closed-book = no documents)."""
    if adapter is not None:
        return rag_messages(question, context or "")
    return [{"role": "user", "content": qa_prompt(question, context)}]


@dataclass
class LocalReader:
    lm: LanguageModel
    max_new_tokens: int = 12
    adapter: ReaderAdapter | None = None  # the trained reader adapter (`ragctx train reader`), if any

    def prompt_tokens(self, question: str, context: str | None) -> int:
        messages = reader_messages(question, context, self.adapter)
        ids: Any = self.lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return len(ids["input_ids"] if hasattr(ids, "keys") else ids)

    def answer(self, question: str, context: str | None) -> str:
        """Greedy answer; `context=None` asks closed-book."""
        return self.answer_many([(question, context)], batch_size=1)[0]

    def answer_many(self, requests: list[tuple[str, str | None]], batch_size: int = 8) -> list[str]:
        """Greedy answers to (question, context) pairs, `batch_size` prompts per generate call (left
        padding). Batched answers can differ from one-at-a-time ones only where padding changes the
        floating-point sums enough to flip a greedy choice between near-tied tokens."""
        import torch

        tok = self.lm.tokenizer
        lm = self.lm if self.adapter is None else self.adapter.merged(self.lm)
        prompts: list[str] = [
            str(
                tok.apply_chat_template(reader_messages(q, c, self.adapter), add_generation_prompt=True, tokenize=False)
            )
            for q, c in requests
        ]
        # Longest first: batch mates of similar length waste less padding.
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        answers: list[str] = [""] * len(prompts)
        step = max(1, batch_size)
        for start in range(0, len(order), step):
            rows = order[start : start + step]
            enc: Any = tok([prompts[i] for i in rows], return_tensors="pt", padding=True, add_special_tokens=False)
            input_ids = enc["input_ids"].to(lm.device)
            with torch.inference_mode():
                out: Any = lm.model.generate(  # type: ignore[operator]
                    input_ids,
                    attention_mask=enc["attention_mask"].to(lm.device),
                    max_new_tokens=self.max_new_tokens,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            for row, i in enumerate(rows):
                text: Any = tok.decode(out[row, input_ids.shape[1] :], skip_special_tokens=True)
                answers[i] = str(text).strip().split("\n")[0]
        return answers
