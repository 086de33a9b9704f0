"""The config forms each family's checkpoints carry, mapped onto its config dataclass: one place for all of them.

Each `*_values(raw)` takes `config.json` as loaded and returns the keyword values of the family's dataclass (its own
field names); `build_dataclass` then checks every value's type by the field's annotation. When a config carries two
forms of one setting and they disagree, loading fails naming both keys.

- NomicBert: the legacy GPT2Config names (`n_embd`, `rotary_emb_base`, ...) and the transformers-v5 names
  (`hidden_size`, `rope_parameters`, ...), mapped onto the legacy names (spec §1).
- DistilBERT: its own names (`dim`, `n_layers`, ...) mapped onto BERT's.
- XLM-RoBERTa: BERT's names; its `pad_token_id` becomes the position numbering's `padding_idx`.
- ModernBERT: transformers-v5's `layer_types` + `rope_parameters` (thetas per layer type) and the Hub's legacy
  `global_attn_every_n_layers` + `global_rope_theta` / `local_rope_theta`, onto the legacy names plus `layer_types`.
- Cross-encoders (`*ForSequenceClassification`): the body's form, and one label (one score per pair).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

from model.errors import ConfigError

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
            or (isinstance(value, (list, tuple)) and kind.startswith("tuple")
            and all(isinstance(v, str) for v in value))
        )
        if not ok:
            raise ConfigError(f"{source}: {f.name}={value!r} has the wrong type (expected {kind})")
        kwargs[f.name] = tuple(value) if isinstance(value, list) else value
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



def distilbert_values(raw: dict[str, Any]) -> dict[str, Any]:
    """DistilBERT's names onto BertConfig's. sinusoidal_pos_embds needs nothing special: transformers saves that table
    with the weights."""
    return {
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


def xlmr_values(raw: dict[str, Any]) -> dict[str, Any]:
    """XLM-R is BERT with RoBERTa's position numbering, which starts after the model's own pad id."""
    pad = raw.get("pad_token_id", 1)
    if not isinstance(pad, int) or isinstance(pad, bool) or pad < 0:
        raise ConfigError(f"pad_token_id={pad!r} must be a token id (XLM-R numbers positions from it)")
    return dict(raw, padding_idx=pad)


MODERNBERT_THETAS = (  # (layer type, legacy key, transformers' default)
    ("full_attention", "global_rope_theta", 160000.0),
    ("sliding_attention", "local_rope_theta", 10000.0),
)


def modernbert_values(raw: dict[str, Any]) -> dict[str, Any]:
    """Both ModernBERT config forms onto ModernBertConfig; where a config carries both, they must agree."""
    values = dict(raw)
    layers = raw.get("num_hidden_layers", 22)
    every = raw.get("global_attn_every_n_layers")
    if every is not None and (not isinstance(every, int) or isinstance(every, bool) or every < 1):
        raise ConfigError(f"global_attn_every_n_layers={every!r} must be a positive integer")
    derived = ["sliding_attention" if i % (every or 3) else "full_attention" for i in range(layers)]
    types = raw.get("layer_types")
    if types is None:
        values["layer_types"] = derived
    elif every is not None and isinstance(types, list) and types != derived:
        raise ConfigError(
            f"config.json disagrees with itself: layer_types={types} but global_attn_every_n_layers={every} "
            f"gives {derived}"
        )
    if raw.get("rope_scaling") is not None:
        raise ConfigError(f"rope_scaling={raw['rope_scaling']!r} is not supported (ModernBERT's rotary is plain)")
    rope = raw.get("rope_parameters") or {}
    if not isinstance(rope, dict):
        raise ConfigError(f"rope_parameters must be an object, got {rope!r}")
    for layer_type, legacy_key, default in MODERNBERT_THETAS:
        params = rope.get(layer_type) or {}
        if not isinstance(params, dict):
            raise ConfigError(f"rope_parameters.{layer_type} must be an object, got {params!r}")
        if params.get("rope_type", "default") != "default":
            raise ConfigError(
                f"rope_parameters.{layer_type}.rope_type={params['rope_type']!r} is not supported (ModernBERT uses "
                "'default')"
            )
        v5, legacy = params.get("rope_theta"), raw.get(legacy_key)
        if v5 is not None and legacy is not None and not _same(v5, legacy):
            raise ConfigError(
                f"config.json disagrees with itself: {legacy_key}={legacy!r} but "
                f"rope_parameters.{layer_type}.rope_theta={v5!r}"
            )
        theta = v5 if v5 is not None else legacy
        if theta is None and legacy_key == "local_rope_theta" and legacy_key in raw:
            theta = values["global_rope_theta"]  # transformers 4.x: local_rope_theta null -> the global base
        values[legacy_key] = default if theta is None else theta
    return values


def classifier(body: Callable[[dict[str, Any]], dict[str, Any]]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A cross-encoder's config: its body's form, checked for one label (transformers' rule: `id2label` when given,
    else `num_labels`, else 2)."""

    def values(raw: dict[str, Any]) -> dict[str, Any]:
        labels = raw.get("id2label")
        count = len(labels) if isinstance(labels, dict) and labels else raw.get("num_labels", 2)
        if count != 1:
            raise ConfigError(
                f"num_labels={count!r} (id2label) is not supported: a reranker here gives one score per pair "
                "(num_labels 1)"
            )
        return body(raw)

    return values
