"""The REST service: FastAPI app over ContextEngine (`ragctx serve`)."""

from __future__ import annotations

from ragctx.api.app import create_app

__all__ = ["create_app"]
