"""Rows per second of `python -m model embed --ray local` with 1 and 2 workers, and the single-process path beside it.

    PYTHONPATH=. .venv/bin/python -m bench.ray_rows [--model packaged:all-MiniLM-L6-v2] [--rows 2000] [--workers 1 2]

Prints one JSON object: the machine (cores, CPU, load average before and after: other work on the box shows there),
then one entry per run. For Ray runs `rows_per_s` is the steady rate from the run's `_manifest.json` (first batch back
to last batch back: Ray start-up and model loading excluded) and `wall_s` the whole command; for the single-process
run only the whole command is timed. Each Ray worker is one actor with one CPU slot and one torch thread, so on a
CPU box workers scale until they run out of cores; on GPUs, one worker per GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORDS = [
    "the", "of", "and", "to", "in", "is", "that", "for", "it", "as", "was", "with", "be", "by", "on", "not",
    "this", "are", "or", "from", "at", "which", "but", "have", "an", "they", "were", "there", "one", "all",
    "their", "been", "has", "when", "who", "will", "more", "no", "if", "out", "so", "what", "up", "its", "about",
    "into", "than", "them", "can", "only", "other", "new", "some", "could", "time", "these", "two", "may", "then",
    "first", "any", "now", "such", "like", "over", "even", "most", "made", "after", "also", "many", "before",
    "must", "through", "back", "years", "where", "much", "way", "well", "down", "should", "because", "each",
    "just", "those", "people", "how", "little", "state", "good", "very", "make", "world", "still", "own", "see",
    "work", "long", "get", "here", "between", "both", "life", "being", "under", "never", "day", "same", "another",
    "know", "while", "last", "might", "great", "old", "year", "off", "come", "since", "against", "go", "came",
    "right", "used", "take", "three"
]


def corpus(path: Path, rows: int) -> None:
    rng = random.Random(0)
    with path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"id": i, "text": " ".join(rng.choices(WORDS, k=rng.choice([8, 24, 64])))}) + "\n")


def run(args: list[str]) -> float:
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "model", "embed", *args], cwd=ROOT, capture_output=True, text=True,
                            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(ROOT)})
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(args)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - started


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="packaged:all-MiniLM-L6-v2")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--batch-tokens", type=int, default=4096, help="4096: 128-row batches, enough for a rate")
    opts = parser.parse_args()

    import ray

    report: dict = {
        "machine": {"cores": len(os.sched_getaffinity(0)), "cpu": cpu_model(), "ray": ray.__version__,
                    "python": platform.python_version(), "load_before": os.getloadavg()[0]},
        "model": opts.model, "rows": opts.rows, "batch_tokens": opts.batch_tokens, "runs": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "in.jsonl"
        corpus(source, opts.rows)
        common = ["--model", opts.model, "--input", str(source), "--device", "cpu", "--dtype", "float32",
                  "--batch-tokens", str(opts.batch_tokens)]
        wall = run([*common, "--output", str(Path(tmp) / "single.jsonl")])
        report["runs"].append({"mode": "single-process", "threads": report["machine"]["cores"],
                               "wall_s": round(wall, 2), "rows_per_s_wall": round(opts.rows / wall, 1)})
        for workers in opts.workers:
            out = Path(tmp) / f"ray-{workers}"
            wall = run([*common, "--output", str(out), "--ray", "local", "--workers", str(workers)])
            manifest = json.loads((out / "_manifest.json").read_text())
            report["runs"].append({"mode": "ray", "workers": workers, "rows_per_s": manifest["rows_per_s"],
                                   "wall_s": round(wall, 2), "rows_per_s_wall": round(opts.rows / wall, 1)})
    rates = {r["workers"]: r["rows_per_s"] for r in report["runs"] if r["mode"] == "ray" and r["rows_per_s"]}
    if 1 in rates and 2 in rates:
        report["ratio_2_vs_1_workers"] = round(rates[2] / rates[1], 2)
    report["machine"]["load_after"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
