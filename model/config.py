"""Read a model folder's config: `config.json` (every supported form) plus sentence-transformers metadata.

NomicBert has two config forms (spec §1): the legacy GPT2Config names (`n_embd`, `rotary_emb_base`, ...) and the
transformers-v5 names (`hidden_size`, `rope_parameters`, ...). Both are mapped here, in one place, onto the legacy
dataclass; when a config carries both and they disagree, loading fails naming both keys.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.bert import BertConfig
from model.errors import ConfigError
from model.nomic_bert import NomicBertConfig

SUPPORTED_MODEL_TYPES = ("nomic_bert", "bert", "distilbert")

# nomic-embed's task prefixes (model card); used when the folder's sentence-transformers config names none.
NOMIC_PROMPTS = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}

# v5 key -> legacy key, for the plain renames.
V5_RENAMES = {
    "hidden_size": "n_embd",
    "num_hidden_layers": "n_layer",
    "num_attention_heads": "n_head",
    "intermediate_size": "n_inner",
    "layer_norm_eps": "layer_norm_epsilon",
    "max_position_embeddings": "max_trained_positions",  # in the v5 form it is the NTK threshold
}
# v5 `hidden_act` names the gate's activation of the (always gated) MLP.
V5_ACTIVATIONS = {"silu": "swiglu", "swish": "swiglu", "gelu": "geglu", "sigmoid": "glu"}
LEGACY_ONLY_KEYS = ("n_embd", "n_layer", "n_head", "activation_function", "rotary_emb_base", "layer_norm_epsilon")


@dataclass(frozen=True)
class MoEInfo:
    """A mixture-of-experts model's routing shape, as /v1/models shows it."""

    num_experts: int
    top_k: int
    layers: tuple[int, ...]  # the layers whose FFN is a mixture of experts


@dataclass
class ModelSpec:
    """Everything the encoder needs to know about a model folder, read once at load."""

    model_type: str
    arch: NomicBertConfig | BertConfig
    pooling: str = "mean"  # "mean" or "cls"
    prompts: dict[str, str] = field(default_factory=dict)
    max_input_tokens: int = 512
    limit_source: str = ""  # which rule gave max_input_tokens (shown by /v1/models)
    matryoshka_layer_norm: bool = False  # nomic-embed v1.5's Matryoshka recipe (layer_norm before truncation)

    @property
    def hidden_size(self) -> int:
        return self.arch.n_embd if isinstance(self.arch, NomicBertConfig) else self.arch.hidden_size

    @property
    def moe(self) -> MoEInfo | None:
        arch = self.arch
        if isinstance(arch, NomicBertConfig) and arch.moe_layers and arch.moe_top_k is not None:
            return MoEInfo(arch.num_experts, arch.moe_top_k, arch.moe_layers)
        return None


def read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{path.name} must hold a JSON object")
    return value


def build_dataclass(cls: type, values: dict[str, Any], source: str) -> Any:
    """Instantiate a config dataclass from the keys it knows, checking each value's type by its annotation."""
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        value, kind = values[f.name], str(f.type)
        ok = (
            (value is None and "None" in kind)
            or (isinstance(value, bool) and kind.startswith("bool"))
            or (isinstance(value, int) and not isinstance(value, bool) and ("int" in kind or "float" in kind))
            or (isinstance(value, float) and "float" in kind and math.isfinite(value))
            or (isinstance(value, str) and kind.startswith("str"))
        )
        if not ok:
            raise ConfigError(f"{source}: {f.name}={value!r} has the wrong type (expected {kind})")
        kwargs[f.name] = value
    return cls(**kwargs)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def nomic_values(raw: dict[str, Any]) -> dict[str, Any]:
    """Map the v5 keys onto legacy names; check them against legacy keys present in the same file."""
    mapped: dict[str, tuple[str, Any]] = {}  # legacy key -> (v5 key it came from, value)
    for v5_key, legacy_key in V5_RENAMES.items():
        if v5_key in raw:
            mapped[legacy_key] = (v5_key, raw[v5_key])
    if "hidden_act" in raw:
        act = raw["hidden_act"]
        if act not in V5_ACTIVATIONS:
            raise ConfigError(f"hidden_act={act!r} is not supported (one of {sorted(V5_ACTIVATIONS)})")
        mapped["activation_function"] = ("hidden_act", V5_ACTIVATIONS[act])
    rope = raw.get("rope_parameters")
    rope_key = "rope_parameters"
    if rope is None and isinstance(raw.get("rope_scaling"), dict):  # transformers 4.x spelling
        rope, rope_key = dict(raw["rope_scaling"], rope_theta=raw.get("rope_theta")), "rope_scaling"
    if rope is not None:
        if not isinstance(rope, dict):
            raise ConfigError(f"{rope_key} must be an object, got {rope!r}")
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type == "default":
            mapped["rotary_scaling_factor"] = (f"{rope_key}.rope_type", None)
        elif rope_type == "dynamic":
            factor = rope.get("factor")
            if not isinstance(factor, (int, float)) or factor < 1:
                raise ConfigError(f"{rope_key}.factor={factor!r} must be a number >= 1 for rope_type 'dynamic'")
            mapped["rotary_scaling_factor"] = (f"{rope_key}.factor", float(factor))
        else:
            raise ConfigError(
                f"{rope_key}.rope_type={rope_type!r} is not supported (NomicBert uses 'default' or 'dynamic')"
            )
        if rope.get("rope_theta") is not None:
            mapped["rotary_emb_base"] = (f"{rope_key}.rope_theta", rope["rope_theta"])
    elif "rope_theta" in raw:
        mapped["rotary_emb_base"] = ("rope_theta", raw["rope_theta"])

    values = dict(raw)
    legacy_form = any(k in raw for k in LEGACY_ONLY_KEYS)
    for legacy_key, (v5_key, value) in mapped.items():
        if legacy_key in raw and not _same(raw[legacy_key], value):
            raise ConfigError(
                f"config.json disagrees with itself: {legacy_key}={raw[legacy_key]!r} but {v5_key}="
                f"{_v5_value(raw, v5_key)!r}"
            )
        if legacy_key not in raw or raw[legacy_key] is None:
            values[legacy_key] = value
    heads = ("head_dim", "hidden_size", "num_attention_heads")
    if all(k in raw for k in heads) and raw["head_dim"] * raw["num_attention_heads"] != raw["hidden_size"]:
        raise ConfigError(
            f"head_dim={raw['head_dim']} x num_attention_heads={raw['num_attention_heads']} "
            f"!= hidden_size={raw['hidden_size']}"
        )
    if not legacy_form:  # v5-only: what transformers assumes for the keys this form leaves out
        values.setdefault("qkv_proj_bias", False)
        values.setdefault("mlp_fc1_bias", False)
        values.setdefault("mlp_fc2_bias", False)
        values.setdefault("prenorm", False)
        values.setdefault("rotary_emb_fraction", 1.0)
        values.setdefault("rotary_emb_interleaved", False)
    if values.get("rotary_scaling_factor") in (0, 0.0):  # falsy turns NTK off in the reference
        values["rotary_scaling_factor"] = None
    return values


def _v5_value(raw: dict[str, Any], dotted: str) -> Any:
    value: Any = raw
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def parse_config(raw: dict[str, Any]) -> NomicBertConfig | BertConfig:
    model_type = raw.get("model_type")
    if model_type == "nomic_bert":
        return build_dataclass(NomicBertConfig, nomic_values(raw), "config.json")
    if model_type == "bert":
        return build_dataclass(BertConfig, raw, "config.json")
    if model_type == "distilbert":
        # sinusoidal_pos_embds needs nothing special: transformers saves that table with the weights
        values = {
            "vocab_size": raw.get("vocab_size", 30522),
            "hidden_size": raw.get("dim", 768),
            "num_hidden_layers": raw.get("n_layers", 6),
            "num_attention_heads": raw.get("n_heads", 12),
            "intermediate_size": raw.get("hidden_dim", 3072),
            "hidden_act": raw.get("activation", "gelu"),
            "max_position_embeddings": raw.get("max_position_embeddings", 512),
            "type_vocab_size": 0,
            "layer_norm_eps": 1e-12,  # fixed in DistilBERT
        }
        return build_dataclass(BertConfig, values, "config.json")
    raise ConfigError(f"model_type={model_type!r} is not supported (one of {', '.join(SUPPORTED_MODEL_TYPES)})")


def _limit_from_tokenizer(folder: Path) -> int | None:
    tok = read_json(folder / "tokenizer_config.json") or {}
    value = tok.get("model_max_length")
    # transformers writes a huge sentinel (1e30) when a tokenizer has no limit
    return int(value) if isinstance(value, (int, float)) and 0 < value < 1e9 else None


def input_limit(raw: dict[str, Any], folder: Path, setting: int | None) -> tuple[int, str]:
    """The longest accepted input: the setting, else legacy n_positions, else sentence-transformers
    max_seq_length, else the tokenizer's model_max_length, else max_position_embeddings (README: input limit)."""
    st = read_json(folder / "sentence_bert_config.json") or {}
    rules: list[tuple[str, Any]] = [
        ("--max-input-tokens", setting),
        ("config.json n_positions", raw.get("n_positions") if raw.get("model_type") == "nomic_bert" else None),
        ("sentence_bert_config.json max_seq_length", st.get("max_seq_length")),
        ("tokenizer_config.json model_max_length", _limit_from_tokenizer(folder)),
        ("config.json max_position_embeddings", raw.get("max_position_embeddings")),
    ]
    for source, value in rules:
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value, source
    raise ConfigError("no input limit found: set --max-input-tokens")


def read_spec(folder: Path, max_input_tokens: int | None = None) -> ModelSpec:
    raw = read_json(folder / "config.json")
    if raw is None:
        raise ConfigError(f"{folder} has no config.json")
    arch = parse_config(raw)
    limit, source = input_limit(raw, folder, max_input_tokens)
    hard = arch.max_position_embeddings if isinstance(arch, BertConfig) else None
    if isinstance(arch, NomicBertConfig) and arch.rotary_emb_fraction <= 0:
        hard = arch.n_positions
    if hard is not None and limit > hard:
        if source == "--max-input-tokens":
            raise ConfigError(f"max_input_tokens={limit} exceeds the model's {hard} position embeddings")
        limit, source = hard, "config.json max_position_embeddings (position table)"

    pooling = "mean"
    pool_cfg = read_json(folder / "1_Pooling" / "config.json")
    if pool_cfg and pool_cfg.get("pooling_mode_cls_token") and not pool_cfg.get("pooling_mode_mean_tokens"):
        pooling = "cls"
    st_cfg = read_json(folder / "config_sentence_transformers.json") or {}
    prompts = st_cfg.get("prompts") if isinstance(st_cfg.get("prompts"), dict) else None
    model_type = raw["model_type"]
    if not prompts and model_type == "nomic_bert":
        prompts = dict(NOMIC_PROMPTS)
    return ModelSpec(
        model_type=model_type,
        arch=arch,
        pooling=pooling,
        prompts={k: v for k, v in (prompts or {}).items() if isinstance(v, str) and v},
        max_input_tokens=limit,
        limit_source=source,
        matryoshka_layer_norm=model_type == "nomic_bert",
    )
