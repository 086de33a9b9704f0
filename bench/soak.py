"""Soak: a real server under mixed traffic for a long time, its RSS sampled from /proc/PID/status, plotted, and the
growth after warm-up reported as MB per 1,000 requests (a server that runs for a week must not grow).

    PYTHONPATH=. .venv/bin/python -m bench.soak                  # 20 minutes, MiniLM fp32, default flags
    PYTHONPATH=. .venv/bin/python -m bench.soak --minutes 0.5    # smoke run

Traffic, from `--concurrency` closed-loop clients on 127.0.0.1, seeded: texts of varied lengths in batches of 1-64,
token-id batches of random lengths (5-60, the shape mix that grew oneDNN's kernel cache), long texts chunked or
truncated, base64 and `dimensions`, bad inputs that must get a 4xx, clients that disconnect mid-request, and the odd
GET. Any 5xx is a failure. At the end the server gets SIGTERM and must exit 0. Writes `<date>-soak.json` and
`<date>-soak.png` to `--out` (bench/results/). Not run in CI (tests/bench/test_soak.py runs it for ~20 s)."""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib.metadata
import json
import os
import random
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np

from bench.inputs import WORDS
from bench.report import machine
from bench.runner import REPO
from bench.servers import ours

MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def slope_per_1000(requests: list[int], rss: list[float]) -> float | None:
    """Least-squares MB per 1,000 requests."""
    if len(requests) < 3 or requests[-1] == requests[0]:
        return None
    return float(np.polyfit(np.asarray(requests, float) / 1000, np.asarray(rss, float), 1)[0])


def slope_stderr(requests: list[int], rss: list[float]) -> float | None:
    """The least-squares slope's standard error (MB per 1,000 requests): with the heap trimmer each sample lands
    anywhere between two trims, so a slope means little without it."""
    if len(requests) < 4 or requests[-1] == requests[0]:
        return None
    x, y = np.asarray(requests, float) / 1000, np.asarray(rss, float)
    residuals = y - np.polyval(np.polyfit(x, y, 1), x)
    return float(np.sqrt(residuals @ residuals / (len(x) - 2) / ((x - x.mean()) @ (x - x.mean()))))


class Traffic:
    """One request at a time from a seeded mix; `kind` names it in the tallies."""

    BAD = [  # (body or raw bytes, content type): each must be a 4xx
        ({"input": ""}, None),
        ({"input": []}, None),
        ({"input": 5}, None),
        ({"input": [[]]}, None),
        ({"input": [[10**12]]}, None),
        ({"input": "x", "model": "no-such-model"}, None),
        ({"input": "x", "dimensions": 0}, None),
        ({"input": "x", "encoding_format": "hex"}, None),
        ({"input": "word " * 10_000}, None),  # over the input limit (256 tokens for MiniLM, 8,192 for nomic)
        (b'{"input": "\\ud800 lone surrogate"}', "application/json"),
        (b'{"input": "unterminated', "application/json"),
        (b'{"input": "x", "input": "y"}', "application/json"),
        (b"input=x", "application/x-www-form-urlencoded"),
        (b"[" * 100_000, "application/json"),
        (b'{"input": [[1' + b"0" * 5000 + b"]]}", "application/json"),  # an int Python refuses to convert
    ]

    def __init__(self, rng: random.Random):
        self.rng = rng

    def text(self, words: int) -> str:
        return " ".join(self.rng.choice(WORDS) for _ in range(words))

    def next(self) -> tuple[str, dict]:
        """(kind, httpx request arguments)."""
        rng, r = self.rng, self.rng.random()
        if r < 0.50:
            size = rng.choice([1, 1, 1, 2, 2, 4, 8, 16, 32, 64])
            body: dict = {"input": [self.text(rng.randint(1, 150)) for _ in range(size)]}
            if rng.random() < 0.5:
                body["encoding_format"] = "base64"
            if rng.random() < 0.2:
                body["dimensions"] = rng.choice([16, 32, 48])
            return "texts", {"json": body}
        if r < 0.72:
            ids = [[rng.randint(1000, 29000) for _ in range(rng.randint(5, 60))] for _ in range(rng.randint(1, 16))]
            return "token_ids", {"json": {"input": ids}}
        if r < 0.80:
            mode = rng.choice(["chunk", "truncate"])
            return "long", {"json": {"input": self.text(rng.randint(300, 900)), "long_input": mode}}
        if r < 0.90:
            body, ctype = rng.choice(self.BAD)
            if isinstance(body, bytes):
                return "bad", {"content": body, "headers": {"content-type": ctype}}
            return "bad", {"json": body}
        if r < 0.96:
            return "disconnect", {"json": {"input": [self.text(rng.randint(50, 150)) for _ in range(16)]}}
        return "get", {}


async def client(url: str, base: str, traffic: Traffic, stop: float, tally: Counter, failures: list) -> None:
    async with httpx.AsyncClient(timeout=120) as http:
        while time.monotonic() < stop:
            kind, args = traffic.next()
            try:
                if kind == "get":
                    r = await http.get(base + traffic.rng.choice(["/v1/models", "/health", "/metrics"]))
                elif kind == "disconnect":  # gone before its answer: the connection closes mid-request
                    timeout = httpx.Timeout(120, read=traffic.rng.uniform(0.01, 0.3))
                    r = await http.post(url, timeout=timeout, **args)
                else:
                    r = await http.post(url, **args)
            except httpx.TimeoutException:
                tally["disconnected"] += 1
                continue
            except httpx.TransportError as exc:
                tally["transport_error"] += 1
                failures.append(f"{kind}: {type(exc).__name__}")
                continue
            tally["requests"] += 1
            tally[f"{kind} {r.status_code}"] += 1
            ok = r.status_code < 300 if kind != "bad" else 400 <= r.status_code < 500
            if not ok:
                failures.append(f"{kind}: {r.status_code} {r.text[:200]}")


async def soak(args, pid: int, url: str, base: str) -> tuple[list[dict], Counter, list[str]]:
    rng = random.Random(args.seed)
    stop = time.monotonic() + args.minutes * 60
    tally: Counter = Counter()
    failures: list[str] = []
    clients = [
        asyncio.create_task(client(url, base, Traffic(random.Random(rng.random())), stop, tally, failures))
        for _ in range(args.concurrency)
    ]
    samples, start = [], time.monotonic()
    while time.monotonic() < stop:
        samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mb": round(rss_mb(pid), 1),
                        "requests": tally["requests"] + tally["disconnected"]})
        print(f"  {samples[-1]['t_s']:7.0f} s  RSS {samples[-1]['rss_mb']:7.1f} MB  {samples[-1]['requests']} requests",
              flush=True)
        await asyncio.sleep(min(args.sample_s, max(0.0, stop - time.monotonic())))
    await asyncio.gather(*clients)
    samples.append({"t_s": round(time.monotonic() - start, 1), "rss_mb": round(rss_mb(pid), 1),
                    "requests": tally["requests"] + tally["disconnected"]})
    return samples, tally, failures


def plot(samples: list[dict], warm: list[dict], slope: float | None, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.plot([s["t_s"] / 60 for s in samples], [s["rss_mb"] for s in samples], marker=".")
    left.set(xlabel="minutes", ylabel="RSS (MB)", title="RSS over time")
    right.plot([s["requests"] / 1000 for s in samples], [s["rss_mb"] for s in samples], marker=".", label="RSS")
    if slope is not None and len(warm) >= 2:
        x = np.array([s["requests"] / 1000 for s in warm])
        b = np.mean([s["rss_mb"] for s in warm]) - slope * x.mean()
        right.plot(x, slope * x + b, "--", label=f"after warm-up: {slope:+.3f} MB / 1,000 requests")
    right.set(xlabel="thousand requests", ylabel="RSS (MB)", title="RSS against requests")
    right.legend()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="how long the traffic runs")
    parser.add_argument("--warmup-minutes", type=float, default=None,
                        help="samples before this are left out of the slope (default: a quarter of the run, <= 5)")
    parser.add_argument("--sample-s", type=float, default=10.0, help="RSS sampling interval")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--server-arg", action="append", default=[], help="an extra server flag (repeatable)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the server (repeatable), e.g. MALLOC_ARENA_MAX=1 for an A/B")
    parser.add_argument("--name", default="soak", help="the result files' stem after the date")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args(argv)
    warmup_min = args.warmup_minutes if args.warmup_minutes is not None else min(5.0, args.minutes / 4)
    args.out.mkdir(parents=True, exist_ok=True)
    env = dict(item.split("=", 1) for item in args.env)
    server = ours(args.model, Path(tempfile.mkdtemp(prefix="soak-")), dtype=args.dtype, extra=args.server_arg, env=env)
    info = machine(args.dtype, "cpu", {"torch": importlib.metadata.version("torch")})  # load average at the start
    server.start()
    assert server.proc is not None
    try:
        print(f"soak: {args.minutes:g} min against {server.base} (pid {server.proc.pid}), {args.concurrency} clients")
        samples, tally, failures = asyncio.run(soak(args, server.proc.pid, server.embed_url, server.base))
    finally:
        stopped = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        try:
            exit_code = server.proc.wait(60)
        except Exception:
            server.stop()
            exit_code = None
        shutdown_s = time.monotonic() - stopped
    warm = [s for s in samples if s["t_s"] >= warmup_min * 60]
    slope = slope_per_1000([s["requests"] for s in warm], [s["rss_mb"] for s in warm])
    per_hour = None
    if len(warm) >= 2 and warm[-1]["t_s"] > warm[0]["t_s"]:
        per_hour = float(np.polyfit([s["t_s"] / 3600 for s in warm], [s["rss_mb"] for s in warm], 1)[0])
    info["loadavg_end"] = list(os.getloadavg())
    result = {
        "minutes": args.minutes, "warmup_minutes": warmup_min, "concurrency": args.concurrency, "seed": args.seed,
        "model": args.model, "server_args": args.server_arg, "server_env": env, "machine": info,
        "requests": tally["requests"], "disconnected": tally["disconnected"], "tally": dict(sorted(tally.items())),
        "failures": failures[:50], "failure_count": len(failures),
        "rss_start_mb": samples[0]["rss_mb"], "rss_end_mb": samples[-1]["rss_mb"],
        "rss_peak_mb": max(s["rss_mb"] for s in samples),
        "rss_warm_start_mb": warm[0]["rss_mb"] if warm else None,
        "slope_mb_per_1000_requests": None if slope is None else round(slope, 4),
        "slope_stderr_mb_per_1000_requests": (
            None if (se := slope_stderr([s["requests"] for s in warm], [s["rss_mb"] for s in warm])) is None
            else round(se, 4)
        ),
        "slope_mb_per_hour": None if per_hour is None else round(per_hour, 2),
        "exit_code": exit_code, "shutdown_s": round(shutdown_s, 2), "samples": samples,
    }
    stem = args.out / f"{args.date}-{args.name}"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    title = (f"{args.model} {args.dtype} {' '.join(args.env)}, {args.concurrency} clients, {tally['requests']} "
             f"requests in {args.minutes:g} min; {info['cpu_model']}, {info['cores']} cores")
    plot(samples, warm, slope, stem.with_suffix(".png"), title)
    print(json.dumps({k: v for k, v in result.items() if k not in ("samples", "machine", "failures")}, indent=1))
    for line in failures[:10]:
        print("FAILURE", line)
    return 0 if not failures and exit_code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
