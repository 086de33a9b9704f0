"""What a model folder says about the model, read once at load into a `ModelSpec`: `config.json` (through the
architecture table), the input limit, and the sentence-transformers metadata: the module chain of `modules.json`
(Transformer, Pooling, Dense, Normalize; any other module is a load error naming it), task prefixes, Matryoshka
widths, and a cross-encoder's score activation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from model.activations import torch_activation
from model.architectures import RERANKER, Architecture, kind_of, lookup
from model.config_forms import build_dataclass
from model.errors import ConfigError


@dataclass(frozen=True)
class PoolingSpec:
    modes: tuple[str, ...]  # sentence-transformers' mode names, in concatenation order


@dataclass(frozen=True)
class DenseSpec:
    path: Path  # the module's folder (2_Dense/): config.json and its weights
    in_features: int
    out_features: int
    bias: bool
    activation: str  # a torch.nn class path
    residual: bool


@dataclass(frozen=True)
class NormalizeSpec:
    pass


@dataclass
class ModelSpec:
    """Everything the encoder needs to know about a model folder, read once at load."""

    architecture: Architecture  # the row of model/architectures.py
    arch: Any  # the row's config dataclass, filled from config.json
    modules: list[PoolingSpec | DenseSpec | NormalizeSpec] = field(default_factory=list)  # after the Transformer
    prompts: dict[str, str] = field(default_factory=dict)
    max_input_tokens: int = 512
    limit_source: str = ""  # which rule gave max_input_tokens (shown by /v1/models)
    matryoshka: bool = False  # trained for truncated `dimensions` (the architecture, or config.json says so)
    matryoshka_dimensions: tuple[int, ...] | None = None  # the widths it was trained at, when config.json lists them
    activation: str | None = None  # cross-encoders: the torch.nn class their scores go through

    @property
    def model_type(self) -> str:
        return self.architecture.model_type

    @property
    def kind(self) -> str:
        return self.architecture.kind

    @property
    def pooling(self) -> str:
        """The pooling modes, joined with '+' (a cross-encoder's: how its head pools)."""
        if self.kind == RERANKER:
            return getattr(self.arch, "classifier_pooling", self.architecture.pooling[0])
        return "+".join(next(m.modes for m in self.modules if isinstance(m, PoolingSpec)))

    @property
    def hidden_size(self) -> int:
        """The width of the embeddings: the Transformer's, times the pooling modes, or the last Dense's."""
        return chain_width(self.modules, self.arch.hidden_size)

    @property
    def matryoshka_layer_norm(self) -> bool:
        return self.architecture.matryoshka_layer_norm


def chain_width(modules: list[PoolingSpec | DenseSpec | NormalizeSpec], width: int) -> int:
    """The vector width after each module, from the Transformer's; a Dense that does not fit is a ConfigError."""
    for module in modules:
        if isinstance(module, PoolingSpec):
            width *= len(module.modes)
        elif isinstance(module, DenseSpec):
            if module.in_features != width:
                raise ConfigError(
                    f"{module.path.name}/config.json: in_features={module.in_features} but the module before gives "
                    f"{width}"
                )
            width = module.out_features
    return width


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


ST_PREFIX = "sentence_transformers."
# pooling_mode_* flags in sentence-transformers' concatenation order (its Pooling module)
POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def pooling_spec(folder: Path, default: tuple[str, ...]) -> PoolingSpec:
    """A Pooling module's config.json: `pooling_mode` (a name or a list, sentence-transformers >= 5) or the
    `pooling_mode_*` flags; none set means mean, as in sentence-transformers."""
    source = f"{folder.name}/config.json"
    cfg = read_json(folder / "config.json")
    if cfg is None:
        return PoolingSpec(default)
    mode = cfg.get("pooling_mode")
    if mode is not None:
        modes = (mode,) if isinstance(mode, str) else tuple(mode) if isinstance(mode, list) else (repr(mode),)
    else:
        modes = tuple(name for key, name in POOLING_FLAGS.items() if cfg.get(key)) or ("mean",)
    for name in modes:
        if name not in POOLING_FLAGS.values():
            known = list(POOLING_FLAGS.values())
            raise ConfigError(f"{source}: pooling mode {name!r} is not supported (one of {known})")
    if cfg.get("include_prompt", True) is False:
        raise ConfigError(f"{source}: include_prompt=false is not supported (the prompt's tokens are pooled too)")
    return PoolingSpec(modes)


def dense_spec(folder: Path) -> DenseSpec:
    source = f"{folder.name}/config.json"
    cfg = read_json(folder / "config.json")
    if cfg is None:
        raise ConfigError(f"{folder.name}/ has no config.json (a Dense module's in/out features and activation)")
    sizes = [cfg.get("in_features"), cfg.get("out_features")]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in sizes):
        raise ConfigError(f"{source}: in_features and out_features must be positive integers, got {sizes}")
    for key in ("module_input_name", "module_output_name"):
        if cfg.get(key) not in (None, "sentence_embedding"):
            raise ConfigError(f"{source}: {key}={cfg[key]!r} is not supported (Dense on the sentence embedding)")
    activation = cfg.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
    torch_activation(activation, f"{source} activation_function")
    return DenseSpec(folder, sizes[0], sizes[1], bool(cfg.get("bias", True)), activation, bool(cfg.get("use_residual")))


def module_chain(folder: Path, row: Architecture) -> list[PoolingSpec | DenseSpec | NormalizeSpec]:
    """modules.json's modules after the Transformer (a folder without modules.json: its 1_Pooling, else the row's
    pooling). A module this encoder does not run is a load error naming it, never skipped."""
    path = folder / "modules.json"
    if not path.is_file():
        return [pooling_spec(folder / "1_Pooling", row.pooling)]
    try:
        declared = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"modules.json is not valid JSON: {exc}") from None
    if not isinstance(declared, list) or not all(isinstance(m, dict) for m in declared):
        raise ConfigError("modules.json must hold a list of modules")
    chain: list[PoolingSpec | DenseSpec | NormalizeSpec] = []
    for i, module in enumerate(sorted(declared, key=lambda m: m.get("idx", 0))):
        kind, sub = str(module.get("type", "")), str(module.get("path", ""))
        name = kind.rsplit(".", 1)[-1] if kind.startswith(ST_PREFIX) else None
        if i == 0:
            if name != "Transformer":
                raise ConfigError(f"modules.json: the first module must be a Transformer, not {kind!r}")
            if sub:
                raise ConfigError(f"modules.json: a Transformer in {sub}/ (the sentence-transformers v1 layout) is "
                                  "not supported; the model must be at the folder's top level")
        elif row.kind == RERANKER:
            raise ConfigError(f"modules.json: module {kind!r} after a cross-encoder's Transformer is not supported")
        elif name == "Pooling" and not chain:
            chain.append(pooling_spec(folder / sub, row.pooling))
        elif name == "Dense" and chain:
            chain.append(dense_spec(folder / sub))
        elif name == "Normalize" and chain:
            chain.append(NormalizeSpec())
        else:
            where = "before a Pooling module " if name in ("Dense", "Normalize") else ""
            raise ConfigError(f"modules.json: module {kind!r} {where}is not supported (Transformer, Pooling, Dense, "
                              "Normalize)")
    if row.kind == RERANKER:
        return []
    return chain or [PoolingSpec(row.pooling)]


def matryoshka(raw: dict[str, Any], row: Architecture) -> tuple[bool, tuple[int, ...] | None]:
    """Trained for truncated widths: the architecture is (nomic), or config.json says so as vLLM reads it
    (`matryoshka_dimensions: [...]` or `is_matryoshka: true`)."""
    dims = raw.get("matryoshka_dimensions")
    if dims is not None:
        if not isinstance(dims, list) or not dims or not all(isinstance(d, int) and d > 0 for d in dims):
            raise ConfigError(f"matryoshka_dimensions={dims!r} must be a list of positive integers")
        return True, tuple(sorted(set(dims)))
    return row.matryoshka or raw.get("is_matryoshka") is True, None


def score_activation(raw: dict[str, Any], st_cfg: dict[str, Any], has_modules: bool) -> str:
    """sentence-transformers' CrossEncoder rule, first match wins: config_sentence_transformers.json `activation_fn`
    (read when the folder has modules.json), config.json `sentence_transformers.activation_fn`, the legacy
    `sbert_ce_default_activation_function`; else Sigmoid (one label)."""
    st_in_config = raw.get("sentence_transformers") if isinstance(raw.get("sentence_transformers"), dict) else {}
    for source, path in (
        ("config_sentence_transformers.json activation_fn", st_cfg.get("activation_fn") if has_modules else None),
        ("config.json sentence_transformers.activation_fn", st_in_config.get("activation_fn")),
        ("config.json sbert_ce_default_activation_function", raw.get("sbert_ce_default_activation_function")),
    ):
        if path is not None:
            torch_activation(path, source)
            return path
    return "torch.nn.modules.activation.Sigmoid"


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
    modules = module_chain(folder, row)
    chain_width(modules, arch.hidden_size)  # every Dense fits what comes before it
    trained, dims = matryoshka(raw, row)
    prompts = st_cfg.get("prompts") if isinstance(st_cfg.get("prompts"), dict) else None
    return ModelSpec(
        architecture=row,
        arch=arch,
        modules=modules,
        prompts={k: v for k, v in (prompts or row.prompts).items() if isinstance(v, str) and v},
        max_input_tokens=limit,
        limit_source=source,
        matryoshka=trained,
        matryoshka_dimensions=dims,
        activation=score_activation(raw, st_cfg, (folder / "modules.json").is_file()) if row.kind == RERANKER else None,
    )
