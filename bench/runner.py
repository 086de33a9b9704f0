"""The bench's side of the runner protocol (`peers/common.py`): one subprocess per side, jobs as JSON lines."""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from pathlib import Path
from typing import Self

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


class RunnerError(RuntimeError):
    pass


def pythonpath() -> str:
    """The repository first, then whatever PYTHONPATH already holds (on the device machine: the carried wheels)."""
    return os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH", "")) if p)


class Runner:
    """`with Runner("ours", sys.executable, "ours.py", log_dir) as r: r.call("load", model=...)`."""

    def __init__(self, name: str, python: str | Path, script: str, log_dir: Path, env: dict[str, str] | None = None):
        self.name = name
        self.log_path = log_dir / f"runner-{name}.log"
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("w")
        full_env = {**os.environ, "PYTHONPATH": pythonpath(), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                    **(env or {})}
        self.proc = subprocess.Popen(
            [str(python), str(BENCH / "peers" / script)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log, text=True, cwd=REPO, env=full_env,
        )

    def call(self, op: str, timeout: float = 600, **args) -> dict:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            raise RunnerError(f"{self.name} runner exited ({self.proc.poll()}); see {self.log_path}") from None
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                self.close()
                raise RunnerError(f"{self.name}: {op} took over {timeout:.0f} s")
            ready, _, _ = select.select([self.proc.stdout], [], [], min(left, 1.0))
            if ready:
                break
            if self.proc.poll() is not None:
                raise RunnerError(f"{self.name} runner exited ({self.proc.returncode}); see {self.log_path}")
        line = self.proc.stdout.readline()
        if not line:
            raise RunnerError(f"{self.name} runner exited ({self.proc.wait()}); see {self.log_path}")
        answer = json.loads(line)
        if not answer.pop("ok"):
            raise RunnerError(f"{self.name}: {op}: {answer['error']}")
        return answer

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write('{"op": "quit"}\n')
                self.proc.stdin.flush()
                self.proc.wait(timeout=20)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
        self._log.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
