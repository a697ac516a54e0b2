"""What a method declares, and nothing more: its name, one line of help, its settings and how to build it.

Every stage of a pipeline (retrieval, filters, orders, labels, compressors) is a `Method` declared in its
own module and listed once in `ragctx/registry.py` (third-party methods through the `ragctx.methods`
entry-point group). Everything else is generated from the declarations: the stage names the engine
accepts, `ragctx stages`, the settings section `[<name>]` (`RAGCTX_<NAME>__<KEY>`), the settings docs and
README's stage table. docs/adding-a-method.md walks through adding one.

A declaring module must stay cheap to import (the CLI and the settings read every declaration): heavy
libraries (torch, transformers) are imported when the method is built or runs, not at the top.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict

if TYPE_CHECKING:
    from ragctx.cache import SegmentCache
    from ragctx.config import CoreSettings
    from ragctx.indexes.base import Retriever
    from ragctx.models import ModelRegistry
    from ragctx.segmentation import TokenCounter


class MethodSettings(BaseModel):
    """A method's own settings: a section of `Settings` named after the method (`-` becomes `_`)."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoSettings(MethodSettings):
    """For methods with nothing to set."""


S = TypeVar("S", bound=MethodSettings)

# What a method is, for listings and for the engine: a compressor's `build` returns a scorer
# (`UnitScorer`) that the shared selection runs; every other kind returns a pipeline stage.
Kind = Literal["retrieval", "filter", "order", "label", "compressor"]


@dataclass
class BuildContext:
    """What a method may use when it is built for one pipeline."""

    settings: CoreSettings
    counter: TokenCounter
    retriever: Retriever | None
    models: ModelRegistry
    segment_cache: SegmentCache | None = None


@dataclass(frozen=True)
class Method(Generic[S]):
    name: str
    help: str
    kind: Kind
    build: Callable[[BuildContext, S], Any]
    settings: type[S] = NoSettings  # type: ignore[assignment]
    # False for stages that work without a question (model-free orders).
    needs_question: bool = True

    @property
    def section(self) -> str:
        """The settings key of this method's section: `[attention_sort]`, `RAGCTX_ATTENTION_SORT__ROUNDS`."""
        return self.name.replace("-", "_")

    @property
    def has_settings(self) -> bool:
        return bool(self.settings.model_fields)


def section(settings: CoreSettings, method: Method[S]) -> S:
    """`method`'s settings in `settings`; its defaults where the settings carry no such section (settings
    made from the core class alone)."""
    value = getattr(settings, method.section, None)
    if value is None:
        return method.settings()
    if not isinstance(value, method.settings):
        raise TypeError(
            f"settings section [{method.section}] is a {type(value).__name__}, not {method.settings.__name__}"
        )
    return value
