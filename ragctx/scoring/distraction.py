"""Distracting effect (Amiraz et al., ACL 2025): DE(p) = 1 - P(abstain | question, passage).

The scorer LM reads the paper's abstention instruction (as a system message), then one passage and the
question; DE is one minus the probability of the first token of `NO-RESPONSE` at the answer position
(algorithms.md §1.3, the chat-template variant of the co-authors' code). All passages of a request go
through one batched pass that encodes the shared instruction prefix once (`prefix_batch`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragctx.models import LanguageModel
from ragctx.scoring.prefix_batch import last_token_logits
from ragctx.types import Passage

ABSTAIN_INSTRUCTION = (
    "You are given a question and you must respond based on the provided documents. Respond directly "
    "without providing any premise or explanation. If none of the documents contain the answer, please "
    "respond with NO-RESPONSE. Do not try to respond based on your own knowledge."
)
ABSTAIN_STRING = "NO-RESPONSE"


@dataclass
class DistractionScorer:
    lm: LanguageModel
    batch_size: int = 16

    def prompt_ids(self, question: str, passage: Passage) -> list[int]:
        messages = [
            {"role": "system", "content": ABSTAIN_INSTRUCTION},
            {"role": "user", "content": f"Document: {passage.titled_text}\nQuestion: {question}\nAnswer:"},
        ]
        ids: Any = self.lm.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(x) for x in ids]

    @property
    def abstain_token(self) -> int:
        return int(self.lm.tokenizer.encode(ABSTAIN_STRING, add_special_tokens=False)[0])

    def score(self, question: str, passages: Sequence[Passage]) -> list[float]:
        """DE per passage, in [0, 1]; higher = the model is more inclined to answer from it."""
        if not passages:
            return []
        seqs = [self.prompt_ids(question, p) for p in passages]
        probs = last_token_logits(self.lm, seqs, self.batch_size).softmax(dim=-1)
        return [1.0 - float(x) for x in probs[:, self.abstain_token]]
