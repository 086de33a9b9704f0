"""NomicBert MoE at nomic-embed-text-v2-moe's full size, seeded random weights (speed does not depend on the values).

    PYTHONPATH=. .venv/bin/python -m bench --only moe

The config is the nomic-moe fixture's (every key of v2-moe's config.json, legacy names) at v2-moe's published sizes:
768 hidden, 12 heads, 12 layers, 3072 inner, 8 experts, top-2, MoE every 2nd layer (1, 3, ... 11), vocabulary
250048; the weights are written in the Hub's layout (stacked `mlp.experts.mlp.w1/w2`, `mlp.router.layer`), so they
load through the real key map. Rows, all from one process, timed in turns so load elsewhere on the box hits every
side alike:
- tokens/s on mixed 16-512 token batches (`Encoder.embed`, ids in), and the utilisation of the matmul work actually
  done (active FLOPs: the router and the 2 experts each token runs, `model.flops_per_token`) over this machine's
  measured dense matmul peak;
- one MoE FFN (router, grouping, 8 experts, weighted sum) against a dense FFN doing the same active FLOPs (768 ->
  2 x 3072 -> 768, GELU, on the same CPU fast path), on the hidden states a real forward feeds layer 1;
- the whole layer (attention + FFN) the same way.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bench import checkpoint, inputs
from bench.scenarios import Context, best, make_row, ours_runner
from model.encoder import cpu_has_native_bf16

log = logging.getLogger("bench")
FIXTURE = checkpoint.DATA / "golden" / "nomic-moe" / "nomic-moe-tiny"
# v2-moe's published sizes; every other key is the fixture's (which has all of v2-moe's keys)
V2_MOE_SIZES = {"n_embd": 768, "n_head": 12, "n_layer": 12, "n_inner": 3072, "num_experts": 8, "moe_top_k": 2,
                "moe_every_n_layers": 2, "vocab_size": 250048}
MIXED = {"full": [(16, 1), (32, 4)], "quick": [(8, 1)], "smoke": [(4, 1)]}  # (batch size, seed) per profile


def v2_moe_config(sizes: dict | None = None) -> dict:
    return json.loads((FIXTURE / "config.json").read_text()) | (V2_MOE_SIZES if sizes is None else sizes)


def hub_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of v2-moe's checkpoint layout: N(0, 0.02) matrices and biases, LayerNorms weight 1, bias 0."""
    g = torch.Generator().manual_seed(seed)
    E, F, X = cfg["n_embd"], cfg["n_inner"], cfg["num_experts"]
    m = cfg["pad_vocab_size_multiple"]

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    state = {"embeddings.word_embeddings.weight": normal((cfg["vocab_size"] + m - 1) // m * m, E),
             "embeddings.token_type_embeddings.weight": normal(cfg["type_vocab_size"], E),
             "emb_ln.weight": torch.ones(E), "emb_ln.bias": torch.zeros(E)}
    for i in range(cfg["n_layer"]):
        p = f"encoder.layers.{i}."
        state |= {p + "attn.Wqkv.weight": normal(3 * E, E), p + "attn.Wqkv.bias": normal(3 * E),
                  p + "attn.out_proj.weight": normal(E, E), p + "attn.out_proj.bias": normal(E)}
        if i % cfg["moe_every_n_layers"] == 1:
            state |= {p + "mlp.router.layer.weight": normal(X, E), p + "mlp.experts.mlp.w1": normal(X * F, E),
                      p + "mlp.experts.mlp.w2": normal(X * F, E), p + "mlp.experts.bias": normal(E)}
        else:
            state |= {p + "mlp.fc1.weight": normal(F, E), p + "mlp.fc1.bias": normal(F),
                      p + "mlp.fc2.weight": normal(E, F), p + "mlp.fc2.bias": normal(E)}
        for norm in ("norm1", "norm2"):
            state |= {p + f"{norm}.weight": torch.ones(E), p + f"{norm}.bias": torch.zeros(E)}
    return state


def build(out: Path | None = None, seed: int = 0, sizes: dict | None = None) -> Path:
    """Write (once) the random v2-moe-sized folder: config.json, model.safetensors, the fixture's tokenizer files."""
    cfg = v2_moe_config(sizes)
    out = out or checkpoint.CACHE / f"nomic-embed-text-v2-moe-random-seed{seed}"
    stamp = json.dumps({"config": cfg, "seed": seed}, sort_keys=True)
    if (out / ".built").exists() and (out / ".built").read_text() == stamp:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    save_file(hub_state(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "sentence_bert_config.json",
                 "config_sentence_transformers.json", "modules.json"):
        shutil.copyfile(FIXTURE / name, out / name)
    shutil.copytree(FIXTURE / "1_Pooling", out / "1_Pooling")
    (out / ".built").write_text(stamp)
    return out


def in_turns(fns: dict[str, Callable[[], object]], reps: int, max_s: float) -> dict[str, float]:
    """Best wall time of each function, calling them in turns (a warm-up each first)."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    start = time.monotonic()
    for turn in range(reps):
        if turn >= 2 and time.monotonic() - start > max_s:
            break
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: best(t) for name, t in times.items()}


def dense_twin(encoder, moe_layer: int) -> torch.nn.Module:
    """The MoE layer with a dense FFN of its active width in place of the experts (top_k x n_inner, GELU, biases),
    in the encoder's dtype and on its CPU linear kernels. Random weights: only the shapes matter here."""
    from model import cpu_linear
    from model.nomic_bert import MLP, Block

    c = encoder.model.config
    with torch.no_grad():
        twin = Block(c)
        twin.mlp = MLP(c.n_embd, c.moe_top_k * c.n_inner, "gelu", True, True)
        for p in twin.mlp.parameters():
            p.normal_(0, 0.02)
    twin = twin.to(encoder.dtype).eval()
    if encoder.linear_kernel == "onednn":
        cpu_linear.install(twin)
    return twin


class StackedExpert(torch.nn.Module):
    """One expert as nomic's reference computes it: views into the stacked (num_experts, n_inner, n_embd) w1 and w2,
    `gelu(x @ w1[e].T) @ w2[e]` with torch.matmul (MKL on CPU) -- the alternative to one MLP per expert."""

    def __init__(self, w1: torch.Tensor, w2: torch.Tensor):
        super().__init__()
        self.w1, self.w2 = w1, w2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.gelu(x @ self.w1.T) @ self.w2


def expert_variants(moe: torch.nn.Module, config, dtype: torch.dtype) -> dict[str, torch.nn.Module]:
    """The MoE FFN with the same router but other expert kernels (random expert weights: only shapes matter): one
    nn.Linear MLP per expert left on PyTorch's default (MKL) path, and nomic's stacked weights with torch.matmul."""
    from model.nomic_bert import MoE

    E, inner, hidden = config.num_experts, config.n_inner, config.n_embd
    aten, stacked = MoE(config).to(dtype), MoE(config).to(dtype)
    with torch.no_grad():
        for p in aten.parameters():
            p.normal_(0, 0.02)
    w1, w2 = (torch.randn(E, inner, hidden, dtype=dtype) * 0.02 for _ in range(2))
    stacked.experts = torch.nn.ModuleList(StackedExpert(w1[e], w2[e]) for e in range(E))
    for variant in (aten, stacked):
        variant.router, variant.bias = moe.router, moe.bias
    return {"experts on nn.Linear (MKL)": aten.eval(),
            "stacked expert weights, torch.matmul per expert": stacked.eval()}


def bf16_pair(config, router: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """A random MoE FFN and a dense FFN of its active width in bf16 on the CPU fast path (what `--dtype auto` runs on
    CPUs with native bf16): the same comparison in the dtype this box serves in. The MoE takes the fp32 rows' router
    (fp32 in every dtype), so it routes the same inputs the same way."""
    from model import cpu_linear
    from model.nomic_bert import MLP, MoE

    pair = {"moe_ffn_bf16": MoE(config), "dense_ffn_bf16": MLP(config.n_embd, config.moe_top_k * config.n_inner,
                                                               "gelu", True, True)}
    with torch.no_grad():
        for module in pair.values():
            for p in module.parameters():
                p.normal_(0, 0.02)
            module.to(torch.bfloat16).eval()
            cpu_linear.install(module)
    pair["moe_ffn_bf16"].router = router
    return pair


def moe(ctx: Context) -> None:
    p = ctx.profile
    from model.encoder import Encoder
    from model.nomic_bert import MoE

    # smoke (tests/bench): the fixture's own tiny sizes
    folder = build() if p.name != "smoke" else build(checkpoint.CACHE / "nomic-moe-tiny-random-seed0", sizes={})
    with ours_runner(ctx, "ours-matmul-peak") as ours:
        peak = ours.call("matmul_peak", n=4096 if p.name != "smoke" else 256, dtype="float32",
                         max_s=4.0 if p.name == "full" else 1.0)
    enc = Encoder.load(str(folder), device="cpu", dtype="float32")
    c = enc.model.config
    model_name = "nomic-embed-text-v2-moe size (random weights)"
    ctx.rows.append(make_row("moe", "dense fp32 matmul peak", "GFLOP/s", peak["best_flops"] / 1e9, None, None,
                             metric="peak", kernel=peak["kernel"], n=peak["n"], threads=peak["threads"]))
    for count, seed in MIXED[p.name]:
        lengths = inputs.mixed_lengths(count, 16, 512, seed=seed)
        batch = inputs.id_batch(lengths, seed=200 + seed, vocab=(3, 1900))
        t = in_turns({"embed": lambda b=batch: enc.embed(b, max_batch_tokens=1 << 40)}, p.reps, p.max_s)["embed"]
        tokens, flops = sum(lengths), sum(n * enc.model.flops_per_token(n) for n in lengths)
        params = {"model": model_name, "lengths": lengths, "tokens": tokens, "active_flops": flops,
                  "experts": c.num_experts, "top_k": c.moe_top_k, "linear_kernel": enc.linear_kernel}
        label = f"NomicBert MoE mixed 16-512 tok x {count}"
        ctx.rows.append(make_row("moe", f"{label} tokens/s", "tokens/s", tokens / t, None, None,
                                 metric="tokens_per_s", **params))
        ctx.rows.append(make_row("moe", f"{label} MFU (active FLOPs: 2 of 8 experts)", "% of matmul peak",
                                 100 * flops / t / peak["best_flops"], None, None, metric="mfu", **params))
        log.info("moe %s: %.0f tok/s, %.1f%% of peak", label, tokens / t, 100 * flops / t / peak["best_flops"])

    # one layer, MoE vs dense of the same active FLOPs, on what a real forward feeds layer 1 (one CPU forward's worth)
    from model.packing import pack

    layer = enc.model.encoder.layers[c.moe_layers[0]]
    assert isinstance(layer.mlp, MoE)
    lengths = inputs.mixed_lengths(64, 16, 512, seed=7)
    while sum(lengths) > 1024:  # CPU_FORWARD_TOKENS: the most tokens one forward sees
        lengths.pop()
    seen: dict[str, tuple] = {}
    hooks = [layer.register_forward_pre_hook(lambda _m, args: seen.setdefault("layer", args)),
             layer.mlp.register_forward_pre_hook(lambda _m, args: seen.setdefault("ffn", args))]
    twin = dense_twin(enc, c.moe_layers[0])
    with torch.inference_mode():
        enc.model(pack(inputs.id_batch(lengths, seed=8, vocab=(3, 1900))))
        for h in hooks:
            h.remove()
        # the random checkpoint routes most tokens to a few experts; a trained v2-moe is load-balanced (its aux
        # loss), so the FFN rows also run on inputs the router spreads evenly (layer-normed Gaussian vectors)
        natural = seen["ffn"][0]
        g = torch.Generator().manual_seed(9)
        balanced = F.layer_norm(torch.randn(natural.shape, generator=g), natural.shape[-1:])
        variants = expert_variants(layer.mlp, c, enc.dtype)
        bf16 = bf16_pair(c, layer.mlp.router) if cpu_has_native_bf16() else {}
        times: dict[tuple[str, int], float] = {}
        for threads in sorted({1, enc.threads}):  # 1: what each encoder worker runs under load (--encoder-workers)
            torch.set_num_threads(threads)
            fns = {"moe_ffn": lambda: layer.mlp(balanced), "dense_ffn": lambda: twin.mlp(balanced),
                   **{name: lambda m=m: m(balanced.bfloat16()) for name, m in bf16.items()}}
            if threads == enc.threads:
                fns |= {"moe_ffn_natural": lambda: layer.mlp(natural), "moe_layer": lambda: layer(*seen["layer"]),
                        "dense_layer": lambda: twin(*seen["layer"]),
                        **{name: lambda m=m: m(balanced) for name, m in variants.items()}}
            times |= {(name, threads): t for name, t in in_turns(fns, 3 * p.reps, 3 * p.max_s).items()}
        torch.set_num_threads(enc.threads)
        spread = {label: torch.bincount(layer.mlp.router(x)[1].flatten(), minlength=c.num_experts).tolist()
                  for label, x in (("balanced", balanced), ("natural", natural))}
    T, all_threads = len(natural), enc.threads
    common = {"model": model_name, "tokens": T, "lengths": lengths, "linear_kernel": enc.linear_kernel}
    rows = [("ffn", "FFN", "dense FFN", "balanced", "", threads) for threads in sorted({1, all_threads})]
    rows += [("ffn_bf16", "FFN", "dense FFN", "balanced", ", bf16", threads) for threads in sorted({1, all_threads})
             if bf16]
    rows += [("layer", "whole layer (attention + FFN)", "dense layer", "natural", "", all_threads)]
    for part, what, peer, routing, tag, threads in rows:
        key = "_ffn_bf16" if part == "ffn_bf16" else f"_{part}"
        moe_ms, dense_ms = 1e3 * times[("moe" + key, threads)], 1e3 * times[("dense" + key, threads)]
        ctx.rows.append(make_row(
            "moe", f"MoE {what} vs dense of the same active FLOPs{tag}, {T} tokens, {routing} routing, "
            f"{threads} thread{'s' if threads > 1 else ''}", "ms", moe_ms,
            f"{peer} (inner {c.moe_top_k} x {c.n_inner}){tag}", dense_ms, better="lower",
            metric=f"moe_vs_dense_{part}", time_ratio=moe_ms / dense_ms, threads=threads, routing=routing,
            tokens_per_expert=spread[routing], dtype="bfloat16" if tag else "float32", **common))
        log.info("moe %s%s %s, %d threads: %.1f ms vs dense %.1f ms (%.2fx)", what, tag, routing, threads, moe_ms,
                 dense_ms, moe_ms / dense_ms)
    ctx.rows.append(make_row(
        "moe", f"MoE FFN, natural vs balanced routing, {T} tokens, {all_threads} threads", "ms",
        1e3 * times[("moe_ffn_natural", all_threads)], "balanced routing", 1e3 * times[("moe_ffn", all_threads)],
        better="lower", metric="routing", tokens_per_expert=spread, **common))
    for name in variants:  # what the experts run on: ours (oneDNN per expert, on CPUs where it wins) vs the others
        ctx.rows.append(make_row("moe", f"MoE FFN, {name}, {T} tokens, balanced routing", "ms",
                                 1e3 * times[(name, all_threads)], f"MoE FFN as shipped ({enc.linear_kernel} MLP per "
                                 "expert)", 1e3 * times[("moe_ffn", all_threads)], better="lower",
                                 metric="expert_kernel", variant=name, **common))
    ffn_flops = T * (2 * c.n_embd * c.num_experts + c.moe_top_k * 4 * c.n_embd * c.n_inner)
    ctx.rows.append(make_row("moe", f"MoE FFN utilisation ({T} tokens, active FLOPs, {all_threads} threads)",
                             "% of matmul peak", 100 * ffn_flops / times[("moe_ffn", all_threads)] / peak["best_flops"],
                             "dense FFN, same FLOPs",
                             100 * ffn_flops / times[("dense_ffn", all_threads)] / peak["best_flops"], metric="mfu_ffn",
                             **common))
    ctx.info["ours_moe"] = {"linear_kernel": enc.linear_kernel, "threads": enc.threads, "folder": folder.name,
                            "versions": {"torch": torch.__version__}}
