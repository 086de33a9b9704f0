"""The line protocol every runner speaks, and the one timing loop every side uses.

A runner reads one JSON job per stdin line ({"op": ..., **args}) and writes one JSON answer per line to the stdout it
was started with. Library chatter that goes to stdout is sent to stderr, so the protocol cannot be corrupted.
Stdlib only: this file runs under each peer's own venv.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback
from collections.abc import Callable


def timed(fn: Callable[[], object], warmup: int, reps: int, max_s: float, min_reps: int = 1) -> list[float]:
    """Run `fn` `warmup` times untimed, then up to `reps` timed calls, stopping early once `max_s` has passed (but
    never before `min_reps` calls). Returns each call's wall time in seconds."""
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < reps and (len(times) < min_reps or time.perf_counter() - start < max_s):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def time_batches(embed: Callable[[list[list[int]]], object], batches: list[list[list[int]]], warmup: int, reps: int,
                 max_s: float) -> dict:
    """The `time_ids` answer every runner gives: `embed` called once per batch, all batches per timed call."""

    def run() -> None:
        for batch in batches:
            embed(batch)

    times = timed(run, warmup, reps, max_s)
    return {"times": times, "tokens": sum(len(s) for b in batches for s in b), "n": sum(len(b) for b in batches)}


def serve(handlers: dict[str, Callable[..., dict]]) -> None:
    """Answer jobs until stdin closes or a {"op": "quit"} arrives."""
    out = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # anything printed from here on lands on stderr
    sys.stdout = sys.stderr
    for line in sys.stdin:
        if not line.strip():
            continue
        job = json.loads(line)
        op = job.pop("op")
        if op == "quit":
            break
        try:
            answer = {"ok": True, **handlers[op](**job)}
        except Exception as exc:  # noqa: BLE001 - the bench decides whether the row or the run is lost
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        out.write(json.dumps(answer) + "\n")
        out.flush()


def versions(*dists: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    found: dict[str, str | None] = {}
    for name in dists:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found
