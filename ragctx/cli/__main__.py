"""`python -m ragctx.cli ...` runs the CLI (tests and benchmarks start subprocesses this way)."""

from ragctx.cli import app

app()
