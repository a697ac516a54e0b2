"""LlamaIndex node postprocessor backed by ragctx (`pip install 'ragctx[llamaindex]'`).

`RagctxPostprocessor` compresses (default) or reranks the nodes a LlamaIndex retriever returns, with any
ragctx method, in process (`engine=`) or against a ragctx server (`base_url=`), sync and async (the async
path is real: a worker thread in process, `httpx.AsyncClient` against a server).

- `mode="compress"`: each node that keeps something comes back cut to its kept spans (joined by a space),
  in the pipeline's order;
- `mode="rerank"`: the nodes the pipeline keeps, whole, in its order (the default method there is
  `embed-passages`, which ranks passages best first).

Either way the node's metadata is kept and `metadata["ragctx"]` added: `passage_id` (the node id), `spans`
(`[[start, end], ...]` into the node's text), `scores`, `label` and `retrieval_score`; the node's score is
the pipeline's first score for it, else the retriever's.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

from pydantic import Field

from ragctx.integrations.backends import KeptPassage, RagctxCompression, RequestOptions, read_kept_passages
from ragctx.types import Passage

try:
    from llama_index.core.postprocessor.types import BaseNodePostprocessor
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "ragctx.integrations.llamaindex needs llama-index-core: pip install 'ragctx[llamaindex]'"
    ) from exc

__all__ = ["RagctxPostprocessor"]

PROVENANCE_KEY = "ragctx"
RERANK_METHOD = "embed-passages"


class RagctxPostprocessor(RagctxCompression, BaseNodePostprocessor):
    """Compress or rerank retrieved nodes with ragctx (see the module's docstring)."""

    mode: Literal["compress", "rerank"] = Field(default="compress", description="Cut nodes to kept spans, or reorder.")

    @classmethod
    def class_name(cls) -> str:
        return "RagctxPostprocessor"

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, passages = self._request(nodes, query_bundle)
        answer = self.backend().compress(query, passages, self._options())
        return self._nodes(nodes, passages, read_kept_passages(answer))

    async def _apostprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if not nodes:
            return []
        query, passages = self._request(nodes, query_bundle)
        answer = await self.backend().acompress(query, passages, self._options())
        return self._nodes(nodes, passages, read_kept_passages(answer))

    def _options(self) -> RequestOptions:
        options = self.request_options()
        if self.mode == "rerank" and options.method is None:
            options = replace(options, method=RERANK_METHOD)
        return options

    @staticmethod
    def _request(nodes: list[NodeWithScore], query_bundle: QueryBundle | None) -> tuple[str, list[Passage]]:
        if query_bundle is None or not query_bundle.query_str.strip():
            raise ValueError("RagctxPostprocessor needs the query: pass query_bundle or query_str")
        passages = []
        seen: set[str] = set()
        for n in nodes:
            if n.node.node_id in seen:
                raise ValueError(f"two nodes have the id {n.node.node_id!r}; node ids must be unique")
            seen.add(n.node.node_id)
            title = str(n.node.metadata.get("title") or "")
            passages.append(Passage(id=n.node.node_id, text=n.node.get_content(), title=title, score=n.score))
        return query_bundle.query_str, passages

    def _nodes(
        self, nodes: list[NodeWithScore], passages: list[Passage], kept: list[KeptPassage]
    ) -> list[NodeWithScore]:
        by_id = {p.id: (n, p) for n, p in zip(nodes, passages, strict=True)}
        out = []
        for result in kept:
            node, passage = by_id[result.id]
            for span in result.spans:
                if passage.text[span.start : span.end] != span.text:
                    raise ValueError(f"span [{span.start}, {span.end}) of node {result.id!r} is not in its text")
            text = passage.text if self.mode == "rerank" else " ".join(s.text for s in result.spans)
            metadata = {
                **node.node.metadata,
                PROVENANCE_KEY: {
                    "passage_id": result.id,
                    "spans": [[s.start, s.end] for s in result.spans],
                    "scores": dict(result.scores),
                    "label": result.label,
                    "retrieval_score": result.retrieval_score,
                },
            }
            # A new node with the source's id: the caller's node objects are left untouched.
            new = TextNode(id_=node.node.node_id, text=text, metadata=metadata, relationships=node.node.relationships)
            score = next(iter(result.scores.values()), None) if result.scores else node.score
            out.append(NodeWithScore(node=new, score=score))
        return out
