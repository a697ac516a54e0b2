"""Every stage and method by name, in one place: one line each (third-party methods through the
`ragctx.methods` entry-point group). Names, help, settings sections and docs all come from these
declarations (ragctx/method.py; docs/adding-a-method.md)."""

from __future__ import annotations

import importlib.metadata
import logging
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any

from ragctx.compressors import bm25, budget, ehpc, embed_passages, random_drop, truncate
from ragctx.compressors import exit as exit_method
from ragctx.compressors.selection import CompressStage, ForceKeep
from ragctx.method import BuildContext, Method, section
from ragctx.pipeline.stages import DEDUP, RETRIEVE
from ragctx.reordering import attention_sort, attnrank, orders
from ragctx.scoring import labels

if TYPE_CHECKING:
    from ragctx.pipeline.base import Stage

log = logging.getLogger(__name__)

# In the order `ragctx stages` lists them.
BUILTIN: tuple[Method[Any], ...] = (
    RETRIEVE,
    DEDUP,
    orders.LIM_LANGCHAIN,
    orders.LIM_LLAMAINDEX,
    orders.INVERSE,
    orders.SHUFFLE,
    labels.METHOD,
    attention_sort.METHOD,
    attnrank.METHOD,
    budget.METHOD,
    truncate.METHOD,
    random_drop.METHOD,
    embed_passages.METHOD,
    ehpc.METHOD,
    exit_method.METHOD,
    bm25.METHOD,
)

ENTRY_POINT_GROUP = "ragctx.methods"


@cache
def methods() -> dict[str, Method[Any]]:
    """Built-in methods, then those of installed packages (entry points in `ragctx.methods`, each a `Method`)."""
    out = {m.name: m for m in BUILTIN}
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        method = ep.load()
        if not isinstance(method, Method):
            raise TypeError(f"entry point {ep.name!r} ({ep.value}) of group {ENTRY_POINT_GROUP} is not a ragctx Method")
        if method.name in out:
            raise ValueError(f"method {method.name!r} from entry point {ep.value} clashes with one already registered")
        out[method.name] = method
    return out


def stages_markdown() -> str:
    """README's stage table, from the declarations."""
    rows = ["| stage | kind | what it does | settings |", "|---|---|---|---|"]
    for m in methods().values():
        keys = ", ".join(f"`{k}`" for k in m.settings.model_fields)
        rows.append(f"| `{m.name}` | {m.kind} | {m.help} | {f'`[{m.section}]` ' + keys if keys else ''} |")
    return "\n".join(rows)


def compressors() -> dict[str, Method[Any]]:
    return {n: m for n, m in methods().items() if m.kind == "compressor"}


# Methods whose output is not text but embeddings that only a local target model can read.
SOFT_METHODS: dict[str, str] = {
    "compllm": "CompLLM: each 20-token segment becomes 10 concept embeddings the local reader reads (soft prompt)",
}


def soft_method_error(method: str) -> str:
    return (
        f"method {method!r} turns the context into embeddings that only a local model can read, not text: "
        "use it to answer with the local reader (`ragctx query --answer`, or /v1/chat/completions without an upstream)"
    )


def known_stage_names() -> set[str]:
    return set(methods())


def check_stage_names(names: list[str]) -> None:
    """Settings name stages as plain strings (config sits below the registry); the engine checks them here."""
    unknown = [s for s in names if s not in methods()]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(known_stage_names())}")


def compression_methods() -> list[str]:
    return ["none", *compressors()]


def all_methods() -> list[str]:
    """Text methods and soft-prompt methods."""
    return [*compression_methods(), *SOFT_METHODS]


def text_method(method: str | None) -> str | None:
    """The text pipeline's method for `method`: soft methods read the uncompressed passages."""
    return "none" if method in SOFT_METHODS else method


def with_method(stages: list[str], method: str | None) -> list[str]:
    """Replace the compression stage(s) of `stages` by `method` (`none` removes them).

    `method` may chain compressors with `+` (e.g. `embed-passages+truncate`): all but the last keep a
    looser budget (see ContextEngine.pipeline) and the last one meets it.
    """
    if method is None:
        return list(stages)
    if method in SOFT_METHODS:
        raise ValueError(soft_method_error(method))
    chain = [] if method == "none" else method.split("+")
    known = compressors()
    unknown = [m for m in chain if m not in known]
    if unknown or not (chain or method == "none"):
        raise ValueError(f"unknown method {method!r}; known: {compression_methods()} (chain with +)")
    return [s for s in stages if s not in known] + chain


@dataclass
class StageFactory(BuildContext):
    """Builds stages by name for one pipeline; a compressor's scorer runs inside the shared selection."""

    def build(self, name: str) -> Stage:
        method = methods().get(name)
        if method is None:
            raise ValueError(f"unknown stage {name!r}; known: {sorted(known_stage_names())}")
        built = method.build(self, section(self.settings, method))
        if method.kind != "compressor":
            return built  # type: ignore[no-any-return]
        s = self.settings
        force = ForceKeep(s.force_keep_numbers, s.force_keep_first_sentence, tuple(s.force_keep_strings))
        return CompressStage(built, self.counter, force=force)
