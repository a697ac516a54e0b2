"""`ragctx serve`: the REST service."""

from __future__ import annotations

from typing import Annotated

import typer

from ragctx.cli.common import ConfigOpt, IndexDirOpt, app, settings_or_exit


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Run the REST service (context, compress, rerank, OpenAI-compatible chat); JSON logs on stderr."""
    import uvicorn

    from ragctx.api import create_app
    from ragctx.api.logs import configure_json_logging

    s = settings_or_exit(config, index_dir=index_dir)
    configure_json_logging()
    # Our middleware logs every request as JSON with its id, so uvicorn's access log would only repeat it.
    uvicorn.run(create_app(s), host=host, port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    app()
