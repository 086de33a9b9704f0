"""A full-size NomicBert with seeded random weights (speed does not depend on the values), in both folder forms:

- `<name>/`: the published legacy config.json, model.safetensors with the checkpoint's own key names, tokenizer.json;
- `<name>-hf5/`: the same weights (a symlink) with a transformers-v5 config.json, for transformers' native
  `nomic_bert`, which maps the legacy key names itself at load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

BENCH = Path(__file__).resolve().parent
DATA = BENCH.parent / "tests" / "data"  # vendored copies of ../shared (tests/data/README.md)
NOMIC_CONFIG = DATA / "nomic-embed-text-v1.5.config.json"
TOKENIZER = DATA / "golden" / "nomic" / "nomic-text-tiny" / "tokenizer.json"
CACHE = BENCH / ".cache"


def legacy_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of the legacy layout: N(0, 0.02) matrices, LayerNorm weight 1 and bias 0 (no other biases: the
    v1.5 config has qkv_proj_bias, mlp_fc1_bias and mlp_fc2_bias all false)."""
    g = torch.Generator().manual_seed(seed)
    E, inner, layers = cfg["n_embd"], cfg["n_inner"], cfg["n_layer"]
    m = cfg.get("pad_vocab_size_multiple", 1)
    vocab = (cfg["vocab_size"] + m - 1) // m * m

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * 0.02

    state = {
        "embeddings.word_embeddings.weight": normal(vocab, E),
        "embeddings.token_type_embeddings.weight": normal(cfg.get("type_vocab_size", 2), E),
        "emb_ln.weight": torch.ones(E),
        "emb_ln.bias": torch.zeros(E),
    }
    for i in range(layers):
        p = f"encoder.layers.{i}."
        state[p + "attn.Wqkv.weight"] = normal(3 * E, E)
        state[p + "attn.out_proj.weight"] = normal(E, E)
        state[p + "mlp.fc11.weight"] = normal(inner, E)
        state[p + "mlp.fc12.weight"] = normal(inner, E)
        state[p + "mlp.fc2.weight"] = normal(E, inner)
        for norm in ("norm1", "norm2"):
            state[p + f"{norm}.weight"] = torch.ones(E)
            state[p + f"{norm}.bias"] = torch.zeros(E)
    return state


def v5_config(cfg: dict) -> dict:
    """The transformers-v5 form of a legacy NomicBert config (what transformers' `nomic_bert` reads)."""
    m = cfg.get("pad_vocab_size_multiple", 1)
    return {
        "architectures": ["NomicBertModel"],
        "model_type": "nomic_bert",
        "hidden_size": cfg["n_embd"],
        "num_hidden_layers": cfg["n_layer"],
        "num_attention_heads": cfg["n_head"],
        "head_dim": cfg["n_embd"] // cfg["n_head"],
        "intermediate_size": cfg["n_inner"],
        "hidden_act": "silu",
        "layer_norm_eps": cfg["layer_norm_epsilon"],
        "max_position_embeddings": cfg.get("max_trained_positions", 2048),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg["rotary_emb_base"])},
        "type_vocab_size": cfg.get("type_vocab_size", 2),
        "vocab_size": (cfg["vocab_size"] + m - 1) // m * m,
        "pad_token_id": 0,
        "dtype": "float32",
    }


def build(config: Path = NOMIC_CONFIG, out: Path | None = None, seed: int = 0, tokenizer: Path = TOKENIZER) -> Path:
    """Write (once) the random checkpoint and its v5 twin; returns the legacy folder. The v5 folder is
    `<folder>-hf5`. Rebuilt when the config, seed or tokenizer differ from what the folder was built from."""
    cfg = json.loads(config.read_text())
    out = out or CACHE / f"{config.name.removesuffix('.config.json')}-random-seed{seed}"
    stamp = json.dumps({"config": cfg, "seed": seed, "tokenizer": str(tokenizer)}, sort_keys=True)
    hf5 = out.with_name(out.name + "-hf5")
    if (out / ".built").exists() and (out / ".built").read_text() == stamp and (hf5 / "config.json").exists():
        return out
    for folder in (out, hf5):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    save_file(legacy_state(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    shutil.copyfile(tokenizer, out / "tokenizer.json")
    (hf5 / "config.json").write_text(json.dumps(v5_config(cfg), indent=2))
    (hf5 / "model.safetensors").symlink_to(out / "model.safetensors")
    shutil.copyfile(tokenizer, hf5 / "tokenizer.json")
    (out / ".built").write_text(stamp)
    return out
