"""What a model folder says about the model: `config.json` (through the architecture table), the input limit, and the
sentence-transformers metadata (pooling, task prefixes). Read once at load, into a `ModelSpec`."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.architectures import Architecture, kind_of, lookup
from model.config_forms import build_dataclass
from model.errors import ConfigError


@dataclass
class ModelSpec:
    """Everything the encoder needs to know about a model folder, read once at load."""

    architecture: Architecture  # the row of model/architectures.py
    arch: Any  # the row's config dataclass, filled from config.json
    pooling: str = "mean"  # "mean" or "cls"
    prompts: dict[str, str] = field(default_factory=dict)
    max_input_tokens: int = 512
    limit_source: str = ""  # which rule gave max_input_tokens (shown by /v1/models)

    @property
    def model_type(self) -> str:
        return self.architecture.model_type

    @property
    def kind(self) -> str:
        return self.architecture.kind

    @property
    def hidden_size(self) -> int:
        return self.arch.hidden_size

    @property
    def matryoshka_layer_norm(self) -> bool:
        return self.architecture.matryoshka_layer_norm


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


def _limit_from_tokenizer(folder: Path) -> int | None:
    tok = read_json(folder / "tokenizer_config.json") or {}
    value = tok.get("model_max_length")
    # transformers writes a huge sentinel (1e30) when a tokenizer has no limit
    return int(value) if isinstance(value, (int, float)) and 0 < value < 1e9 else None


def input_limit(
    raw: dict[str, Any], folder: Path, setting: int | None, limit_key: str | None = None
) -> tuple[int, str]:
    """The longest accepted input: the setting, else the architecture's own limit key (legacy NomicBert n_positions),
    else sentence-transformers max_seq_length, else the tokenizer's model_max_length, else max_position_embeddings
    (README: input limit)."""
    st = read_json(folder / "sentence_bert_config.json") or {}
    rules: list[tuple[str, Any]] = [
        ("--max-input-tokens", setting),
        (f"config.json {limit_key}", raw.get(limit_key) if limit_key else None),
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
    st_cfg = read_json(folder / "config_sentence_transformers.json") or {}
    row = lookup(raw, kind_of(raw, st_cfg))
    arch = build_dataclass(row.config, row.config_values(raw), "config.json")
    limit, source = input_limit(raw, folder, max_input_tokens, row.limit_key)
    hard = arch.position_limit
    if hard is not None and limit > hard:
        if source == "--max-input-tokens":
            raise ConfigError(f"max_input_tokens={limit} exceeds the model's {hard} position embeddings")
        limit, source = hard, "config.json max_position_embeddings (position table)"

    pooling = row.pooling[0]
    pool_cfg = read_json(folder / "1_Pooling" / "config.json")
    if pool_cfg and pool_cfg.get("pooling_mode_cls_token") and not pool_cfg.get("pooling_mode_mean_tokens"):
        pooling = "cls"
    prompts = st_cfg.get("prompts") if isinstance(st_cfg.get("prompts"), dict) else None
    if not prompts:
        prompts = dict(row.prompts)
    return ModelSpec(
        architecture=row,
        arch=arch,
        pooling=pooling,
        prompts={k: v for k, v in (prompts or {}).items() if isinstance(v, str) and v},
        max_input_tokens=limit,
        limit_source=source,
    )
