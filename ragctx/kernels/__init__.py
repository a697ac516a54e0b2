"""The head-scoring pass: how much attention the question pays to each context position."""

from ragctx.kernels.attention_mass import attention_mass

__all__ = ["attention_mass"]
