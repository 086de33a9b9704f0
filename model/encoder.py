"""The encoder the server and the CLI use: tokenizer + model + pooling on one device, behind a small interface.

    enc = Encoder.load("nomic-ai/nomic-embed-text-v1.5", device="cuda")
    ids = enc.tokenize(["search_query: what is rotary?"])
    vectors = enc.embed(ids, dimensions=256)        # (N, 256) float32, L2-normalised

The split the server relies on: `pooled(batch)` is the device work (run in one worker thread), `finish(...)` the cheap
per-request post-processing (Matryoshka, normalisation) done wherever the request is answered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model import cpu_linear, pooling
from model.bert import Bert, BertConfig
from model.config import ModelSpec, read_spec
from model.errors import InputError, ModelError
from model.nomic_bert import NomicBert, NomicBertConfig
from model.packing import PackedBatch, cls_pool, mean_pool, pack, use_varlen
from model.tokenizer import Tokenizer
from model.weights import build_model, map_bert, map_nomic, read_state_dict, resolve_model_dir

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# On CPU, batches with fewer real tokens than this run on one intra-op thread: their ops are too small to split, and
# every op's fork/join waits on the slowest thread -- a core busy with the event loop or another process stalls it for
# a scheduler slice (measured on a busy 2-core box: median 2.5x slower for one 16-token input, 8x for four).
SMALL_BATCH_TOKENS = 64
# On CPU one forward takes at most this many tokens: activations of larger batches spill out of the caches (measured on
# a Zen 4 EPYC, 32 MiB L3, fp32: MiniLM 7,700 tok/s at 720-2,880 tokens per forward, 6,700 at 11,520; full-size
# NomicBert 829 tok/s at 720, 720 at 4,320). A longer single input still runs whole.
CPU_FORWARD_TOKENS = 1024


def default_threads() -> int:
    """Intra-op threads on CPU: OMP_NUM_THREADS when set, else every core this process may run on."""
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    return len(os.sched_getaffinity(0))


def cpu_has_native_bf16() -> bool:
    """bf16 matmuls pay off only with native bf16 units: AMX tiles (Intel Sapphire Rapids+) or AVX512-BF16 dot
    products (AMD Zen 4+). Measured on a Zen 4 EPYC (bench/results/2026-11-24-cpu.md, fast-path rows): bf16 1.56-1.76x
    fp32's tokens/s, min cosine to fp32 0.9999 (MiniLM goldens), 0.99998 (full-size NomicBert)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def pick_device(device: str) -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ModelError("--device cuda was asked for but this torch build or machine has no CUDA")
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" or cpu_has_native_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    return DTYPES[dtype]


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    model_type: str
    hidden_size: int
    max_input_tokens: int
    limit_source: str
    vocab_size: int
    device: str
    dtype: str
    pooling: str
    packed_attention: bool  # attention itself runs without padding (varlen); matmuls never see padding
    prompts: dict[str, str] = field(default_factory=dict)


class Encoder:
    def __init__(
        self,
        name: str,
        spec: ModelSpec,
        model: torch.nn.Module,
        tokenizer: Tokenizer | None,
        device: torch.device,
        dtype: torch.dtype,
        compile: bool = False,
        threads: int | None = None,
    ):
        self.spec, self.tokenizer, self.device, self.dtype = spec, tokenizer, device, dtype
        self.threads = threads or default_threads()
        self.model = model.to(device=device, dtype=dtype)
        # CPU: oneDNN packed matmuls where they beat nn.Linear here (timed); torch.compile brings its own kernels
        self.linear_kernel = cpu_linear.install(self.model) if device.type == "cpu" and not compile else "aten"
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        self._packed = device.type == "cuda" and use_varlen(torch.empty(1, device=device, dtype=dtype))
        self.info = EncoderInfo(
            name=name,
            model_type=spec.model_type,
            hidden_size=spec.hidden_size,
            max_input_tokens=spec.max_input_tokens,
            limit_source=spec.limit_source,
            vocab_size=self.model_vocab_size,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            pooling=spec.pooling,
            packed_attention=self._packed,
            prompts=dict(spec.prompts),
        )

    @classmethod
    def load(
        cls,
        model: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_input_tokens: int | None = None,
        revision: str | None = None,
        compile: bool = False,
        threads: int | None = None,
    ) -> Encoder:
        folder = resolve_model_dir(model, revision)
        spec = read_spec(folder, max_input_tokens)
        state = read_state_dict(folder)
        arch = spec.arch
        if isinstance(arch, NomicBertConfig):
            net = build_model(lambda: NomicBert(arch), map_nomic(state, arch.n_layer), folder.name)
        else:
            assert isinstance(arch, BertConfig)
            net = build_model(lambda: Bert(arch), map_bert(state, arch.num_hidden_layers), folder.name)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        encoder = cls(model, spec, net, Tokenizer.from_folder(folder), torch_device, torch_dtype, compile, threads)
        if torch_device.type == "cpu":
            torch.set_num_threads(encoder.threads)
        log.info(
            "loaded %s (%s, %d dims, max %d tokens from %s) on %s in %s%s",
            model, spec.model_type, spec.hidden_size, spec.max_input_tokens, spec.limit_source,
            torch_device, encoder.info.dtype,
            f", {encoder.threads} threads, {encoder.linear_kernel} linears" if torch_device.type == "cpu" else "",
        )
        return encoder

    @property
    def model_vocab_size(self) -> int:
        emb = getattr(self.model, "embeddings", self.model)
        return emb.word_embeddings.num_embeddings

    # ---- input side -------------------------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], prefix: str = "") -> list[list[int]]:
        return list(self.iter_tokenize(texts, prefix))

    def iter_tokenize(
        self, texts: Sequence[str], prefix: str = "", stop_after: int | None = None
    ) -> Iterator[list[int]]:
        """Each text's ids in order, tokenised a bounded slice of text at a time; a text past `stop_after` ids is cut
        short there, for the caller to refuse (model/tokenizer.py)."""
        if self.tokenizer is None:
            raise ModelError(f"{self.info.name} has no tokenizer.json: send token ids")
        return self.tokenizer.iter_encode(texts, prefix, stop_after)

    def check_ids(self, ids: Sequence[int]) -> None:
        if not ids:
            raise InputError("empty input")
        bad = next((i for i in ids if not 0 <= i < self.info.vocab_size), None)
        if bad is not None:
            raise InputError(f"token id {bad} is outside the vocabulary [0, {self.info.vocab_size})")

    def truncate(self, ids: Sequence[int], limit: int | None = None) -> list[int]:
        limit = limit or self.info.max_input_tokens
        if self.tokenizer is None:
            return list(ids[:limit])
        return self.tokenizer.truncate(ids, limit)

    def windows(self, ids: Sequence[int], limit: int | None = None) -> list[list[int]]:
        limit = limit or self.info.max_input_tokens
        if self.tokenizer is None:
            return [list(ids[i : i + limit]) for i in range(0, len(ids), limit)]
        return self.tokenizer.windows(ids, limit)

    def batch_cost(self, lengths: Sequence[int]) -> int:
        """What a batch costs the device, in tokens: real tokens when attention is packed, else the padded grid."""
        return sum(lengths) if self._packed else len(lengths) * max(lengths)

    # ---- device side ------------------------------------------------------------------------------------------
    def pooled(
        self,
        batch: Sequence[Sequence[int]],
        token_types: Sequence[Sequence[int]] | None = None,
        threads: int | None = None,
    ) -> np.ndarray:
        """Token-id lists -> (N, E) float32 pooled vectors (not normalised). On CPU the batch runs as consecutive
        forwards of at most CPU_FORWARD_TOKENS tokens each (the same vectors: pooling is per sequence), on `threads`
        intra-op threads (default: all of `self.threads`; callers running batches side by side give each a share)."""
        threads = threads or self.threads
        if self.device.type != "cpu":
            return self._pooled(batch, token_types, threads)

        def run(a: int, b: int) -> np.ndarray:
            return self._pooled(batch[a:b], None if token_types is None else token_types[a:b], threads)

        parts, start, tokens = [], 0, 0
        for i, ids in enumerate(batch):
            if tokens and tokens + len(ids) > CPU_FORWARD_TOKENS:
                parts.append(run(start, i))
                start, tokens = i, 0
            tokens += len(ids)
        parts.append(run(start, len(batch)))
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    @torch.inference_mode()
    def _pooled(
        self, batch: Sequence[Sequence[int]], token_types: Sequence[Sequence[int]] | None, threads: int
    ) -> np.ndarray:
        """One forward. One host<->device copy each way."""
        if self.device.type == "cpu":  # per call: the thread count is per calling thread, and the batcher has its own
            want = 1 if sum(len(s) for s in batch) < SMALL_BATCH_TOKENS else threads
            if torch.get_num_threads() != want:
                torch.set_num_threads(want)
        packed: PackedBatch = pack(batch, token_types, pin_memory=self.device.type == "cuda").to(self.device)
        hidden = self._forward(packed)  # (T, E)
        vectors = cls_pool(hidden, packed) if self.spec.pooling == "cls" else mean_pool(hidden, packed)
        return vectors.cpu().numpy()

    def finish(self, pooled: np.ndarray, dimensions: int | None = None) -> np.ndarray:
        if dimensions is not None and not 1 <= dimensions <= self.info.hidden_size:
            raise InputError(f"dimensions must be between 1 and {self.info.hidden_size}, got {dimensions}")
        return pooling.finish(pooled, dimensions, self.spec.matryoshka_layer_norm)

    def embed(
        self, batch: Sequence[Sequence[int]], dimensions: int | None = None, max_batch_tokens: int = 16384
    ) -> np.ndarray:
        """Embed any number of inputs, in length-sorted sub-batches of at most `max_batch_tokens` padded tokens."""
        return self.finish(self.pool_sorted(batch, max_batch_tokens), dimensions)

    def pool_sorted(self, batch: Sequence[Sequence[int]], max_batch_tokens: int = 16384) -> np.ndarray:
        """(N, E) float32 pooled vectors (not normalised) of any number of inputs, computed in length-sorted
        sub-batches of at most `max_batch_tokens` (`batch_cost`)."""
        order = sorted(range(len(batch)), key=lambda i: len(batch[i]))
        out = np.empty((len(batch), self.info.hidden_size), dtype=np.float32)
        chunk: list[int] = []  # indices of the sub-batch being filled (ascending length, so its cost only grows)
        for i in [*order, None]:
            lengths = [len(batch[j]) for j in chunk] + ([len(batch[i])] if i is not None else [])
            if chunk and (i is None or self.batch_cost(lengths) > max_batch_tokens):
                out[chunk] = self.pooled([batch[j] for j in chunk])
                chunk = []
            if i is not None:
                chunk.append(i)
        return out

    def warmup(self) -> None:
        """Run a few shapes once so the first request does not pay for allocator growth or compilation."""
        for length in (8, 64):
            self.pooled([[1] * min(length, self.info.max_input_tokens)] * 2)

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, torch.OutOfMemoryError)
