"""The GPU rows (issue 11's table; issue 23's device script runs them): `python -m bench --device cuda`. Every row is
ours against a peer measured in the same run, on a seeded random full-size nomic-embed-text-v1.5 (speed does not
depend on the weights) in bf16 on both sides.

- `gpu_inprocess`: text in, tokenisation counted: ours `Encoder.embed(Encoder.tokenize(texts))` against
  sentence-transformers `encode` (the folder's v5 twin through transformers' native `nomic_bert`, same texts, same
  batch size, longest first on both sides) for short (~12 tokens), medium (~130, mixed 50-210), long (~1,400) and
  max-length (8192-token) texts.
- `gpu_forward`: the forward alone on packed 8192-token batches of mixed lengths (16-512), against transformers'
  `nomic_bert` forward on the same sequences padded (as it runs) and against the GEMM-only ceiling (the model's linear
  layers alone on 8192 tokens, timed here); the dense matmul peak; padded tokens against real ones.
- `gpu_server`: our server with its defaults on the device (bf16) under bounded loopback load: bulk (32 medium texts a
  request, concurrency 16, base64), interactive (1 short text a request, concurrency 64) and single short requests on
  an idle server; bulk tokens/s against sentence-transformers' in-process medium rate.

`--device cpu` runs the same rows on the CPU: the dry run of bench/gpu_check.sh (profile `smoke`, tiny model).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer

from bench import checkpoint, inputs, loadgen, servers
from bench.scenarios import Context, agreeing_peer, best, make_row, ours_runner, paired, peer_runner, text_rows

log = logging.getLogger("bench")


@dataclass(frozen=True)
class GpuProfile:
    name: str
    texts: dict[str, tuple[tuple[int, int], int, int]]  # kind -> ((low, high) tokens per text, texts, batch size)
    warmup: int
    reps: int
    max_s: float  # per timed point and side (at least two turns always run)
    forward_batches: int  # packed batches in the forward rows
    forward_tokens: int  # tokens per packed batch
    forward_lengths: tuple[int, int]  # sequence lengths drawn from this range
    peak_n: int  # the dense matmul's size
    bulk: tuple[int, int, int]  # texts per request, concurrency, requests
    interactive: tuple[int, int]  # concurrency, requests
    idle_requests: int
    load_max_s: float


PROFILES = {
    "full": GpuProfile("full", {"short": ((12, 12), 4096, 512), "medium": ((50, 210), 2048, 128),
                                "long": ((1400, 1400), 256, 32), "max": ((8192, 8192), 32, 4)},
                       warmup=1, reps=5, max_s=3.0, forward_batches=8, forward_tokens=8192, forward_lengths=(16, 512),
                       peak_n=8192, bulk=(32, 16, 400), interactive=(64, 3000), idle_requests=100, load_max_s=12.0),
    "quick": GpuProfile("quick", {"short": ((12, 12), 1024, 512), "medium": ((50, 210), 512, 128),
                                  "long": ((1400, 1400), 64, 32), "max": ((8192, 8192), 8, 4)},
                        warmup=1, reps=2, max_s=1.0, forward_batches=2, forward_tokens=8192, forward_lengths=(16, 512),
                        peak_n=4096, bulk=(32, 16, 100), interactive=(64, 600), idle_requests=30, load_max_s=5.0),
    # the CPU dry run and tests/bench: a tiny model, a handful of calls
    "smoke": GpuProfile("smoke", {"short": ((12, 12), 16, 8), "medium": ((50, 210), 8, 4),
                                  "long": ((300, 300), 4, 2), "max": ((1024, 1024), 2, 1)},
                        warmup=0, reps=1, max_s=0.5, forward_batches=1, forward_tokens=1024, forward_lengths=(16, 128),
                        peak_n=256, bulk=(4, 4, 12), interactive=(4, 12), idle_requests=3, load_max_s=3.0),
}


def dtype(ctx: Context) -> str:
    return "bfloat16" if ctx.device == "cuda" else "float32"


def _goal(dt: str) -> float:
    """Agreement with a peer: bf16 on both sides, each rounding its own way, agrees to 1e-3 in cosine."""
    return 0.999 if dt == "bfloat16" else 0.9999


def _profile(ctx: Context) -> GpuProfile:
    return PROFILES[ctx.profile.name]


def _model(ctx: Context):
    folder = ctx.nomic or checkpoint.build()
    return folder, folder.with_name(folder.name + "-hf5")


_TEXTS: dict[tuple[Path, str, str], list[str]] = {}  # the in-process and the server rows use the same texts


def _texts(ctx: Context, kind: str) -> list[str]:
    folder, key = _model(ctx)[0], (_model(ctx)[0], ctx.profile.name, kind)
    if key not in _TEXTS:
        (low, high), count, _ = _profile(ctx).texts[kind]
        lengths = inputs.mixed_lengths(count, low, high, seed=50) if high > low else [low] * count
        _TEXTS[key] = inputs.texts_near(folder / "tokenizer.json", lengths, seed=60 + low)
    return _TEXTS[key]


def _label(ctx: Context, kind: str) -> str:
    (low, high), count, bs = _profile(ctx).texts[kind]
    size = f"~{low}" if low == high else f"{low}-{high}"
    return f"{kind} ({size} tok) x {count}, batch {bs}"


def gpu_inprocess(ctx: Context) -> None:
    p, dt = _profile(ctx), dtype(ctx)
    folder, hf5 = _model(ctx)
    limit = max(high for (_, high), _, _ in p.texts.values())
    with ours_runner(ctx, "ours-gpu") as ours:
        ctx.info["ours_gpu"] = ours.call("load", model=str(folder), dtype=dt, device=ctx.device)
        texts = {kind: _texts(ctx, kind) for kind in p.texts}
        st = peer_runner(ctx, "st", "st.py")
        try:
            sample = texts["medium"][:4] + texts["short"][:4] + texts["long"][:1]
            st, _ = agreeing_peer(ctx, ours, st, "sentence-transformers",
                                  {"model": str(hf5), "dtype": dt, "device": ctx.device, "max_seq_length": limit},
                                  "embed_texts", {"texts": sample},
                                  f"NomicBert {folder.name}, {dt}: ours vs sentence-transformers, 9 texts", _goal(dt))
            for kind, ((low_tok, high_tok), _, bs) in p.texts.items():
                job = {"texts": texts[kind], "batch_size": bs}
                mine, theirs = paired(ctx, ours, st, "time_texts", job, p.warmup, p.reps, p.max_s)
                text_rows(ctx, "gpu_inprocess", f"GPU in-process {_label(ctx, kind)}", mine, theirs,
                          model="nomic-embed-text-v1.5 (random weights)", kind=kind, dtype=dt,
                          target_tokens=[low_tok, high_tok], batch_size=bs)
        finally:
            if st is not None:
                st.close()


def forward_batches(p: GpuProfile) -> list[list[list[int]]]:
    """Packed batches of exactly `forward_tokens` tokens each, sequences of mixed lengths."""
    out = []
    for i in range(p.forward_batches):
        lengths = inputs.mixed_lengths(p.forward_tokens, *p.forward_lengths, seed=70 + i)
        taken, total = [], 0
        for n in lengths:
            n = min(n, p.forward_tokens - total)
            if n < 2:
                break
            taken.append(n)
            total += n
        taken[-1] += p.forward_tokens - total  # exactly forward_tokens in every batch
        out.append(inputs.id_batch(taken, seed=80 + i))
    return out


def gpu_forward(ctx: Context) -> None:
    p, dt = _profile(ctx), dtype(ctx)
    folder, hf5 = _model(ctx)
    batches = forward_batches(p)
    with ours_runner(ctx, "ours-forward") as ours:
        # on CPU keep nn.Linear: the GEMM-only ceiling times the model's own linear layers
        ctx.info["ours_forward"] = ours.call("load", model=str(folder), dtype=dt, device=ctx.device, linears="aten")
        peak = ours.call("matmul_peak", n=p.peak_n, dtype=dt, device=ctx.device, max_s=2.0)
        ctx.info["matmul_peak"] = peak
        ctx.rows.append(make_row("gpu_forward", f"dense {dt} matmul peak ({p.peak_n}^3, torch.mm)", "TFLOP/s",
                                 peak["best_flops"] / 1e12, None, None, metric="peak", n=p.peak_n))
        hf = peer_runner(ctx, "transformers", "hf_nomic.py")
        try:
            hf, _ = agreeing_peer(ctx, ours, hf, "transformers", {"model": str(hf5), "dtype": dt, "device": ctx.device},
                                  "embed_ids", {"batch": inputs.id_batch([16, 100, 300, 37, 512], seed=5)},
                                  f"NomicBert {folder.name}, {dt}: ours vs transformers nomic_bert, mixed batch of 5 "
                                  "(16-512 tok)", _goal(dt))
            job = {"batches": batches}
            mine, theirs = paired(ctx, ours, hf, "time_forward", job, max(p.warmup, 1), p.reps, p.max_s)
            ceiling = ours.call("gemm_ceiling", tokens=p.forward_tokens, warmup=max(p.warmup, 1), reps=p.reps * 2,
                                max_s=p.max_s)
        finally:
            if hf is not None:
                hf.close()
        flops = ours.call("flops", lengths=[len(s) for b in batches for s in b])["flops"]
    tokens = mine["tokens"]
    t_ours, t_peer = best(mine["times"]), best(theirs["times"]) if theirs else None
    ceiling_rate = ceiling["tokens"] / best(ceiling["times"])
    label = f"{len(batches)} packed batches of {p.forward_tokens} tok ({p.forward_lengths[0]}-{p.forward_lengths[1]})"
    params = {"model": "nomic-embed-text-v1.5 (random weights)", "dtype": dt, "batches": len(batches),
              "tokens": tokens, "sequences": mine["n"], "ours_times_s": mine["times"],
              "peer_times_s": theirs["times"] if theirs else None}
    ctx.rows.append(make_row("gpu_forward", f"forward only, {label} tokens/s", "tokens/s", tokens / t_ours,
                             "transformers nomic_bert (padded)", tokens / t_peer if t_peer else None,
                             metric="forward_tokens_per_s", **params))
    ctx.rows.append(make_row("gpu_forward", f"GEMM-only ceiling: the {ceiling['linears']} linear layers alone on "
                             f"{p.forward_tokens} tok, tokens/s", "tokens/s", ceiling_rate, None, None,
                             metric="gemm_ceiling", times_s=ceiling["times"]))
    ctx.rows.append(make_row("gpu_forward", "forward only: share of the GEMM-only ceiling", "%",
                             100 * tokens / t_ours / ceiling_rate, None, None, metric="ceiling_share"))
    ctx.rows.append(make_row("gpu_forward", "forward only: matmul FLOPs / dense matmul peak (MFU)", "%",
                             100 * flops / t_ours / peak["best_flops"], "transformers nomic_bert (padded)",
                             100 * flops / t_peer / peak["best_flops"] if t_peer else None, metric="mfu"))
    padded = 0.0 if mine["packed_attention"] else 100 * (mine["padded_tokens"] - tokens) / tokens
    ctx.rows.append(make_row("gpu_forward", "padded tokens in attention and matmuls, % of real", "%", padded,
                             "transformers nomic_bert (padded)",
                             100 * (theirs["padded_tokens"] - tokens) / tokens if theirs else None, better="lower",
                             metric="padding"))
    log.info("gpu forward: ours %.0f tok/s, ceiling %.0f, transformers %s", tokens / t_ours, ceiling_rate,
             f"{tokens / t_peer:.0f}" if t_peer else "-")


def gpu_server(ctx: Context) -> None:
    p = _profile(ctx)
    folder, _ = _model(ctx)
    per_request, bulk_c, bulk_n = p.bulk
    inter_c, inter_n = p.interactive
    medium, short = _texts(ctx, "medium"), _texts(ctx, "short")
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    tokens_per_text = {name: sum(len(e.ids) for e in tok.encode_batch(t)) / len(t)
                       for name, t in (("medium", medium), ("short", short))}
    # its defaults on the device (bf16 on a GPU); the dry run on CPU pins fp32, as the rest of the bench
    srv = servers.ours(str(folder), ctx.work, "auto" if ctx.device == "cuda" else dtype(ctx), device=ctx.device)
    with srv:
        model_id = srv.model_id or "model"
        bulk = [{"model": model_id, "input": medium[i : i + per_request], "encoding_format": "base64"}
                for i in range(0, len(medium) - per_request + 1, per_request)] or [
                   {"model": model_id, "input": medium[:per_request], "encoding_format": "base64"}]
        one = [{"model": model_id, "input": [t], "encoding_format": "base64"} for t in short]
        runs = {
            "bulk": loadgen.run_load_spread(srv.embed_url, bulk, bulk_c, bulk_n, p.load_max_s,
                                            warmup_requests=min(bulk_c, 16)),
            "interactive": loadgen.run_load_spread(srv.embed_url, one, inter_c, inter_n, p.load_max_s,
                                                   warmup_requests=min(inter_c, 32)),
            "idle": loadgen.run_load_spread(srv.embed_url, one, 1, p.idle_requests, p.load_max_s * 2,
                                            warmup_requests=3, pause_s=0.05),
        }
    for name, result in runs.items():
        if result.errors:
            ctx.note(f"ours server on {ctx.device}: {result.errors} failed requests ({name}); "
                     f"first: {result.first_error}")
    st_medium = next((r for r in ctx.rows if r["group"] == "gpu_inprocess" and r["params"].get("kind") == "medium"
                      and r["params"].get("metric") == "tokens_per_s"), None)
    b = runs["bulk"]
    label = f"server bulk ({per_request} x ~{tokens_per_text['medium']:.0f} tok a request, c={bulk_c}, base64)"
    rate = b.embeddings_per_s * tokens_per_text["medium"]
    ctx.rows.append(make_row("gpu_server", f"{label} tokens/s", "tokens/s", rate,
                             "sentence-transformers in-process (medium)" if st_medium else None,
                             st_medium["peer_value"] if st_medium else None, metric="bulk_tokens_per_s",
                             run=b.summary()))
    ctx.rows.append(make_row("gpu_server", f"{label} requests/s", "requests/s", b.requests_per_s, None, None,
                             metric="bulk_requests_per_s"))
    i = runs["interactive"]
    label_i = f"server interactive (1 x ~{tokens_per_text['short']:.0f} tok a request, c={inter_c})"
    ctx.rows.append(make_row("gpu_server", f"{label_i} requests/s", "requests/s", i.requests_per_s, None, None,
                             metric="interactive_requests_per_s", run=i.summary()))
    for name, result, metric_prefix in ((label, b, "bulk"), (label_i, i, "interactive")):
        for q in (50, 95, 99):
            ctx.rows.append(make_row("gpu_server", f"{name} p{q} latency", "ms", result.percentile_ms(q), None, None,
                                     better="lower", metric=f"{metric_prefix}_p{q}"))
    ctx.rows.append(make_row("gpu_server", "server idle, single short request p50 latency", "ms",
                             runs["idle"].percentile_ms(50), None, None, better="lower", metric="idle_p50",
                             run=runs["idle"].summary()))
    log.info("gpu server: bulk %.0f tok/s, interactive p99 %.1f ms, idle p50 %.1f ms", rate,
             i.percentile_ms(99) or -1, runs["idle"].percentile_ms(50) or -1)


SCENARIOS = {"gpu_inprocess": gpu_inprocess, "gpu_forward": gpu_forward, "gpu_server": gpu_server}


def targets(rows: list[dict]) -> list[dict]:
    """Issue 11's GPU targets (issue 23 carries them), judged from this run's rows; None where the row is missing."""
    out = []

    def find(group: str, **match) -> dict | None:
        return next((r for r in rows if r["group"] == group
                     and all(r["params"].get(k) == v for k, v in match.items())), None)

    def add(name: str, row: dict | None, key: str, goal: float, text: str, at_most: bool = False) -> None:
        value = None if row is None else row[key]
        met = None if value is None else (value <= goal if at_most else value >= goal)
        out.append({"target": name, "value": value, "goal": goal, "met": met, "at_most": at_most,
                    "text": "–" if value is None else text.format(value)})

    add("in-process medium: tokens/s vs sentence-transformers",
        find(group="gpu_inprocess", kind="medium", metric="tokens_per_s"), "ratio", 2.5, "{:.2f}x")
    add("in-process short: embeddings/s vs sentence-transformers",
        find(group="gpu_inprocess", kind="short", metric="embeddings_per_s"), "ratio", 3.0, "{:.2f}x")
    for kind in ("long", "max"):
        add(f"in-process {kind}: tokens/s vs sentence-transformers",
            find(group="gpu_inprocess", kind=kind, metric="tokens_per_s"), "ratio", 2.0, "{:.2f}x")
    add("forward: % of the GEMM-only ceiling", find(group="gpu_forward", metric="ceiling_share"), "ours", 60.0,
        "{:.1f}%")
    add("forward: tokens/s vs transformers nomic_bert", find(group="gpu_forward", metric="forward_tokens_per_s"),
        "ratio", 1.5, "{:.2f}x")
    add("padded tokens in our attention and matmuls (% of real)", find(group="gpu_forward", metric="padding"),
        "ours", 0.0, "{:.1f}%", at_most=True)
    add("server bulk tokens/s vs sentence-transformers in-process", find(group="gpu_server",
        metric="bulk_tokens_per_s"), "ratio", 1.5, "{:.2f}x")
    add("server interactive p99 at c=64 (ms)", find(group="gpu_server", metric="interactive_p99"), "ours", 50.0,
        "{:.1f} ms", at_most=True)
    add("server idle single short request p50 (ms)", find(group="gpu_server", metric="idle_p50"), "ours", 5.0,
        "{:.1f} ms", at_most=True)
    return out
