"""Adapters that plug ragctx into other frameworks.

- `ragctx.integrations.langchain`: a LangChain document compressor, retriever and reorder transformer
  (`pip install 'ragctx[langchain]'`).
- `ragctx.integrations.backends`: what they share, framework-free: run a request in process (a
  `ContextEngine`) or against a ragctx server, and read the answer (the `CompressedContext` JSON shape).

Nothing here is imported by `ragctx` itself, so the frameworks stay optional.
"""
