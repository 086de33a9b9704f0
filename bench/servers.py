"""The servers under load, each a subprocess on 127.0.0.1: ours (`python -m app`) and Infinity (`infinity_emb v2`
from its own venv). Started, waited on until ready, and always stopped (SIGTERM, then SIGKILL) by the bench."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Self

import httpx

from bench.runner import REPO, pythonpath


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, name: str, cmd: list[str], ready_path: str, embed_path: str, log_dir: Path,
                 env: dict[str, str] | None = None, port: int | None = None):
        self.name, self.port = name, port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.ready_path, self.embed_url = ready_path, f"http://127.0.0.1:{self.port}{embed_path}"
        self.cmd = [c.replace("{port}", str(self.port)) for c in cmd]
        self.log_path = log_dir / f"server-{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, "PYTHONPATH": pythonpath(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    "DO_NOT_TRACK": "1", "INFINITY_ANONYMOUS_USAGE_STATS": "0", **(env or {})}
        self.proc: subprocess.Popen | None = None
        self.model_id: str | None = None

    def start(self, timeout_s: float = 180) -> Self:
        log = self.log_path.open("w")
        self.proc = subprocess.Popen(self.cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = self.log_path.read_text().strip().splitlines()[-5:]
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}: {' | '.join(tail)}")
            try:
                if httpx.get(self.base + self.ready_path, timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        else:
            self.stop()
            raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s (log: {self.log_path})")
        self.model_id = self._model_id()
        return self

    def _model_id(self) -> str | None:
        for path in ("/v1/models", "/models"):
            try:
                response = httpx.get(self.base + path, timeout=5)
                if response.status_code == 200:
                    return response.json()["data"][0]["id"]
            except (httpx.HTTPError, KeyError, IndexError, ValueError):
                continue
        return None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def ours(model: str, log_dir: Path, dtype: str = "float32", extra: list[str] | None = None,
         device: str = "cpu", env: dict[str, str] | None = None, name: str = "ours") -> Server:
    cmd = [sys.executable, "-m", "app", "--model", model, "--host", "127.0.0.1", "--port", "{port}",
           "--device", device, "--dtype", dtype, *(extra or [])]
    return Server(name, cmd, "/ready", "/v1/embeddings", log_dir, env=env)


def noop(log_dir: Path) -> Server:
    """A no-op uvicorn app (`bench/noop_app.py`): the machine's HTTP floor for the same client and pacing."""
    cmd = [sys.executable, "-m", "uvicorn", "--app-dir", str(REPO / "bench"), "noop_app:app", "--host", "127.0.0.1",
           "--port", "{port}", "--log-level", "warning"]
    return Server("noop", cmd, "/ready", "/v1/embeddings", log_dir)


def infinity(executable: Path, model: str, log_dir: Path, dtype: str = "float32") -> Server:
    cmd = [str(executable), "v2", "--model-id", model, "--host", "127.0.0.1", "--port", "{port}",
           "--engine", "torch", "--device", "cpu", "--dtype", dtype, "--no-bettertransformer"]
    return Server("infinity", cmd, "/health", "/embeddings", log_dir)
