"""`GET /ui`: the context inspector page (ragctx.inspector), served by the service itself.

The page is static and holds no secret, so it is public even when API keys are set: a browser cannot add
a header to a navigation. The requests it makes to /v1/compress and /v1/context carry the key the user
types in.
"""

from __future__ import annotations

from functools import cache

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from ragctx.api.service import Service
from ragctx.inspector import InspectorHtml, page_html
from ragctx.registry import compressors
from ragctx.sample import sample_request

router = APIRouter()


@cache
def _page(default_method: str, default_rate: float | None, auth: bool, index: bool) -> InspectorHtml:
    methods = [("none", "no compression"), *((name, m.help) for name, m in compressors().items())]
    return page_html(methods, default_method, default_rate, auth, index, sample_request())


@router.get("/ui", response_class=HTMLResponse, tags=["inspector"])
async def ui(request: Request) -> HTMLResponse:
    """The context inspector: paste a question and passages (or query the index), pick methods and budgets,
    and see every passage in its final order with the kept spans highlighted in place."""
    service: Service = request.app.state.service
    settings = service.settings
    chain = (
        "+".join(s for s in settings.stages if s in compressors()) or "none"
    )  # the method a request without one gets
    page = _page(
        chain,
        settings.default_budget().rate,
        bool(settings.api_keys),
        service.engine.retriever is not None,
    )
    headers = {
        "Content-Security-Policy": page.csp + "; frame-ancestors 'none'",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": "no-cache",
    }
    return HTMLResponse(page.html, headers=headers)
