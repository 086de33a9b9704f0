"""The native-memory check of issue 17 (point 2), shorter than the soak: the traffic that grew the server, and only it.

    PYTHONPATH=. .venv/bin/python -m bench.leak                 # 1,500 requests, ours against ours with oneDNN's
                                                                # default cache sizes, rounds interleaved
    PYTHONPATH=. .venv/bin/python -m bench.leak --requests 300  # a quick look

Each request holds 10 token-id inputs of random lengths (5-60), 16 in flight at a time: nearly every encoder batch has
a token count the server has not seen, and oneDNN compiles (and caches) a primitive per count. Two real servers run
side by side, ours as shipped and the same code with oneDNN's and ideep's cache sizes set back to their defaults
(1,024 each, `--baseline-env`), taking the traffic in turns of 100 requests; RSS (`/proc/PID/status` VmRSS) is read
after each turn. Reported: the growth after warm-up and its slope per 1,000 requests. Writes `<date>-leak.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

from bench import loadgen
from bench.report import machine
from bench.runner import REPO
from bench.servers import Server, ours
from bench.soak import rss_mb, slope_per_1000

BASELINE_ENV = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "1024", "LRU_CACHE_CAPACITY": "1024"}


def bodies(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [{"input": [[rng.randint(1000, 29000) for _ in range(rng.randint(5, 60))] for _ in range(10)]}
            for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.leak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1500, help="requests per server")
    parser.add_argument("--turn", type=int, default=100, help="requests per turn (an RSS sample after each)")
    parser.add_argument("--warmup", type=int, default=1000,
                        help="requests before the slope is measured (the 256-entry cache fills in ~1,000)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--no-baseline", action="store_true", help="only the shipped server")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--date", default=datetime.date.today().isoformat())
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="leak-"))
    servers: list[Server] = [ours(args.model, logs, args.dtype)]
    if not args.no_baseline:
        servers.append(ours(args.model, logs, args.dtype, env=BASELINE_ENV, name="oneDNN default caches"))
    traffic = bodies(args.requests, seed=0)
    samples: dict[str, list[dict]] = {s.name: [] for s in servers}
    started, info = time.monotonic(), machine(args.dtype, "cpu", {})
    try:
        for server in servers:
            server.start()
        for first in range(0, args.requests, args.turn):
            turn = traffic[first : first + args.turn]
            for server in servers if (first // args.turn) % 2 == 0 else servers[::-1]:
                assert server.proc is not None
                result = asyncio.run(loadgen.run_load(server.embed_url, turn, args.concurrency, len(turn), 600.0))
                if result.errors:
                    raise RuntimeError(f"{server.name}: {result.errors} failed requests: {result.first_error}")
                done = first + len(turn)
                samples[server.name].append({"requests": done, "rss_mb": round(rss_mb(server.proc.pid), 1),
                                             "p50_ms": round(result.percentile_ms(50) or 0, 1)})
                print(f"{server.name:>24}: {done:5d} requests  RSS {samples[server.name][-1]['rss_mb']:7.1f} MB",
                      flush=True)
    finally:
        for server in servers:
            server.stop()
    summary = {}
    for name, rows in samples.items():
        warm = [r for r in rows if r["requests"] >= args.warmup]
        slope = slope_per_1000([r["requests"] for r in warm], [r["rss_mb"] for r in warm])
        summary[name] = {"rss_first_mb": rows[0]["rss_mb"], "rss_warm_mb": warm[0]["rss_mb"] if warm else None,
                         "rss_end_mb": rows[-1]["rss_mb"],
                         "growth_after_warmup_mb": round(rows[-1]["rss_mb"] - warm[0]["rss_mb"], 1) if warm else None,
                         "slope_mb_per_1000_requests": None if slope is None else round(slope, 2)}
    result = {"requests": args.requests, "concurrency": args.concurrency, "model": args.model, "dtype": args.dtype,
              "inputs_per_request": 10, "lengths": [5, 60], "warmup_requests": args.warmup,
              "baseline_env": None if args.no_baseline else BASELINE_ENV,
              "elapsed_s": round(time.monotonic() - started),
              "machine": {**info, "loadavg_end": list(os.getloadavg())}, "summary": summary, "samples": samples}
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"{args.date}-leak.json"
    path.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(summary, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
