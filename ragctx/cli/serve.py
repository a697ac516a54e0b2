"""`ragctx serve`: the REST service."""

from __future__ import annotations

from typing import Annotated

import typer

from ragctx.cli.common import ConfigOpt, IndexDirOpt, app, fail, settings_or_exit


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve to a public interface


@app.command()
def serve(
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port.")] = 8000,
    allow_public_without_keys: Annotated[
        bool,
        typer.Option(
            "--allow-public-without-keys",
            help="Serve on a non-loopback interface with no API keys (setting `allow_public_without_keys`).",
        ),
    ] = False,
    config: ConfigOpt = None,
    index_dir: IndexDirOpt = None,
) -> None:
    """Run the REST service (context, compress, rerank, OpenAI-compatible chat); JSON logs on stderr."""
    import uvicorn

    from ragctx.api import create_app
    from ragctx.api.logs import configure_json_logging

    s = settings_or_exit(config, index_dir=index_dir)
    if not _loopback(host) and not s.api_keys and not (allow_public_without_keys or s.allow_public_without_keys):
        fail(
            f"refusing to serve on {host} without API keys: set RAGCTX_API_KEYS (a JSON list), listen on "
            "127.0.0.1, or pass --allow-public-without-keys (RAGCTX_ALLOW_PUBLIC_WITHOUT_KEYS=1) if the network "
            "in front of it authenticates",
            2,
        )
    configure_json_logging()
    # Our middleware logs every request as JSON with its id, so uvicorn's access log would only repeat it.
    uvicorn.run(create_app(s), host=host, port=port, log_config=None, access_log=False)


if __name__ == "__main__":
    app()
