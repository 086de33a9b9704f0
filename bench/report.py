"""What a run leaves in bench/results/: `<date>-<device>.json`, `<date>-<device>.md` and PNG plots beside them."""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
from pathlib import Path


def lscpu() -> dict[str, str]:
    try:
        out = subprocess.run(["lscpu"], check=False, capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in out.splitlines() if ":" in line)}


def machine(dtype: str, device: str, versions: dict) -> dict:
    info = lscpu()
    flags = info.get("Flags", "").split()
    try:
        mem_gib = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        mem_gib = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], check=False, capture_output=True, text=True,
                                cwd=Path(__file__).parent, timeout=10).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        commit = None
    return {
        "device": device,
        "gpu": gpu_info() if device == "cuda" else None,
        "cpu_model": info.get("Model name") or platform.processor(),
        "cpu_family_model_stepping": [info.get("CPU family"), info.get("Model"), info.get("Stepping")],
        "cores": len(os.sched_getaffinity(0)),
        "has_amx": "amx_bf16" in flags,
        "avx512": "avx512f" in flags,
        "avx512_bf16": "avx512_bf16" in flags,
        "hypervisor": info.get("Hypervisor vendor"),
        "memory_gib": mem_gib,
        "dtype": dtype,
        "python": platform.python_version(),
        "versions": versions,
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def gpu_info() -> dict:
    """The GPU the run used: name, compute capability, memory, and the CUDA torch was built with."""
    import torch

    props = torch.cuda.get_device_properties(0)
    return {"name": props.name, "capability": f"{props.major}.{props.minor}",
            "memory_gib": round(props.total_memory / 2**30, 1), "multiprocessors": props.multi_processor_count,
            "cuda": torch.version.cuda, "torch": torch.__version__}


def results_name(m: dict) -> str:
    """`cpu`, or the GPU's short name for a GPU run: 'NVIDIA H200' -> 'h200', 'NVIDIA H100 80GB HBM3' -> 'h100'."""
    if not m.get("gpu"):
        return m["device"]
    words = [w for w in re.split(r"[^A-Za-z0-9]+", m["gpu"]["name"]) if w and w.upper() != "NVIDIA"]
    return (words[0] if words else "cuda").lower()


def machine_line(m: dict) -> str:
    v = m["versions"]
    parts = [f"{m['cpu_model']}, {m['cores']} cores", f"AMX {'yes' if m['has_amx'] else 'no'}", m["dtype"],
             f"torch {v.get('torch')}"]
    if m.get("gpu"):
        g = m["gpu"]
        parts.insert(0, f"{g['name']} (compute capability {g['capability']}, {g['memory_gib']} GiB, CUDA {g['cuda']})")
    for name in ("transformers", "sentence-transformers", "infinity-emb"):
        if v.get(name):
            parts.append(f"{name} {v[name]}")
    if m.get("loadavg_start") is not None:
        parts.append(f"load avg {m['loadavg_start'][0]:.1f} -> {m.get('loadavg_end', [float('nan')])[0]:.1f}")
    return "; ".join(parts)


def fmt(x: float | None) -> str:
    if x is None:
        return "–"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def _find(rows: list[dict], **match) -> dict | None:
    for r in rows:
        if all(r["params"].get(k) == v for k, v in match.items() if k != "group") and r["group"] == match["group"]:
            return r
    return None


GPU_GROUPS = {"gpu_inprocess", "gpu_forward", "gpu_server"}


def targets(rows: list[dict]) -> list[dict]:
    """The targets this run's rows can judge: issue 12's when CPU rows ran, issue 11's (GPU) when GPU rows ran."""
    from bench import gpu

    groups = {r["group"] for r in rows}
    out = cpu_targets(rows) if groups - GPU_GROUPS or not groups else []
    if groups & GPU_GROUPS:
        out += [{**t, "issue": "11/23 (GPU)"} for t in gpu.targets(rows)]
    return out


def cpu_targets(rows: list[dict]) -> list[dict]:
    """Issue 12's targets, judged from this run's rows (None where the run lacks the row or the peer)."""
    out = []

    def add(name: str, value: float | None, goal: float, fmt_: str, *, at_most: bool = False) -> None:
        met = None if value is None else (value <= goal if at_most else value >= goal)
        out.append({"target": name, "value": value, "goal": goal, "met": met, "at_most": at_most,
                    "text": "–" if value is None else fmt_.format(value)})

    for dtype, tag in (("float32", ""), ("bfloat16", " (bf16 both)")):
        for kind in ("short", "medium"):
            rate = _find(rows, group="server", kind=kind, concurrency=16, metric="embeddings_per_s", dtype=dtype)
            p50 = _find(rows, group="server", kind=kind, concurrency=16, metric="p50", dtype=dtype)
            if dtype == "float32" or rate:
                add(f"server {kind} c=16{tag}: embeddings/s vs Infinity", rate and rate["ratio"], 1.5, "{:.2f}x")
                add(f"server {kind} c=16{tag}: p50 latency no worse than Infinity's", p50 and p50["ratio"], 1.0,
                    "{:.2f}x")
    inproc = _find(rows, group="inprocess", kind="medium", batch_size=32, metric="tokens_per_s")
    add("in-process ~180 tok batch 32: tokens/s vs sentence-transformers", inproc and inproc["ratio"], 1.2, "{:.2f}x")
    for r in rows:
        if r["group"] == "rerank" and r["params"].get("batch_size") == 32:
            add(f"rerank batch 32, {r['params']['threads']} thread(s): pairs/s vs sentence-transformers CrossEncoder",
                r["ratio"], 1.2, "{:.2f}x")
    mfu = _find(rows, group="nomic", kind="512x16", metric="mfu")
    add("NomicBert 512 x 16: % of measured matmul peak", mfu and mfu["ours"], 70.0, "{:.1f}%")
    for r in rows:
        if r["group"] == "nomic" and r["params"].get("kind") == "mixed" and r["params"].get("metric") == "tokens_per_s":
            add(f"{r['scenario'].removesuffix(' tokens/s')}: tokens/s vs transformers", r["ratio"], 1.3, "{:.2f}x")
    for r in rows:
        if r["group"] == "moe" and r["params"].get("metric") in ("moe_vs_dense_ffn", "moe_vs_dense_ffn_bf16"):
            add(f"{r['scenario']}: MoE / dense time (issue 19)", r["params"]["time_ratio"], 1.5, "{:.2f}x",
                at_most=True)
    for r in rows:  # issue 19
        if r["group"] == "modernbert" and r["params"].get("metric") == "tokens_per_s":
            add(f"{r['scenario'].removesuffix(' tokens/s')}: tokens/s vs transformers", r["ratio"], 1.3, "{:.2f}x")
    xlmr = _find(rows, group="xlmr", batch_size=32, metric="tokens_per_s")
    add("XLM-R ~180 tok batch 32: tokens/s vs sentence-transformers", xlmr and xlmr["ratio"], 1.2, "{:.2f}x")
    for dtype, tag in (("float32", ""), ("bfloat16", " (bf16)")):
        idle = _find(rows, group="server", metric="idle_p50", dtype=dtype)
        if dtype == "float32" or idle:
            add(f"single short request, idle server{tag}: p50 ms", idle and idle["ours"], 10.0, "{:.1f} ms",
                at_most=True)
    # issue 22: small batches against ONNX Runtime, the idle request, the tail at c=16 (~180 tok)
    for dtype, goal in (("fp32", 1.0), ("bf16", 1 / 0.7)):  # the ort rows' own dtype names
        short = _find(rows, group="ort", metric="forward_ms", batch_size=1, dtype=dtype, cpu_aot=False)  # default path
        if dtype == "fp32" or short:
            add(f"MiniLM 1 x 16 tok forward, ours {dtype} vs ORT fp32: ORT time / ours (issue 22)",
                short and short["ratio"], goal, "{:.2f}x")
    idle_ort = _find(rows, group="ort", metric="idle_vs_ort")
    over = idle_ort and idle_ort["ours"] and idle_ort["params"].get("ort_forward_ms") and (
        idle_ort["ours"] - idle_ort["params"]["ort_forward_ms"])
    add("idle server p50 minus ORT's 1 x 16 forward, fp32: ms (issue 22)", over or None, 3.0, "{:.1f} ms",
        at_most=True)
    for q in ("p95", "p99"):
        tail = _find(rows, group="server", kind="medium", concurrency=16, metric=q, dtype="float32")
        add(f"server medium c=16: {q} latency no worse than Infinity's (issue 22)", tail and tail["ratio"], 1.0,
            "{:.2f}x")
    return out


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [
        f"# Bench {result['date']} on {m['device']}",
        "",
        f"Machine: {machine_line(m)}",
        "",
        f"Command: `{result['command']}` (profile `{result['profile']}`, {result['elapsed_s']:.0f} s)",
        "",
        "`ratio` = how many times better ours is (ours/peer for rates, peer/ours for latencies).",
        "",
        "| scenario | unit | ours | peer | peer value | ratio |",
        "| --- | --- | ---: | --- | ---: | ---: |",
    ]
    for r in result["rows"]:
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "–"
        lines.append(f"| {r['scenario']} | {r['unit']} | {fmt(r['ours'])} | {r['peer'] or '–'} | "
                     f"{fmt(r['peer_value'])} | {ratio} |")
    goals = targets(result["rows"])
    for title, group in (("Targets (issue 12)", [t for t in goals if "issue" not in t]),
                         ("GPU targets (issues 11 and 23)", [t for t in goals if "issue" in t])):
        if not group:
            continue
        lines += ["", f"## {title}", "", "| target | goal | this run | met |", "| --- | ---: | ---: | --- |"]
        for t in group:
            goal = f"<= {t['goal']:g}" if t["at_most"] else f">= {t['goal']:g}"
            met = {True: "yes", False: "**no**", None: "–"}[t["met"]]
            lines.append(f"| {t['target']} | {goal} | {t['text']} | {met} |")
    if result["checks"]:
        lines += ["", "## Agreement checks", ""]
        for c in result["checks"]:
            figure = (f"min cosine {c['min_cosine']:.6f}" if "min_cosine" in c
                      else f"max |difference| {c['max_abs_diff']:.2e}")
            lines.append(f"- {c['check']}: {figure} ({'pass' if c['pass'] else 'FAIL'})")
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    if result.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({Path(p).name})" for p in result["plots"]]
    return "\n".join(lines) + "\n"


def _series(rows: list[dict], group: str, metric: str, key: str, **match) -> dict[str, list[tuple[float, float]]]:
    """{"ours": [(x, y)], peer: [(x, y)]} for one group's rows of one metric matching `match` on their params."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in rows:
        p = r["params"]
        if r["group"] != group or p.get("metric") != metric or any(p.get(k) != v for k, v in match.items()):
            continue
        out.setdefault("ours", []).append((p[key], r["ours"]))
        if r["peer_value"] is not None:
            out.setdefault(r["peer"], []).append((p[key], r["peer_value"]))
    return {k: sorted(v) for k, v in out.items()}


def draw(result: dict, stem: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, written = result["rows"], []
    m = result["machine"]
    title_machine = f"{m['gpu']['name'] if m.get('gpu') else m['cpu_model']}, {m['cores']} cores, {m['dtype']}"

    def save(fig, suffix: str) -> None:
        path = stem.with_name(f"{stem.name}-{suffix}.png")
        fig.suptitle(f"{fig._suptitle.get_text() if fig._suptitle else ''}\n{title_machine}", fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path))

    # throughput vs batch size (in-process MiniLM)
    kinds = sorted({r["params"]["kind"] for r in rows if r["group"] == "inprocess"})
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for name, pts in _series(rows, "inprocess", "tokens_per_s", "batch_size", kind=kind).items():
                ax.plot(*zip(*pts), marker="o", label=name)
            ax.set_xscale("log", base=2)
            ax.set(title=f"MiniLM in-process, {kind} inputs", xlabel="batch size", ylabel="tokens/s")
            ax.grid(alpha=0.3)
            ax.legend()
        fig.suptitle("Throughput vs batch size")
        save(fig, "throughput-vs-batch")

    # throughput vs sequence length (NomicBert, uniform-length batches)
    nomic_rows = [r for r in rows if r["group"] == "nomic" and r["params"].get("metric") == "tokens_per_s"
                  and r["params"].get("kind") != "mixed"]
    if nomic_rows:
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, pts in _series(nomic_rows, "nomic", "tokens_per_s", "max_len").items():
            ax.plot(*zip(*pts), marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set(xlabel="sequence length (tokens)", ylabel="tokens/s", title="NomicBert (full size), one batch per point")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.suptitle("Throughput vs sequence length")
        save(fig, "throughput-vs-seqlen")

    # latency percentiles vs concurrency (server)
    kinds = sorted({r["params"]["kind"] for r in rows if r["group"] == "server" and "kind" in r["params"]})
    if kinds:
        fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False)
        for ax, kind in zip(axes[0], kinds):
            for q, style in (("p50", "-"), ("p95", "--"), ("p99", ":")):
                series = _series(rows, "server", q, "concurrency", kind=kind, dtype="float32")
                for (name, pts), color in zip(series.items(), ("C0", "C1")):
                    ax.plot(*zip(*pts), style, marker="o", color=color, label=f"{name} {q}")
            ax.set_xscale("log", base=2)
            ax.set_yscale("log")
            ax.set(title=f"server, {kind} inputs", xlabel="concurrency", ylabel="latency (ms)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        fig.suptitle("Latency percentiles vs concurrency")
        save(fig, "latency-vs-concurrency")

    # GPU in-process: tokens/s per input length, ours and sentence-transformers side by side
    gpu_rows = [r for r in rows if r["group"] == "gpu_inprocess" and r["params"].get("metric") == "tokens_per_s"]
    if gpu_rows:
        fig, ax = plt.subplots(figsize=(7, 4))
        x = range(len(gpu_rows))
        ax.bar([i - 0.2 for i in x], [r["ours"] for r in gpu_rows], 0.4, label="ours")
        ax.bar([i + 0.2 for i in x], [r["peer_value"] or 0 for r in gpu_rows], 0.4, label="sentence-transformers")
        ax.set_xticks(list(x), [r["params"]["kind"] for r in gpu_rows])
        ax.set(ylabel="tokens/s", title="text in, tokenisation counted")
        ax.grid(alpha=0.3, axis="y")
        ax.legend()
        fig.suptitle("GPU in-process throughput by input length")
        save(fig, "gpu-inprocess")
    return written


def write(result: dict, out_dir: Path, plots: bool = True) -> dict[str, Path]:
    """`<date>-<cpu|gpu name>.json` and `.md`, and the plots beside them unless `plots` is False."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"{result['date']}-{results_name(result['machine'])}"
    result.setdefault("plots", [])
    if plots:
        try:
            result["plots"] = [Path(p).name for p in draw(result, stem)]
        except ImportError as exc:
            result["notes"].append(f"no plots: {exc} (pip install matplotlib)")
    paths = {"json": stem.with_suffix(".json"), "md": stem.with_suffix(".md")}
    paths["json"].write_text(json.dumps(result, indent=1, default=str) + "\n")
    paths["md"].write_text(markdown(result))
    return paths
