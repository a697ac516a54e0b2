"""EXIT: context-aware extractive compression (Hwang et al., Findings ACL 2025; algorithms.md §5).

For each sentence the classifier reads the question, the sentence's own passage (title + text) and the
sentence, and answers whether the sentence helps: P(Yes) over {Yes, No} at the answer position. Kept:
sentences with P(Yes) >= tau (default 0.5), or the best within a budget, in original order.

Two classifiers: the scorer LM zero-shot (prompt below, per-passage shared prefix encoded once, sentence
suffixes batched: `prefix_batch`), or a cross-encoder trained by `ragctx train exit` (`[exit] model`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import Field

from ragctx.compressors.selection import Granularity, Unit
from ragctx.deadline import check_deadline
from ragctx.method import BuildContext, Method, MethodSettings
from ragctx.state import PipelineState
from ragctx.types import Passage

if TYPE_CHECKING:
    import torch

    from ragctx.models import LanguageModel

DEFAULT_TAU = 0.5
QUESTION_TEMPLATE = 'Is this sentence useful in answering the query? Answer only "Yes" or "No".'


@dataclass
class ExitLMScorer:
    """Zero-shot EXIT with the scorer LM; the prompt follows the official one (per-passage context)."""

    lm: LanguageModel
    batch_size: int = 16
    name: str = "exit"
    granularity: Granularity = "sentence"
    default_threshold: float = DEFAULT_TAU

    def prompt_ids(self, question: str, passage: Passage, sentence: str) -> list[int]:
        content = (
            f"Query:\n{question}\nFull context:\n{passage.titled_text}\nSentence:\n{sentence}\n{QUESTION_TEMPLATE}"
        )
        ids: Any = self.lm.tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return [int(x) for x in ids]

    def _yes_no(self) -> tuple[int, int]:
        tok = self.lm.tokenizer
        return tok.encode("Yes", add_special_tokens=False)[0], tok.encode("No", add_special_tokens=False)[0]

    def p_yes(self, logits: torch.Tensor) -> list[float]:
        import torch

        yes, no = self._yes_no()
        pair = torch.stack([logits[:, yes], logits[:, no]], dim=1).softmax(dim=1)
        return [float(x) for x in pair[:, 0]]

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        from ragctx.scoring.prefix_batch import last_token_logits

        by_passage: dict[int, list[int]] = {}
        for i, u in enumerate(units):
            by_passage.setdefault(u.passage_index, []).append(i)
        scores = [0.0] * len(units)
        for p, idxs in by_passage.items():
            check_deadline()
            passage = state.passages[p].passage
            seqs = [self.prompt_ids(state.question, passage, passage.text[units[i].start : units[i].end]) for i in idxs]
            for i, value in zip(idxs, self.p_yes(last_token_logits(self.lm, seqs, self.batch_size)), strict=True):
                scores[i] = value
        return scores

    def score_one_at_a_time(self, question: str, passage: Passage, sentences: Sequence[str]) -> list[float]:
        """The unbatched path (every prompt encoded whole); the batched one must select the same."""
        import torch

        out = []
        with torch.inference_mode():
            for s in sentences:
                ids = torch.tensor([self.prompt_ids(question, passage, s)], device=self.lm.device)
                out += self.p_yes(self.lm.model(ids).logits[:, -1].float().cpu())
        return out


@dataclass
class ExitCrossEncoderScorer:
    """EXIT with a cross-encoder trained by `ragctx train exit`: (question, sentence + its passage)."""

    model: Any  # sentence_transformers.CrossEncoder
    name: str = "exit"
    granularity: Granularity = "sentence"
    default_threshold: float = DEFAULT_TAU
    batch_size: int = 32

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        pairs = []
        for u in units:
            p = state.passages[u.passage_index].passage
            pairs.append((state.question, exit_pair_text(p.text[u.start : u.end], p)))
        if not pairs:
            return []
        probs = self.model.predict(pairs, batch_size=self.batch_size, show_progress_bar=False)
        return [float(x) for x in probs]


def exit_pair_text(sentence: str, passage: Passage) -> str:
    """The second text of a cross-encoder pair: the sentence first (it must survive truncation)."""
    return f"{sentence} [CONTEXT] {passage.titled_text}"


class ExitSettings(MethodSettings):
    model: str | None = Field(
        default=None,
        description="Classifier trained by `ragctx train exit` (a folder); none = the scorer LM zero-shot.",
    )


def build(ctx: BuildContext, cfg: ExitSettings) -> ExitLMScorer | ExitCrossEncoderScorer:
    if cfg.model:
        return ExitCrossEncoderScorer(ctx.models.exit_classifier(cfg.model))
    return ExitLMScorer(ctx.models.scorer())


METHOD = Method(
    "exit",
    "EXIT: keeps sentences the classifier finds useful (P(Yes) >= tau = 0.5 with no budget) or the best in budget",
    "compressor",
    build,
    ExitSettings,
)
