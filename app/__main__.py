"""`python -m app [flags]` (console script `nomic-embed-server`): settings from flags and EMBED_* variables, then
uvicorn (`app/server.py`). SIGTERM or SIGINT drains: /ready turns 503 at once, new work gets 503, admitted work is
answered, and the process exits 0 within `shutdown_grace_s`."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import NoReturn

import uvicorn
from pydantic import ValidationError

from app import logs
from app.main import create_app
from app.server import BACKLOG, Server, connection_limit, guarded_protocol
from app.settings import Settings


def build_parser() -> argparse.ArgumentParser:
    """One flag per setting, generated from the Settings fields, so flags, env vars and docs never drift apart."""
    parser = argparse.ArgumentParser(prog="python -m app", description="OpenAI-compatible embedding server")
    for name, field in Settings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        help_text = f"{field.description} (env EMBED_{name.upper()})"
        if field.annotation is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif name == "cors_origins":
            parser.add_argument(flag, nargs="*", default=None, help=help_text)
        elif name == "model":  # repeatable: one model per flag
            parser.add_argument(flag, action="append", default=None, metavar="[NAME=]SOURCE", help=help_text)
        else:
            parser.add_argument(flag, default=None, help=help_text)
    return parser


def load_settings(argv: list[str] | None) -> Settings:
    args = {k: v for k, v in vars(build_parser().parse_args(argv)).items() if v is not None}
    return Settings(**args)


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    logs.configure(json_lines=settings.log_json)
    server: Server | None = None

    def on_fatal(reason: str) -> None:
        if server is not None:
            server.stop_with(reason)

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # the app writes its own access log (request id, tokens, latency)
        http=guarded_protocol(settings.header_timeout_s, connection_limit(settings.max_connections)),  # type: ignore[arg-type]
        backlog=BACKLOG,
        timeout_keep_alive=settings.keep_alive_s,
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        log_config=None,
    )
    server = Server(config, app.state.runtime, budget_s=settings.shutdown_grace_s)
    server.run()
    if server.fatal:
        print(f"error: {server.fatal}", file=sys.stderr)
        return 1
    return 0


def run() -> NoReturn:
    """The console script and `python -m app`: main(), then exit without the interpreter's teardown. Once the server
    has shut down nothing is left to clean up, and tearing torch down took 2.4-4.4 s on a loaded 2-core box: time
    the shutdown budget needs (the logs are flushed first)."""
    code = main()
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
