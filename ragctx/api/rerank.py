"""Reranking in the dialects clients already speak: Cohere (`/v1/rerank`, `/v2/rerank`), Jina and vLLM (the
same body on `/v1/rerank`; the reply carries their `model` and `usage` too) and Hugging Face TEI
(`POST /rerank`). The score is the embedder's cosine similarity of document and query, micro-batched across
concurrent requests. With `ragctx.compress`, each returned document also comes back pruned for the query:
the kept spans of the compression pipeline run on that document alone, with character offsets.
"""

from __future__ import annotations

import uuid
from typing import Any

import anyio.to_thread
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ragctx.api.errors import ApiError, errors
from ragctx.api.limits import run_in_thread
from ragctx.api.routes import check_passages, service_of
from ragctx.api.schemas import (
    KeptSpan,
    RagctxRerankResult,
    RerankOptions,
    RerankRequest,
    RerankResponse,
    RerankResult,
    RerankUsage,
    TeiRank,
    TeiRerankRequest,
)
from ragctx.api.service import Service
from ragctx.state import Budget
from ragctx.types import Passage

router = APIRouter()

# Pruning one document alone: a rate, not the context default, since a single passage has no neighbours
# to lose to; `ehpc` keeps the sentences the query attends to without a passage-level cut first.
RERANK_COMPRESS_METHOD = "ehpc"
RERANK_COMPRESS_RATE = 0.5


async def _scores(service: Service, query: str, texts: list[str]) -> np.ndarray:
    slot = await service.admit()
    try:
        with service.deadline():
            vectors = await service.embed_batcher.submit_many([query, *texts])
    finally:
        slot.release()
    return np.stack(vectors[1:]) @ vectors[0]


def _cut_to_tokens(service: Service, text: str, limit: int) -> str:
    offsets = service.engine.counter.token_offsets(text)
    return text if len(offsets) <= limit else text[: offsets[limit - 1][1]]


@router.post(
    "/v1/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"], responses=errors()
)
@router.post(
    "/v2/rerank", response_model=RerankResponse, response_model_exclude_none=True, tags=["rerank"], responses=errors()
)
async def rerank(body: RerankRequest, request: Request) -> JSONResponse:
    """Documents ranked by relevance to the query (Cohere's body; Jina's and vLLM's too)."""
    service = service_of(request)
    texts = [body.document_text(d) for d in body.documents]
    check_passages(service, texts, "documents")
    if body.max_tokens_per_doc is not None:
        limit = body.max_tokens_per_doc
        texts = await anyio.to_thread.run_sync(lambda: [_cut_to_tokens(service, t, limit) for t in texts])
    scores = await _scores(service, body.query, texts)
    ranked = sorted(range(len(texts)), key=lambda i: -float(scores[i]))[: body.top_n]
    pruned = await _pruned(service, body.query, body.documents, texts, ranked, body.ragctx)
    results = [
        RerankResult(
            index=i,
            relevance_score=float(scores[i]),
            id=_caller_id(body.documents[i]),
            document=(_as_document(body.documents[i]) if body.return_documents else None),
            ragctx=pruned.get(i),
        )
        for i in ranked
    ]
    tokens = sum(service.engine.counter.count_many([body.query, *texts]))
    meta = {
        "api_version": {"version": "2"},
        "billed_units": {"search_units": 1},
        "tokens": {"input_tokens": tokens},
        "ragctx": {"scorer": f"embedder:{service.settings.embedder}", "similarity": "cosine"},
    }
    response = RerankResponse(
        id=str(uuid.uuid4()),
        model=body.model or f"ragctx/{service.settings.embedder}",
        results=results,
        meta=meta,
        usage=RerankUsage(total_tokens=tokens, prompt_tokens=tokens),
    )
    # As Cohere does: no `document` key at all unless documents were asked for (exclude_none).
    return JSONResponse(response.model_dump(exclude_none=True))


async def _pruned(
    service: Service,
    query: str,
    documents: list[str | dict[str, Any]],
    texts: list[str],
    ranked: list[int],
    options: RerankOptions | None,
) -> dict[int, RagctxRerankResult]:
    if options is None or not options.compress:
        return {}
    method = options.method or RERANK_COMPRESS_METHOD
    default = Budget(rate=RERANK_COMPRESS_RATE)
    budget = options.to_budget(default)

    def prune() -> dict[int, RagctxRerankResult]:
        out = {}
        for i in ranked:
            passage = Passage(id=_caller_id(documents[i]) or str(i), text=texts[i])
            ctx = service.build_context(query, [passage], budget, method, options.stages)
            (result,) = ctx.passages
            de = result.scores.get("distracting_effect")
            out[i] = RagctxRerankResult(
                text=" ".join(s.text_of(passage) for s in result.spans),
                spans=[KeptSpan(start=s.start, end=s.end, text=s.text_of(passage)) for s in result.spans],
                tokens_in=ctx.tokens_in,
                tokens_out=ctx.tokens_out,
                label=result.label,
                distracting_effect=float(de) if de is not None else None,
            )
        return out

    slot = await service.admit()
    try:
        with service.deadline():
            return await run_in_thread(slot, prune)
    finally:
        slot.release()


def _caller_id(doc: str | dict[str, Any]) -> str | None:
    if isinstance(doc, dict) and isinstance(doc.get("id"), str | int) and not isinstance(doc.get("id"), bool):
        return str(doc["id"])
    return None


def _as_document(doc: str | dict[str, Any]) -> dict[str, Any]:
    return {"text": doc} if isinstance(doc, str) else doc


@router.post(
    "/rerank", response_model=list[TeiRank], response_model_exclude_none=True, tags=["rerank"], responses=errors()
)
async def tei_rerank(body: TeiRerankRequest, request: Request) -> list[TeiRank]:
    """Hugging Face text-embeddings-inference's rerank: `{query, texts}` -> `[{index, score, text?}]`, best first."""
    service = service_of(request)
    check_passages(service, body.texts, "texts")
    texts = body.texts
    embedder = service.engine.models.embedder()
    limit = int(embedder.max_seq_length or 512)
    tokenizer = embedder.tokenizer
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    too_long = [i for i, n in enumerate(lengths) if n > limit]
    if too_long and not body.truncate:
        i = too_long[0]
        raise ApiError(
            413,
            f"texts[{i}] has {lengths[i]} tokens, more than the embedder's limit of {limit}; send `truncate: true` "
            "to cut texts to the limit",
        )
    if too_long and body.truncation_direction.lower() == "left":
        # The embedder keeps the start of a text; to keep the end instead, cut from the left here.
        texts = [_keep_end(tokenizer, t, limit) if i in set(too_long) else t for i, t in enumerate(texts)]
    scores = await _scores(service, body.query, texts)
    order = sorted(range(len(texts)), key=lambda i: -float(scores[i]))
    return [
        TeiRank(
            index=i,
            score=float(scores[i]) if body.raw_scores else (float(scores[i]) + 1) / 2,
            text=body.texts[i] if body.return_text else None,
        )
        for i in order
    ]


def _keep_end(tokenizer: Any, text: str, limit: int) -> str:
    offsets = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    keep = max(1, limit - 2)  # room for the special tokens
    return text[offsets[-keep][0] :] if len(offsets) > keep else text
