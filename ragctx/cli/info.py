"""`ragctx stages` and `ragctx config`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from ragctx.cli.common import ConfigOpt, app, console, settings_or_exit
from ragctx.registry import methods, stages_markdown
from ragctx.settings import settings_markdown


@app.command("stages")
def list_stages(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print README's table of stages.")] = False,
) -> None:
    """List the pipeline stages and compression methods, with their settings."""
    if markdown:
        sys.stdout.write(stages_markdown() + "\n")
        return
    table = Table(title="stages (compressors chain with +; settings: [section] key, or RAGCTX_SECTION__KEY)")
    table.add_column("name")
    table.add_column("kind")
    table.add_column("what it does")
    table.add_column("settings")
    for m in methods().values():
        keys = ", ".join(f"{k}={f.default!r}" for k, f in m.settings.model_fields.items())
        table.add_row(m.name, m.kind, m.help, f"[{m.section}] {keys}" if keys else "")
    console.print(table)


@app.command("config")
def show_config(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the documented table of keys.")] = False,
    config: ConfigOpt = None,
) -> None:
    """Print the effective configuration (or every key with its default)."""
    if markdown:
        sys.stdout.write(settings_markdown() + "\n")
        return
    s = settings_or_exit(config)
    console.print_json(s.model_dump_json())
