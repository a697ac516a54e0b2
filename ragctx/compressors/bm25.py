"""`bm25`: lexical relevance without a model. Each unit (sentence or passage) is scored by Okapi BM25
against the question, with the request's own units as the collection (Robertson & Zaragoza 2009; the
IDF is Lucene's non-negative form, log(1 + (N - n + 0.5) / (n + 0.5))).

It needs no model and scores 20 passages in about a millisecond, so it suits exact-term questions (names,
codes, numbers), pre-filtering before a model-based compressor (`bm25+ehpc`), and machines where even
MiniLM is too slow. Kept passages are put in the order of their best unit, so the caller's order does not
matter.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from pydantic import Field

from ragctx.compressors.selection import Unit
from ragctx.method import BuildContext, Method, MethodSettings
from ragctx.state import PipelineState

# Where each passage's best BM25 score is recorded (PassageResult.scores).
BM25_SCORE = "bm25"
_WORD = re.compile(r"\w+")
# Function words that carry no evidence of relevance (the questions' "who", "when"...).
_STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        "a an and are as at be by did do does for from had has have how i in is it its of on or that the this to "
        "was were what when where which who whom whose why will with",
    )
)


def terms(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if w not in _STOPWORDS]


class BM25Settings(MethodSettings):
    granularity: Literal["sentence", "passage"] = Field(
        default="sentence", description="What is scored and kept: `sentence` or `passage`."
    )
    k1: float = Field(default=1.2, ge=0.0, description="Term-frequency saturation.")
    b: float = Field(default=0.75, ge=0.0, le=1.0, description="Length normalisation (0 = none, 1 = full).")
    title: bool = Field(default=True, description="Count the passage title as part of each of its units.")
    floor: float | None = Field(
        default=None, description="A unit scoring below this is never kept, budget left or not; none = off."
    )


@dataclass
class BM25Scorer:
    granularity: Literal["sentence", "passage"] = "sentence"
    k1: float = 1.2
    b: float = 0.75
    title: bool = True
    floor: float | None = None
    name: str = "bm25"
    ranks_passages: bool = True

    def score(self, state: PipelineState, units: Sequence[Unit]) -> list[float]:
        docs = []
        for u in units:
            p = state.passages[u.passage_index].passage
            text = p.text[u.start : u.end]
            docs.append(Counter(terms(f"{p.title} {text}" if self.title and p.title else text)))
        if not docs:
            return []
        n = len(docs)
        lengths = [sum(d.values()) for d in docs]
        avg = sum(lengths) / n or 1.0
        query = set(terms(state.question))
        df = {q: sum(1 for d in docs if q in d) for q in query}
        idf = {q: math.log(1 + (n - df[q] + 0.5) / (df[q] + 0.5)) for q in query}
        scores = []
        for d, length in zip(docs, lengths, strict=True):
            norm = self.k1 * (1 - self.b + self.b * length / avg)
            scores.append(sum(idf[q] * d[q] * (self.k1 + 1) / (d[q] + norm) for q in query if q in d))
        for u, x in zip(units, scores, strict=True):
            recorded = state.passages[u.passage_index].scores
            recorded[BM25_SCORE] = max(x, recorded.get(BM25_SCORE, x))
        return scores


def build(ctx: BuildContext, cfg: BM25Settings) -> BM25Scorer:
    return BM25Scorer(cfg.granularity, cfg.k1, cfg.b, cfg.title, cfg.floor)


METHOD = Method(
    "bm25",
    "keeps the sentences (or passages) that score best by BM25 against the question, no model; passages best first",
    "compressor",
    build,
    BM25Settings,
)
