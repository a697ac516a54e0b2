"""`ragctx`: build an index, query it, compress batches, run the bench, serve. One module per command group;
commands parse their arguments and call the library (every one through ContextEngine)."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from typing import Annotated

import typer

from ragctx.cli.common import app

# Each module registers its commands on the apps of `common` when imported; this order is `--help`'s.
COMMAND_MODULES = ("index", "query", "bench", "calibrate", "train", "prune", "info", "serve")
for _name in COMMAND_MODULES:
    importlib.import_module(f"ragctx.cli.{_name}")

__all__ = ["app"]


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    # SIGTERM (a job scheduler stopping us, `kill`) unwinds like Ctrl-C, so temporary files are removed
    # and partial outputs stay resumable; `ragctx serve` replaces it with uvicorn's graceful shutdown.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _interrupt)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")
