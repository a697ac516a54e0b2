"""`ragctx stages` and `ragctx config`."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from ragctx.cli.common import ConfigOpt, app, console, settings_or_exit
from ragctx.config import settings_markdown
from ragctx.registry import STAGE_HELP


@app.command("stages")
def list_stages() -> None:
    """List the pipeline stages and compression methods."""
    table = Table(title="stages")
    table.add_column("name")
    table.add_column("what it does")
    for name, text in STAGE_HELP.items():
        table.add_row(name, text)
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
