"""Issue 19's bench rows: the newer families at their published sizes, seeded random weights, against their peers.

- `modernbert`: ModernBERT at modernbert-embed-base size (22 layers, 768 wide, local window 128) against transformers'
  `ModernBertModel` on the same mixed-length token-id batches (padded, with an attention mask: how it runs on CPU).
- `xlmr`: XLM-RoBERTa at multilingual-e5-base size (12 layers, 768 wide, 250,002-row vocabulary) against
  sentence-transformers, text in, batch 32 of ~180 tokens, fp32 both.
Both check that the two sides agree (min cosine >= 0.9999 on a mixed sample) before any timing. The checkpoints are
built once into bench/.cache/ (speed does not depend on the values).
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from bench import inputs
from bench.checkpoint import CACHE, DATA
from bench.runner import Runner
from bench.scenarios import Context, _try, best, cosines, make_row, ours_runner, paired, peer_runner

log = logging.getLogger("bench")

MODERNBERT_EMBED_BASE = {  # nomic-ai/modernbert-embed-base's config.json (the Hub's legacy form)
    "architectures": ["ModernBertModel"], "model_type": "modernbert", "vocab_size": 50368, "hidden_size": 768,
    "intermediate_size": 1152, "num_hidden_layers": 22, "num_attention_heads": 12, "hidden_activation": "gelu",
    "max_position_embeddings": 8192, "norm_eps": 1e-05, "norm_bias": False, "attention_bias": False,
    "mlp_bias": False, "global_attn_every_n_layers": 3, "local_attention": 128, "global_rope_theta": 160000.0,
    "local_rope_theta": 10000.0, "pad_token_id": 50283, "bos_token_id": 50281, "eos_token_id": 50282,
    "cls_token_id": 50281, "sep_token_id": 50282, "classifier_pooling": "mean", "torch_dtype": "float32",
}
MULTILINGUAL_E5_BASE = {  # intfloat/multilingual-e5-base's config.json
    "architectures": ["XLMRobertaModel"], "model_type": "xlm-roberta", "vocab_size": 250002, "hidden_size": 768,
    "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072, "hidden_act": "gelu",
    "max_position_embeddings": 514, "type_vocab_size": 1, "layer_norm_eps": 1e-05, "pad_token_id": 1,
    "bos_token_id": 0, "eos_token_id": 2, "position_embedding_type": "absolute", "torch_dtype": "float32",
}
MODERNBERT_CASES = (  # (label, lengths): the NomicBert rows' mixed batches, plus one past the window everywhere
    ("mixed 16-512 tok x 16", inputs.mixed_lengths(16, 16, 512, seed=1)),
    ("mixed 8-180 tok x 32", inputs.mixed_lengths(32, 8, 180, seed=2)),
    ("mixed 256-1024 tok x 8", inputs.mixed_lengths(8, 256, 1024, seed=4)),
)


def _normal(g: torch.Generator, *shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=g) * 0.02


def modernbert_state(cfg: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
    """modernbert-embed-base's shapes and key names, N(0, 0.02) matrices, LayerNorm weights 1 (no biases)."""
    E, inner = cfg["hidden_size"], cfg["intermediate_size"]
    state = {"embeddings.tok_embeddings.weight": _normal(g, cfg["vocab_size"], E),
             "embeddings.norm.weight": torch.ones(E), "final_norm.weight": torch.ones(E)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"layers.{i}."
        if i > 0:
            state[p + "attn_norm.weight"] = torch.ones(E)
        state |= {p + "attn.Wqkv.weight": _normal(g, 3 * E, E), p + "attn.Wo.weight": _normal(g, E, E),
                  p + "mlp_norm.weight": torch.ones(E), p + "mlp.Wi.weight": _normal(g, 2 * inner, E),
                  p + "mlp.Wo.weight": _normal(g, E, inner)}
    return state


def xlmr_state(cfg: dict, g: torch.Generator) -> dict[str, torch.Tensor]:
    """multilingual-e5-base's shapes and key names, N(0, 0.02) matrices, zero biases, LayerNorms 1 and 0."""
    E, inner = cfg["hidden_size"], cfg["intermediate_size"]
    state = {"embeddings.word_embeddings.weight": _normal(g, cfg["vocab_size"], E),
             "embeddings.position_embeddings.weight": _normal(g, cfg["max_position_embeddings"], E),
             "embeddings.token_type_embeddings.weight": _normal(g, 1, E),
             "embeddings.LayerNorm.weight": torch.ones(E), "embeddings.LayerNorm.bias": torch.zeros(E)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."
        for name, shape in (("attention.self.query", (E, E)), ("attention.self.key", (E, E)),
                            ("attention.self.value", (E, E)), ("attention.output.dense", (E, E)),
                            ("intermediate.dense", (inner, E)), ("output.dense", (E, inner))):
            state[p + name + ".weight"] = _normal(g, *shape)
            state[p + name + ".bias"] = torch.zeros(shape[0])
        for norm in ("attention.output.LayerNorm", "output.LayerNorm"):
            state[p + norm + ".weight"], state[p + norm + ".bias"] = torch.ones(E), torch.zeros(E)
    return state


def checkpoint(name: str, cfg: dict, make_state, files_from: Path, seed: int = 0) -> Path:
    """bench/.cache/<name>-random-seed<seed>/, built once: config.json, seeded model.safetensors, and the tokenizer
    and sentence-transformers files of a tiny golden (its ids are a subset of the vocabulary: lookups cost the same)."""
    folder = CACHE / f"{name}-random-seed{seed}"
    if (folder / "model.safetensors").exists():
        return folder
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    top = {"model.safetensors", "golden.json", "config.json"}  # only the top level's: 1_Pooling/config.json stays
    shutil.copytree(files_from, tmp, ignore=lambda where, names: top & set(names) if where == str(files_from) else ())
    (tmp / "config.json").write_text(json.dumps(cfg, indent=2))
    pooling = tmp / "1_Pooling" / "config.json"
    pooling.write_text(json.dumps(json.loads(pooling.read_text()) | {"word_embedding_dimension": cfg["hidden_size"]}))
    save_file(make_state(cfg, torch.Generator().manual_seed(seed)), tmp / "model.safetensors")
    tmp.rename(folder)
    return folder


def modernbert_checkpoint() -> Path:
    return checkpoint("modernbert-embed-base", MODERNBERT_EMBED_BASE, modernbert_state,
                      DATA / "golden" / "modernbert" / "modernbert-embed-tiny")


def xlmr_checkpoint() -> Path:
    return checkpoint("multilingual-e5-base", MULTILINGUAL_E5_BASE, xlmr_state, DATA / "golden/xlmr/xlmr-e5-tiny")


def _loaded_peer(ctx: Context, name: str, script: str, folder: Path, key: str) -> Runner | None:
    """The peer's runner with the model loaded (fp32), or None (and a note) when it cannot be had."""
    runner = peer_runner(ctx, name, script)
    info = _try(ctx, runner, "load", model=str(folder), dtype="float32")
    if info is None:
        if runner is not None:
            runner.close()
        return None
    ctx.info[key] = info
    return runner


def _agree(ctx: Context, what: str, ours: Runner, peer: Runner | None, op: str, **job) -> None:
    """Both sides' vectors for the same inputs must agree (min cosine >= 0.9999) for their timings to compare."""
    if peer is None:
        return
    low = min(cosines(ours.call(op, **job)["vectors"], peer.call(op, **job)["vectors"]))
    ctx.checks.append({"check": what, "min_cosine": low, "pass": low >= 0.9999})
    if low < 0.9999:
        ctx.note(f"{what}: the sides disagree (min cosine {low:.6f}); their rows compare different computations")


def _timed_row(ctx: Context, ours: Runner, peer: Runner | None, op: str, job: dict, group: str, label: str,
               peer_name: str, **params) -> None:
    """Both sides timed in turns (`paired`); one tokens/s row."""
    p = ctx.profile
    mine, theirs = paired(ctx, ours, peer, op, job, p.warmup, p.reps, p.max_s)
    tokens = mine["tokens"]
    t_ours, t_peer = best(mine["times"]), best(theirs["times"]) if theirs else None
    ctx.rows.append(make_row(group, f"{label} tokens/s", "tokens/s", tokens / t_ours, peer_name,
                             tokens / t_peer if t_peer else None, metric="tokens_per_s", tokens=tokens, dtype="float32",
                             ours_times_s=mine["times"], peer_times_s=theirs["times"] if theirs else None, **params))
    log.info("%s: ours %.0f tok/s, %s %s", label, tokens / t_ours, peer_name,
             f"{tokens / t_peer:.0f}" if t_peer else "-")


def modernbert(ctx: Context) -> None:
    folder = modernbert_checkpoint()
    with ours_runner(ctx, "ours-modernbert") as ours:
        ctx.info["ours_modernbert"] = ours.call("load", model=str(folder), dtype="float32")
        # transformers' AutoModel on right-padded token ids with an attention mask, mean pooled (peers/hf_nomic.py)
        hf = _loaded_peer(ctx, "transformers", "hf_nomic.py", folder, "transformers_modernbert")
        try:
            _agree(ctx, "ModernBERT full-size random: ours vs transformers ModernBertModel, mixed batch of 6 "
                   "(16-700 tok)", ours, hf, "embed_ids", batch=inputs.id_batch([16, 100, 300, 37, 512, 700], seed=5))
            for i, (label, lengths) in enumerate(MODERNBERT_CASES if ctx.profile.name == "full" else
                                                 MODERNBERT_CASES[:1]):
                batch = inputs.id_batch(list(lengths), seed=200 + i)
                _timed_row(ctx, ours, hf, "time_ids", {"batches": [batch]}, "modernbert", f"ModernBERT {label}",
                           "transformers ModernBertModel", model="modernbert-embed-base (random weights)",
                           kind="mixed", lengths=list(lengths), padded_tokens=len(lengths) * max(lengths))
        finally:
            if hf is not None:
                hf.close()


def xlmr(ctx: Context) -> None:
    folder = xlmr_checkpoint()
    texts = inputs.texts_of_length(folder / "tokenizer.json", 180, 64, seed=7)
    with ours_runner(ctx, "ours-xlmr") as ours:
        ctx.info["ours_xlmr"] = ours.call("load", model=str(folder), dtype="float32")
        st = _loaded_peer(ctx, "st", "st.py", folder, "sentence-transformers_xlmr")
        try:
            sample = texts[:8] + [t[: len(t) // 5] for t in texts[8:16]]
            _agree(ctx, "XLM-R full-size random: ours vs sentence-transformers, 16 texts", ours, st, "embed_texts",
                   texts=sample)
            bs = 4 if ctx.profile.name == "smoke" else 32
            job = {"texts": texts[: max(bs, ctx.profile.min_texts)], "batch_size": bs}
            label = f"XLM-R (multilingual-e5-base size) ~180 tok batch {bs}"
            _timed_row(ctx, ours, st, "time_texts", job, "xlmr", label, "sentence-transformers",
                       model="multilingual-e5-base (random weights)", kind="medium", batch_size=bs)
        finally:
            if st is not None:
                st.close()


SCENARIOS = {"modernbert": modernbert, "xlmr": xlmr}
