"""The OpenAPI schema, completed with what only the running service knows: its size limits
(`max_passages`, `max_passage_chars`) and the stage and method names registered (plug-ins included), so a
request the schema allows is one the service serves, and one it forbids is refused."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from ragctx.registry import SOFT_METHODS, compressors, known_stage_names
from ragctx.settings import Settings

# (schema, field holding the list of passages / documents / texts)
_LISTS = [
    ("CompressRequest", "passages"),
    ("DocumentsRequest", "passages"),
    ("RerankRequest", "documents"),
    ("TeiRerankRequest", "texts"),
    ("ChatContextOptions", "passages"),
]
_BUDGETED = ["ContextRequest", "CompressRequest", "ChatContextOptions", "RerankOptions"]


def method_pattern(soft: bool) -> str:
    names = "|".join(re.escape(n) for n in sorted(compressors(), key=len, reverse=True))
    extra = "".join(f"|{re.escape(n)}" for n in SOFT_METHODS) if soft else ""
    return f"^(none{extra}|(?:{names})(?:\\+(?:{names}))*)$"


def _variants(prop: dict[str, Any]) -> list[dict[str, Any]]:
    return [v for v in prop.get("anyOf", [prop]) if v.get("type") != "null"]


def install_openapi(app: FastAPI, settings: Settings) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, summary=app.summary, routes=app.routes, description=app.description
        )
        components = schema.get("components", {}).get("schemas", {})
        for name, field in _LISTS:
            prop = components.get(name, {}).get("properties", {}).get(field)
            for variant in _variants(prop or {}):
                if variant.get("type") == "array":
                    variant["maxItems"] = settings.max_passages
                    for item in _variants(variant.get("items", {})):
                        if item.get("type") == "string":
                            item["maxLength"] = settings.max_passage_chars
                        elif item.get("type") == "object" and name == "RerankRequest":  # {"text": ..., ...}
                            text_limit = {"type": "string", "maxLength": settings.max_passage_chars}
                            item.setdefault("properties", {})["text"] = text_limit
                            item["required"] = ["text"]
        text = components.get("PassageIn", {}).get("properties", {}).get("text")
        if text is not None:
            text["maxLength"] = settings.max_passage_chars
        stages = sorted(known_stage_names())
        for name in _BUDGETED:
            props = components.get(name, {}).get("properties", {})
            for variant in _variants(props.get("stages", {})):
                if variant.get("type") == "array":
                    variant["items"] = {"type": "string", "enum": stages}
            for variant in _variants(props.get("method", {})):
                if variant.get("type") == "string":
                    variant["pattern"] = method_pattern(soft=name == "ChatContextOptions")
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
