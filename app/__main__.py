"""`python -m app [flags]` (console script `nomic-embed-server`): settings from flags and EMBED_* variables, then
uvicorn. SIGTERM drains: /ready turns 503 at once, new work gets 503, admitted work is answered, then exit 0."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import signal
import sys

import uvicorn
from pydantic import ValidationError

from app.main import create_app
from app.settings import Settings

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


class DrainingServer(uvicorn.Server):
    """uvicorn closes its socket at once on SIGTERM; we first drain while still answering (503 to new work)."""

    def __init__(self, config: uvicorn.Config, runtime):
        super().__init__(config)
        self.runtime = runtime
        self.fatal: str | None = None

    def handle_exit(self, sig: int, frame) -> None:
        if sig == signal.SIGTERM and not self.runtime.draining and self.started:
            self.runtime.draining = True  # /ready -> 503 now, before the loop even runs the drain
            loop = asyncio.get_event_loop()
            loop.call_soon_threadsafe(lambda: loop.create_task(self._drain_then_exit()))
            return
        super().handle_exit(sig, frame)

    async def _drain_then_exit(self) -> None:
        await self.runtime.drain()
        self.should_exit = True

    def stop_with(self, reason: str) -> None:
        self.fatal = reason
        self.should_exit = True


def main(argv: list[str] | None = None) -> int:
    try:
        settings = load_settings(argv)
    except ValidationError as exc:
        first = exc.errors()[0]
        print(f"error: invalid setting {'.'.join(map(str, first['loc']))}: {first['msg']}", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT if not settings.log_json else "%(message)s")
    server: DrainingServer | None = None

    def on_fatal(reason: str) -> None:
        if server is not None:
            server.stop_with(reason)

    app = create_app(settings, on_fatal=on_fatal)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        access_log=False,  # the app writes its own access log (request id, tokens, latency)
        timeout_keep_alive=settings.keep_alive_s,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_s),
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers
        log_config=None,
    )
    server = DrainingServer(config, app.state.runtime)
    server.run()
    if server.fatal:
        print(f"error: {server.fatal}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
