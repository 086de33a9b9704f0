"""Real servers on loopback: `python -m app` as a subprocess (what users run), or uvicorn in a thread around an
app with an injected encoder (for deterministic fakes: slow, failing)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import uvicorn

from tests.conftest import NOMIC, ROOT

READY_TIMEOUT = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(
    base: str, proc: subprocess.Popen | None = None, timeout: float = READY_TIMEOUT, probe: str = "/ready"
) -> None:
    """Until `probe` answers 200: /ready (the models are warm), or /health (the server answers HTTP at all)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read() if proc.stderr else ''}")
        try:
            if httpx.get(f"{base}{probe}", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{base}{probe} not 200 after {timeout} s")


class ServerProcess:
    """fp32 unless the args say otherwise: tests compare against exact references, and `auto` picks bf16 on CPUs
    with native bf16 (AMX, AVX512-BF16)."""

    def __init__(self, *args: str, env: dict[str, str] | None = None):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"server-{self.port}.log"
        cmd = [
            sys.executable,
            "-m",
            "app",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--device",
            "cpu",
            "--dtype",
            "float32",
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env={**os.environ, **(env or {})},
            stdout=self.log.open("w"),
            stderr=subprocess.STDOUT,
            text=True,
        )

    def wait_ready(self) -> ServerProcess:
        try:
            wait_ready(self.base, self.proc)
        except Exception:
            self.stop()
            raise RuntimeError(f"server failed to start:\n{self.log.read_text()[-3000:]}") from None
        return self

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text()

    def output_containing(self, text: str, timeout: float = 5.0) -> str:
        """The log once `text` is in it (the access log line is written as the response goes out, not before)."""
        deadline = time.monotonic() + timeout
        while text not in (out := self.output()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return out


@contextmanager
def server_process(*args: str, env: dict[str, str] | None = None):
    server = ServerProcess(*args, env=env).wait_ready()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def thread_server(settings, encoder, encoders=None, ready: bool = True):
    """uvicorn in a thread around create_app(settings, encoder, encoders=...): real HTTP, injected (fake) encoders.
    Yields once the server is ready (or, with ready=False, once it answers HTTP at all)."""
    from app.main import create_app

    port = free_port()
    app = create_app(settings.model_copy(update={"port": port}), encoder=encoder, encoders=encoders)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base, timeout=30, probe="/ready" if ready else "/health")
        yield base, app
    finally:
        server.should_exit = True
        thread.join(30)


@pytest.fixture(scope="session")
def minilm_server():
    with server_process("--max-wait-ms", "5") as server:
        yield server


@pytest.fixture(scope="session")
def nomic_server():
    with server_process("--model", str(NOMIC / "nomic-text-tiny"), "--served-model-name", "nomic-tiny") as server:
        yield server


@pytest.fixture(scope="session")
def api_schema(nomic_server):
    import schemathesis

    return schemathesis.openapi.from_url(f"{nomic_server.base}/openapi.json")
