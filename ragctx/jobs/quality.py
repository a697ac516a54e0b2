"""Query-agnostic passage quality: the scorer LM's log P(relevant) plus cheap text signals.

The LM signal follows QualT5 (algorithms.md §8): read `Document: {passage} Relevant:` and take
log P(true) over the two answers {true, false}. QT5 is a fine-tuned T5; here the scorer is a small causal
instruct LM used zero-shot, so the same words are its plain-text prompt and the answer is the next token
(` true` vs ` false`). The chat template was tried and rejected: on TREC-DL passages (8 queries, 400
passages) the raw prompt separated judged-relevant passages from the rest (AUC 0.71 for grade >= 2) and
every chat-template variant tried (true/false or Yes/No, with or without a system message) did not (AUC 0.47
to 0.49); see the prune note.

The cheap signals are badness values in [0, 1] (short text, boilerplate or navigation, character noise);
each costs up to `weight` nats: quality = log P(true) - sum(weight * badness).
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import asdict, dataclass

from ragctx.models import LanguageModel
from ragctx.scoring.prefix_batch import last_token_logits
from ragctx.types import Passage

# Bump when the prompt, the answer tokens or the signals change: checkpoints of another version are not resumed.
QUALITY_VERSION = "qt5-causal-1"
PROMPT_HEAD = "Document:"
PROMPT_TAIL = " Relevant:"
ANSWERS = (" true", " false")

_WORD = re.compile(r"\w+")
_BOILERPLATE = re.compile(
    r"\b(?:cookies?|privacy policy|terms of (?:use|service)|all rights reserved|copyright|sign (?:in|up)|"
    r"log ?in|subscribe|newsletter|click here|read more|skip to (?:main )?content|back to top|share (?:this|on)|"
    r"follow us|javascript|home ?page|main menu|breadcrumbs?)\b",
    re.IGNORECASE,
)
# Menus and footers are runs of short items split by lines or separators ("Home | News | Contact").
_SEGMENT_SPLIT = re.compile(r"\n|\s[|»›•·>]\s|\s/\s")
_MOJIBAKE = re.compile(r"Ã.|Â|â€")
_PLAIN_PUNCTUATION = set(".,;:!?'\"()[]{}-–—/%$€£&@#*+=<>_~^`’‘“”…°")


@dataclass(frozen=True)
class TextSignals:
    """Model-free signals of one passage; every badness is in [0, 1], 0 = fine."""

    words: int
    short: float
    boilerplate: float
    noise: float


def text_signals(text: str, min_words: int = 12) -> TextSignals:
    words = _WORD.findall(text)
    n = len(words)
    short = max(0.0, 1.0 - n / min_words) if min_words > 0 else 0.0
    segments = [s for s in (x.strip() for x in _SEGMENT_SPLIT.split(text)) if s]
    # A menu is many short items; prose split on lines has few, long ones.
    nav = sum(len(s.split()) <= 3 for s in segments) / len(segments) if len(segments) >= 4 else 0.0
    phrases = len(_BOILERPLATE.findall(text))
    boilerplate = min(1.0, nav + 10.0 * phrases / max(n, 1))
    chars = [c for c in text if not c.isspace()]
    odd = sum(1 for c in chars if not (c.isalnum() or c in _PLAIN_PUNCTUATION)) + sum(
        1 for c in chars if unicodedata.category(c) in ("Cc", "Co", "Cs") or c == "\ufffd"
    )
    odd += 2 * len(_MOJIBAKE.findall(text))
    noise = min(1.0, 5.0 * odd / max(len(chars), 1))
    return TextSignals(words=n, short=round(short, 6), boilerplate=round(boilerplate, 6), noise=round(noise, 6))


@dataclass(frozen=True)
class QualityWeights:
    """Nats of log-probability that each badness costs at its worst (badness 1)."""

    short: float = 3.0
    boilerplate: float = 3.0
    noise: float = 3.0

    def penalty(self, signals: TextSignals) -> float:
        return self.short * signals.short + self.boilerplate * signals.boilerplate + self.noise * signals.noise

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass
class LMQualityScorer:
    """log P(true | `Document: {passage} Relevant:`) over {true, false}, under the scorer LM.

    `score` is a pure function of its input list for a fixed thread count: prompts are sorted by length
    (less padding) and cut into batches of `batch_size` in that order, and the shared-prefix pass is
    run over the whole list, so the same list gives the same batches and the same floats every time.
    """

    lm: LanguageModel
    batch_size: int = 16
    max_passage_tokens: int = 256

    def __post_init__(self) -> None:
        tok = self.lm.tokenizer
        self._head = [int(x) for x in tok.encode(PROMPT_HEAD, add_special_tokens=False)]
        self._tail = [int(x) for x in tok.encode(PROMPT_TAIL, add_special_tokens=False)]
        answer_ids = [tok.encode(a, add_special_tokens=False) for a in ANSWERS]
        if any(len(ids) != 1 for ids in answer_ids):
            raise ValueError(f"the scorer's tokenizer splits {ANSWERS}; the quality prompt needs one token each")
        self._answers = [int(ids[0]) for ids in answer_ids]

    def prompt_ids(self, passage: Passage) -> list[int]:
        # The leading space keeps the passage's first word tokenised as it is after "Document:".
        body = self.lm.tokenizer.encode(" " + passage.titled_text, add_special_tokens=False)
        return self._head + [int(x) for x in body[: self.max_passage_tokens]] + self._tail

    def score(self, passages: Sequence[Passage]) -> list[float]:
        if not passages:
            return []
        prompts = [self.prompt_ids(p) for p in passages]
        order = sorted(range(len(prompts)), key=lambda i: (len(prompts[i]), i))
        logits = last_token_logits(self.lm, [prompts[i] for i in order], self.batch_size)
        log_true = logits[:, self._answers].log_softmax(dim=-1)[:, 0]
        scores = [0.0] * len(passages)
        for rank, i in enumerate(order):
            scores[i] = float(log_true[rank])
        return scores
