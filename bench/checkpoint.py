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


# ---- a cross-encoder the size of cross-encoder/ms-marco-MiniLM-L-6-v2 ---------------------------------------------
CROSS_ENCODER_TEMPLATE = DATA / "golden" / "rerank" / "bert-cross-encoder-tiny"  # its layout, tokenizer and metadata
MS_MARCO_MINILM = {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 12, "intermediate_size": 1536}


def cross_encoder_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Every tensor of BertForSequenceClassification (HF key names): N(0, 0.02) matrices, small random biases,
    LayerNorm weight 1 and bias 0, a one-label classifier."""
    g = torch.Generator().manual_seed(seed)
    E, inner = cfg["hidden_size"], cfg["intermediate_size"]

    def normal(*shape: int, std: float = 0.02) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    state = {
        "bert.embeddings.word_embeddings.weight": normal(cfg["vocab_size"], E),
        "bert.embeddings.position_embeddings.weight": normal(cfg["max_position_embeddings"], E),
        "bert.embeddings.token_type_embeddings.weight": normal(cfg["type_vocab_size"], E),
        "bert.pooler.dense.weight": normal(E, E),
        "bert.pooler.dense.bias": normal(E),
        "classifier.weight": normal(1, E, std=0.5),
        "classifier.bias": normal(1),
    }
    norms = ["bert.embeddings.LayerNorm"]
    for i in range(cfg["num_hidden_layers"]):
        p = f"bert.encoder.layer.{i}."
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            state[p + name + ".weight"], state[p + name + ".bias"] = normal(E, E), normal(E)
        state[p + "intermediate.dense.weight"], state[p + "intermediate.dense.bias"] = normal(inner, E), normal(inner)
        state[p + "output.dense.weight"], state[p + "output.dense.bias"] = normal(E, inner), normal(E)
        norms += [p + "attention.output.LayerNorm", p + "output.LayerNorm"]
    for norm in norms:
        state[norm + ".weight"], state[norm + ".bias"] = torch.ones(E), torch.zeros(E)
    return state


def build_cross_encoder(seed: int = 0, out: Path | None = None) -> Path:
    """Write (once) a seeded random cross-encoder with ms-marco-MiniLM-L-6-v2's sizes, in the same Hub layout as the
    rerank golden (bert-base-uncased tokenizer, sentence-transformers metadata, Identity activation)."""
    cfg = json.loads((CROSS_ENCODER_TEMPLATE / "config.json").read_text()) | MS_MARCO_MINILM
    out = out or CACHE / f"ms-marco-MiniLM-L-6-v2-sized-random-seed{seed}"
    stamp = json.dumps({"config": cfg, "seed": seed}, sort_keys=True)
    if (out / ".built").exists() and (out / ".built").read_text() == stamp:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    for name in ("tokenizer.json", "tokenizer_config.json", "config_sentence_transformers.json", "modules.json",
                 "sentence_bert_config.json"):
        shutil.copyfile((CROSS_ENCODER_TEMPLATE / name).resolve(), out / name)
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file(cross_encoder_state(cfg, seed), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / ".built").write_text(stamp)
    return out
