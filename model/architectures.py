"""The supported architectures, in one table (transformers' `AutoModel` mapping, TEI's `models/mod.rs`).

A row says, for one `model_type` and kind (an embedder, or a cross-encoder that scores pairs): the config dataclass
and the function mapping `config.json`'s forms onto it (`model/config_forms.py`), the model class (one file per
family), the checkpoint's weight-key map (`model/weights.py`) and the defaults the folder may leave out (pooling,
task prefixes, Matryoshka). `Encoder.load` and `read_spec` only look rows up; adding a family is one model file and
one row (a variant of a family, e.g. NomicBert's MoE layers, is chosen by its config, inside its row).

Every config dataclass offers `vocab_size`, `hidden_size` and `position_limit` (the longest input its position
table allows, None for rotary models).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from model import config_forms, weights
from model.bert import Bert, BertConfig, FirstTokenHead
from model.config_forms import build_dataclass, classifier
from model.errors import ConfigError
from model.heads import SequenceScorer
from model.modernbert import ModernBert, ModernBertConfig, ModernBertHead
from model.nomic_bert import NomicBert, NomicBertConfig

EMBEDDING = "embedding"  # an embedder: texts -> vectors
RERANKER = "reranker"  # a cross-encoder: (query, document) pairs -> scores

# nomic-embed's task prefixes (model card); used when the folder's sentence-transformers config names none.
NOMIC_PROMPTS = {
    "search_query": "search_query: ",
    "search_document": "search_document: ",
    "classification": "classification: ",
    "clustering": "clustering: ",
}


@dataclass(frozen=True)
class Architecture:
    name: str  # what transformers calls the class (shown by /v1/models)
    model_type: str  # config.json `model_type`
    kind: str  # EMBEDDING or RERANKER
    config: type  # the family's config dataclass
    config_values: Callable[[dict[str, Any]], dict[str, Any]]  # config.json (any form) -> the dataclass's values
    model: Callable[[Any], nn.Module]  # config -> the model (called on the meta device)
    weights: Callable[[dict[str, torch.Tensor], Any], dict[str, torch.Tensor]]  # checkpoint keys -> the model's
    pooling: tuple[str, ...] = ("mean",)  # sentence-transformers pooling modes when the folder has no 1_Pooling
    matryoshka: bool = False  # trained for truncated `dimensions` whatever the folder says (nomic)
    matryoshka_layer_norm: bool = False  # nomic-embed v1.5's recipe: layer_norm before truncating
    prompts: dict[str, str] = field(default_factory=dict)  # task prefixes when the folder names none
    limit_key: str | None = None  # a config.json key that states the input limit (README: input limit, rule 2)
    experts: Callable[[Any], dict[str, int | list[int]] | None] = lambda config: None  # MoE layout, for /v1/models
    # the model can stop at each sequence's first token after the last layer's attention (`forward(batch,
    # first_tokens=True)` -> (B, E)): a CLS-pooled embedder then runs that layer's out-projection and MLP on B rows
    first_tokens: bool = False


def bert_scorer(config: BertConfig) -> SequenceScorer:
    return SequenceScorer(Bert(config), FirstTokenHead(config))


def modernbert_scorer(config: ModernBertConfig) -> SequenceScorer:
    return SequenceScorer(ModernBert(config), ModernBertHead(config))


ARCHITECTURES: tuple[Architecture, ...] = (
    # embedders
    Architecture("NomicBertModel", "nomic_bert", EMBEDDING, NomicBertConfig, config_forms.nomic_values, NomicBert,
                 weights.map_nomic, matryoshka=True, matryoshka_layer_norm=True, prompts=NOMIC_PROMPTS,
                 limit_key="n_positions", experts=NomicBertConfig.experts),
    Architecture("BertModel", "bert", EMBEDDING, BertConfig, dict, Bert, weights.map_bert, first_tokens=True),
    Architecture("DistilBertModel", "distilbert", EMBEDDING, BertConfig, config_forms.distilbert_values, Bert,
                 weights.map_bert, first_tokens=True),
    Architecture("XLMRobertaModel", "xlm-roberta", EMBEDDING, BertConfig, config_forms.xlmr_values, Bert,
                 weights.map_bert, first_tokens=True),
    Architecture("ModernBertModel", "modernbert", EMBEDDING, ModernBertConfig, config_forms.modernbert_values,
                 ModernBert, weights.map_modernbert),
    # cross-encoders: the same bodies under their classification heads
    Architecture("BertForSequenceClassification", "bert", RERANKER, BertConfig, classifier(dict), bert_scorer,
                 weights.map_scorer(weights.map_bert, weights.BERT_HEAD), pooling=("cls",)),
    Architecture("XLMRobertaForSequenceClassification", "xlm-roberta", RERANKER, BertConfig,
                 classifier(config_forms.xlmr_values), bert_scorer,
                 weights.map_scorer(weights.map_bert, weights.ROBERTA_HEAD), pooling=("cls",)),
    Architecture("ModernBertForSequenceClassification", "modernbert", RERANKER, ModernBertConfig,
                 classifier(config_forms.modernbert_values), modernbert_scorer,
                 weights.map_scorer(weights.map_modernbert, weights.MODERNBERT_HEAD)),
)


def kind_of(raw: dict[str, Any], st_config: dict[str, Any]) -> str:
    """A cross-encoder says so in `architectures` (`*ForSequenceClassification`) or in sentence-transformers'
    metadata (`model_type: CrossEncoder`); everything else is an embedder."""
    classes = raw.get("architectures") or []
    if any(isinstance(c, str) and c.endswith("ForSequenceClassification") for c in classes):
        return RERANKER
    return RERANKER if st_config.get("model_type") == "CrossEncoder" else EMBEDDING


def lookup(raw: dict[str, Any], kind: str = EMBEDDING) -> Architecture:
    model_type = raw.get("model_type")
    rows = [a for a in ARCHITECTURES if a.model_type == model_type]
    if not rows:
        known = ", ".join(sorted({a.model_type for a in ARCHITECTURES}))
        raise ConfigError(f"model_type={model_type!r} is not supported (one of {known})")
    for row in rows:
        if row.kind == kind:
            return row
    kinds = sorted({a.kind for a in rows})
    raise ConfigError(f"model_type={model_type!r} is supported as {' and '.join(kinds)} only, not as {kind}")


def parse_config(raw: dict[str, Any], kind: str = EMBEDDING) -> Any:
    """config.json -> the row's config dataclass (every config form mapped, every value type-checked)."""
    row = lookup(raw, kind)
    return build_dataclass(row.config, row.config_values(raw), "config.json")


def build_model(row: Architecture, config: Any, state: dict[str, torch.Tensor], source: str) -> nn.Module:
    """The row's model with the checkpoint's tensors, strictly (weights.build_model)."""
    return weights.build_model(lambda: row.model(config), row.weights(state, config), source)
