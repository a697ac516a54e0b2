"""The whole configuration: the core settings plus one section per registered method, each declared by its
method (`[ehpc] pool = 5` in TOML, `RAGCTX_EHPC__POOL=5` in the environment).

`Settings` is assembled from the registry when this module is imported, so a method installed through the
`ragctx.methods` entry points gets its section like a built-in one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import Field, create_model

from ragctx.config import CoreSettings, load_settings_of
from ragctx.config import settings_markdown as _markdown_of
from ragctx.registry import methods


def _assemble() -> type[CoreSettings]:
    sections: dict[str, Any] = {}
    for m in methods().values():
        if not m.has_settings:
            continue
        if m.section in CoreSettings.model_fields:
            raise ValueError(f"method {m.name!r}: its settings section {m.section!r} clashes with a core setting")
        sections[m.section] = (
            m.settings,
            Field(default_factory=m.settings, description=f"Settings of `{m.name}`: {m.help}"),
        )
    return create_model(  # type: ignore[call-overload,no-any-return]
        "Settings",
        __base__=CoreSettings,
        __doc__="ragctx's settings: core keys and one section per method.",
        __module__=__name__,
        **sections,
    )


if TYPE_CHECKING:
    Settings = CoreSettings
else:
    Settings = _assemble()


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides > environment > TOML file (`config_file` or `RAGCTX_CONFIG`) > defaults.
    A method's section is overridden with a dict: `load_settings(ehpc={"pool": 3})`."""
    return load_settings_of(Settings, config_file, **overrides)


def settings_markdown() -> str:
    """docs/configuration.md's table: every core key, then every method's section."""
    return _markdown_of(Settings)
