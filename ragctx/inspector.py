"""The context inspector, as a page and as a report: one HTML template, one stylesheet and one script
(`ragctx/data/ui/`), inlined so the page needs no build step and no network, and a report is one file.

`/ui` (ragctx.api.ui) serves `page_html`; `ragctx query/compress --html FILE` write `report_html`. Both draw
the same view with the same script from the same JSON: `CompressedContext.to_dict(include_text=True)`.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

from ragctx.io import atomic_write
from ragctx.state import Budget
from ragctx.types import CompressedContext
from ragctx.version import __version__


@cache
def _asset(name: str) -> str:
    return (resources.files("ragctx") / "data" / "ui" / name).read_text(encoding="utf-8")


def _script_json(obj: Any) -> str:
    """JSON safe inside <script>: no `</script>`, no `<!--`, whatever the passages contain."""
    return json.dumps(obj, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _sha256(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


@dataclass(frozen=True)
class InspectorHtml:
    html: str
    # The Content-Security-Policy that lets exactly this page's own script and style run (and, for the
    # live page, talk to its own origin only).
    csp: str


def _render(title: str, data: dict[str, Any], connect: str) -> InspectorHtml:
    style, script = _asset("inspector.css"), _asset("inspector.js")
    csp = (
        f"default-src 'none'; script-src {_sha256(script)}; style-src {_sha256(style)}; "
        f"img-src data:; connect-src {connect}; base-uri 'none'; form-action 'none'"
    )
    html = _asset("inspector.html")
    # The data goes last: nothing in it is ever read as a placeholder.
    for key, value in (("title", _html_escape(title)), ("version", __version__), ("csp", csp)):
        html = html.replace("{{" + key + "}}", value)
    html = html.replace("{{style}}", style).replace("{{script}}", script)
    return InspectorHtml(html=html.replace("{{data}}", _script_json(data)), csp=csp)


def _html_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


def page_html(
    methods: Sequence[tuple[str, str]],
    default_method: str,
    default_rate: float | None,
    auth: bool,
    index: bool,
    sample: dict[str, Any],
) -> InspectorHtml:
    """The live inspector (`GET /ui`): a form that posts to /v1/compress or /v1/context on its own origin."""
    data = {
        "mode": "app",
        "methods": [{"name": n, "help": h} for n, h in methods],
        "default_method": default_method,
        "default_rate": default_rate,
        "auth": auth,
        "index": index,
        "sample": sample,
    }
    return _render("ragctx context inspector", data, "'self'")


def limit_label(budget: Budget) -> str:
    if budget.tokens is not None:
        return f"budget {budget.tokens}"
    return f"rate {budget.rate}" if budget.rate is not None else "no limit"


@dataclass(frozen=True)
class ReportSection:
    """One question of a report: its context as `CompressedContext.to_dict(include_text=True)` gives it,
    what produced it and, when known, the gold answers."""

    result: dict[str, Any]
    method: str | None
    limit: str
    answers: Sequence[str] | None = None

    @classmethod
    def of(
        cls, ctx: CompressedContext, method: str | None, budget: Budget, answers: Sequence[str] | None = None
    ) -> ReportSection:
        return cls(ctx.to_dict(include_text=True), method, limit_label(budget), answers)

    @classmethod
    def from_output(
        cls,
        result: dict[str, Any],
        texts: dict[str, str],
        method: str | None,
        budget: Budget,
        answers: Sequence[str] | None = None,
    ) -> ReportSection:
        """A line of `ragctx compress` output (no passage texts) with the texts of its input line."""
        passages = [{**p, "text": texts.get(p["id"], "")} for p in result["passages"]]
        return cls({**result, "passages": passages}, method, limit_label(budget), answers)

    def to_dict(self) -> dict[str, Any]:
        return {
            "question": self.result["question"],
            "method": self.method,
            "limit": self.limit,
            "answers": list(self.answers) if self.answers else None,
            "result": self.result,
        }


def report_html(sections: Sequence[ReportSection], title: str = "ragctx context report") -> str:
    """A self-contained report (one file, opens offline): one section per question, and a plot of the kept
    ratio per question that also marks whether the answer survived when answers are given."""
    data = {"mode": "report", "sections": [s.to_dict() for s in sections]}
    return _render(title, data, "'none'").html


def write_report(path: Path, sections: Sequence[ReportSection], title: str = "ragctx context report") -> None:
    """Written through a temporary file renamed into place: never half a report."""
    html = report_html(sections, title)
    with atomic_write(path) as fh:
        fh.write(html)
