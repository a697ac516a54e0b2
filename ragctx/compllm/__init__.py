"""CompLLM: segment-wise soft compression for local target models (concept embeddings, cached per segment)."""

from ragctx.compllm.compressor import CompLLM, CompLLMConfig
from ragctx.compllm.reader import CompressedReader, SoftPrompt

__all__ = ["CompLLM", "CompLLMConfig", "CompressedReader", "SoftPrompt"]
