"""The encoder the server and the CLI use: tokenizer + model + pooling on one device, behind a small interface.

    enc = Encoder.load("nomic-ai/nomic-embed-text-v1.5", device="cuda")
    ids = enc.tokenize(["search_query: what is rotary?"])
    vectors = enc.embed(ids, dimensions=256)        # (N, 256) float32, L2-normalised

    rr = Encoder.load("BAAI/bge-reranker-base")     # a cross-encoder: info.kind == "reranker"
    pairs = rr.tokenize_pairs("what is rotary?", ["a document", "another"], truncate=True)
    scores = rr.activate(rr.score(pairs))           # (N,) float32: raw logits, then the model's activation

The split the server relies on: `pooled(batch)` is the device work (run in one worker thread), `finish(...)` the cheap
per-request post-processing (Matryoshka, normalisation) done wherever the request is answered.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from model import cpu_aot, cpu_lanes, cpu_linear, pooling, weights
from model.activations import torch_activation
from model.architectures import EMBEDDING, RERANKER, build_model
from model.cold_start import ColdStart
from model.config import DenseSpec, ModelSpec, NormalizeSpec, PoolingSpec, read_spec
from model.errors import InputError, ModelError, PairTooLong
from model.heads import Float32Head
from model.packing import AMPERE, PackedBatch, pack, varlen_supported
from model.tokenizer import Pair, Tokenizer
from model.weights import read_state_dict, resolve_model_dir

log = logging.getLogger(__name__)
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
T = TypeVar("T")
# On CPU one forward takes at most this many tokens: activations of larger batches spill out of the caches (measured on
# a Zen 4 EPYC, 32 MiB L3, fp32: MiniLM 7,700 tok/s at 720-2,880 tokens per forward, 6,700 at 11,520; full-size
# NomicBert 829 tok/s at 720, 720 at 4,320). A longer single input still runs whole.
CPU_FORWARD_TOKENS = 1024
# A CLS-pooled embedder's forward of at least this many tokens stops its last layer at the first tokens; a shorter one
# keeps every token to the end: its linears cost the same on B rows as on T there (a weight stream), and the stop
# adds a gather (1 x 16 tokens: 0.97x)
FIRST_TOKENS_FROM = 64


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
    """`auto`: bf16 on GPUs of compute capability >= 8.0 and on CPUs with native bf16; fp16 on older GPUs (T4, V100:
    no bf16 tensor cores, and they run the padded attention path); else fp32."""
    capability = torch.cuda.get_device_capability(device) if device.type == "cuda" else None
    if dtype == "auto":
        if capability is not None:
            return torch.bfloat16 if capability >= AMPERE else torch.float16
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype={dtype!r} is not one of {sorted(DTYPES)}")
    if DTYPES[dtype] is torch.bfloat16 and capability is not None and capability < AMPERE:
        raise ModelError(
            f"dtype=bfloat16 needs a GPU of compute capability >= 8.0, this one is {capability[0]}.{capability[1]}:"
            " use float16 or float32"
        )
    return DTYPES[dtype]


def describe_precision(device: torch.device, dtype: torch.dtype, varlen: bool) -> str:
    """What was chosen at load, for the log: dtype and attention path (and on a GPU, its compute capability)."""
    attention = "varlen flash attention" if varlen else "scaled_dot_product attention"
    text = f"{str(dtype).removeprefix('torch.')}, {attention}"
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        text += f", compute capability {major}.{minor}"
        if (major, minor) < AMPERE:
            text += " (< 8.0: no flash attention, no bf16)"
    return text


@dataclass(frozen=True)
class EncoderInfo:
    name: str
    model_type: str
    hidden_size: int  # the width of the embeddings (after any Dense module)
    max_input_tokens: int
    limit_source: str
    vocab_size: int
    device: str
    dtype: str
    pooling: str  # sentence-transformers' mode names joined with '+' (a reranker's: how its head pools)
    packed_attention: bool  # attention itself runs without padding (varlen); matmuls never see padding
    prompts: dict[str, str] = field(default_factory=dict)
    kind: str = EMBEDDING  # or RERANKER: a cross-encoder, scoring (query, document) pairs
    architecture: str = ""  # the architecture table's row, as transformers names the class
    experts: dict[str, int | list[int]] | None = None  # MoE layout (experts, top-k, MoE layers), None for dense models
    matryoshka: bool = False  # trained for truncated `dimensions`
    matryoshka_dimensions: tuple[int, ...] | None = None  # the widths it was trained at, when the folder lists them
    activation: str | None = None  # rerankers: the torch.nn class scores go through (sentence-transformers' rule)


def sentence_chain(spec: ModelSpec) -> pooling.Chain | None:
    """The sentence-transformers modules after the Transformer, as nn.Modules (Dense weights loaded strictly from
    their folders); None for a cross-encoder, whose head is part of its model."""
    if spec.kind == RERANKER:
        return None
    first, *rest = spec.modules
    assert isinstance(first, PoolingSpec)
    after: list[torch.nn.Module] = []
    for module in rest:
        if isinstance(module, DenseSpec):
            act = torch_activation(module.activation, f"{module.path.name} activation_function")
            make = lambda m=module, a=act: pooling.Dense(m.in_features, m.out_features, m.bias, a, m.residual)
            after.append(weights.build_model(make, read_state_dict(module.path), module.path.name))
        elif isinstance(module, NormalizeSpec):
            after.append(pooling.Normalize())
    if after and isinstance(after[-1], pooling.Normalize):
        after.pop()  # `finish` normalises every embedding anyway, after a chunked input's windows are averaged
    return pooling.Chain(pooling.Pooling(first.modes), after)


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
        cpu_aot_dir: Path | None = None,
    ):
        self.spec, self.tokenizer, self.device, self.dtype = spec, tokenizer, device, dtype
        self.threads = threads or default_threads()
        self._cold_start = ColdStart()
        self.model = model.to(device=device, dtype=dtype)
        for module in self.model.modules():
            if isinstance(module, Float32Head):  # scores are computed in fp32 whatever the encoder's dtype
                module.float()
        chain = sentence_chain(spec)
        self.chain = chain.to(device) if chain is not None else None  # fp32: it works on fp32 pooled vectors
        # CLS pooling reads the first tokens only: the model can stop there after the last layer's attention. XLM-R
        # at multilingual-e5-base size, CLS-pooled, fp32, 2-vCPU Zen 4: 32 x 180 tokens 1.06x, 32 x 8-180 1.04x
        self._first_tokens = chain is not None and chain.cls_only and spec.architecture.first_tokens
        self._activation = torch_activation(spec.activation, "activation") if spec.activation else None
        if spec.kind == RERANKER and tokenizer is not None and not tokenizer.has_pair_template():
            raise ModelError(f"{name}: its tokenizer.json has no pair template (post_processor): a cross-encoder needs "
                             "the separators between query and document")
        # opt-in: a lone short input through an ahead-of-time compiled copy (model/cpu_aot.py); it exports the plain
        # nn.Linear model, so it is built before the linears are packed
        self._small = None
        if (cpu_aot_dir is not None and device.type == "cpu" and not compile and spec.kind == EMBEDDING
                and not spec.architecture.experts(spec.arch)):  # MoE routing is data-dependent: it does not export
            self._small = cpu_aot.SmallForward.build(self.model, name, cpu_aot_dir)
        # CPU: oneDNN packed matmuls where they beat nn.Linear here (timed); torch.compile brings its own kernels
        self.linear_kernel = cpu_linear.install(self.model) if device.type == "cpu" and not compile else "aten"
        self._forward = torch.compile(self.model, dynamic=True) if compile else self.model
        # the attention path is fixed here, at load: varlen flash attention wherever the GPU has it, else SDPA
        head_dim = getattr(spec.arch, "head_dim", None)  # an architecture that does not say runs SDPA
        self._packed = device.type == "cuda" and head_dim is not None and varlen_supported(device, dtype, head_dim)
        self.info = EncoderInfo(
            name=name,
            model_type=spec.model_type,
            hidden_size=spec.hidden_size,
            max_input_tokens=spec.max_input_tokens,
            limit_source=spec.limit_source,
            vocab_size=spec.arch.vocab_size,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            pooling=spec.pooling,
            packed_attention=self._packed,
            prompts=dict(spec.prompts),
            kind=spec.kind,
            architecture=spec.architecture.name,
            experts=spec.architecture.experts(spec.arch),
            matryoshka=spec.matryoshka,
            matryoshka_dimensions=spec.matryoshka_dimensions,
            activation=spec.activation.rsplit(".", 1)[-1] if spec.activation else None,
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
        cpu_aot_dir: str | Path | None = None,
    ) -> Encoder:
        folder = resolve_model_dir(model, revision)
        spec = read_spec(folder, max_input_tokens)
        torch_device = pick_device(device)
        torch_dtype = pick_dtype(dtype, torch_device)
        threads = threads or default_threads()

        def build() -> Encoder:
            net = build_model(spec.architecture, spec.arch, read_state_dict(folder), folder.name)
            return cls(model, spec, net, Tokenizer.from_folder(folder), torch_device, torch_dtype, compile, threads,
                       Path(cpu_aot_dir) if cpu_aot_dir is not None else None)

        # on CPU the load's own parallel work (weight copies, oneDNN packing and its timing) runs on the lane the
        # forwards will use: a pool left on the loading thread would slow every forward (model/cpu_lanes.py)
        encoder = cpu_lanes.run(threads, build) if torch_device.type == "cpu" else build()
        log.info(
            "loaded %s (%s %s, %d dims, max %d tokens from %s) on %s: %s%s",
            model, spec.architecture.name, spec.kind, spec.hidden_size, spec.max_input_tokens, spec.limit_source,
            torch_device, describe_precision(torch_device, torch_dtype, encoder.info.packed_attention),
            f", {encoder.threads} threads, {encoder.linear_kernel} linears" if torch_device.type == "cpu" else "",
        )
        return encoder

    @property
    def cpu_aot_package(self) -> Path | None:
        """The compiled short-forward package in use (`--cpu-aot`), if any."""
        return self._small.path if self._small is not None else None

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

    def truncate(self, ids: Sequence[int], limit: int | None = None, left: bool = False) -> list[int]:
        """Cut to `limit` tokens keeping the special tokens; `left` drops the start of the text instead of its end."""
        limit = limit or self.info.max_input_tokens
        if self.tokenizer is None:
            return list(ids[len(ids) - limit :] if left else ids[:limit])
        return self.tokenizer.truncate(ids, limit, left)

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
        if self.device.type != "cpu":
            return self.run(self.prepare(batch, token_types))

        def forward(a: int, b: int) -> np.ndarray:
            return self.run(self.prepare(batch[a:b], None if token_types is None else token_types[a:b]))

        def forwards() -> np.ndarray:
            parts, start, tokens = [], 0, 0
            for i, ids in enumerate(batch):
                if tokens and tokens + len(ids) > CPU_FORWARD_TOKENS:
                    parts.append(forward(start, i))
                    start, tokens = i, 0
                tokens += len(ids)
            parts.append(forward(start, len(batch)))
            return parts[0] if len(parts) == 1 else np.concatenate(parts)

        return self._on_cpu(forwards, batch, threads)

    def _on_cpu(self, work: Callable[[], T], batch: Sequence[Sequence[int]], threads: int | None) -> T:
        """work(), one CPU forward or more of `batch`, on `threads` (default all of ours). A small batch gets every
        thread too (at 16 tokens a linear is as much arithmetic per weight as the cores can do), unless it finds the
        process idle and one thread measured faster then (model/cold_start.py); the OpenMP pool that runs it is the
        process's one for that thread count (model/cpu_lanes.py)."""
        with self._cold_start.threads_for(threads or self.threads, sum(map(len, batch))) as n:
            return cpu_lanes.run(n, work)

    @property
    def packs_ahead(self) -> bool:
        """Host and device work apart: on a GPU the server packs the next batch (`prepare`) while this one computes
        (`run`). On CPU both share the same cores, so `pooled` does both in turn."""
        return self.device.type != "cpu"

    def prepare(
        self, batch: Sequence[Sequence[int]], token_types: Sequence[Sequence[int]] | None = None
    ) -> PackedBatch:
        """The host side of one forward: the batch packed into one int64 tensor (page-locked when it goes to a GPU).
        The server runs it ahead, on its own thread, while the previous batch computes."""
        return pack(batch, token_types, pin_memory=self.device.type == "cuda", varlen=self._packed)

    @torch.inference_mode()
    def run(self, packed: PackedBatch) -> np.ndarray:
        """The device side of one forward: one host-to-device copy, the forward, pooling, one device-to-host copy.
        (N, E) float32 pooled vectors, not normalised."""
        if self.device.type != "cpu":
            packed = packed.to(self.device)
        if self._first_tokens and packed.input_ids.shape[0] >= FIRST_TOKENS_FROM:  # (B, E): CLS-pooled already
            vectors = self.chain.after_pooling(self._forward(packed, first_tokens=True).float())
        else:
            small = self._small is not None and self._small.covers(packed)
            out = self._small(packed) if small else self._forward(packed)  # (T, E), or a cross-encoder's (B, 1) logits
            vectors = self.chain(out, packed) if self.chain is not None else out  # pooled (B, width) fp32
        return vectors.cpu().numpy()

    def finish(self, pooled: np.ndarray, dimensions: int | None = None, normalize: bool = True) -> np.ndarray:
        if dimensions is not None and not 1 <= dimensions <= self.info.hidden_size:
            raise InputError(f"dimensions must be between 1 and {self.info.hidden_size}, got {dimensions}")
        return pooling.finish(pooled, dimensions, self.spec.matryoshka_layer_norm, normalize)

    @torch.inference_mode()
    def token_vectors(self, batch: Sequence[Sequence[int]], threads: int | None = None) -> list[np.ndarray]:
        """Each sequence's last hidden states, (T_i, E) float32, unpooled (TEI's /embed_all)."""
        if self.info.kind != EMBEDDING:
            raise ModelError(f"{self.info.name} is a {self.info.kind} ({self.info.architecture}): it scores pairs")
        if self.device.type == "cpu":
            hidden = self._on_cpu(lambda: self._forward(self.prepare(batch)).float().numpy(), batch, threads)
        else:
            hidden = self._forward(self.prepare(batch).to(self.device)).float().cpu().numpy()  # (T, E) in order
        return np.split(hidden, np.cumsum([len(ids) for ids in batch])[:-1])

    def embed(
        self, batch: Sequence[Sequence[int]], dimensions: int | None = None, max_batch_tokens: int = 16384
    ) -> np.ndarray:
        """Embed any number of inputs, in length-sorted sub-batches of at most `max_batch_tokens` padded tokens."""
        if self.info.kind != EMBEDDING:
            raise ModelError(f"{self.info.name} is a {self.info.kind} ({self.info.architecture}): it scores pairs")
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

    # ---- cross-encoders ---------------------------------------------------------------------------------------
    def tokenize_pairs(
        self,
        query: str,
        documents: Sequence[str],
        truncate: bool,
        truncation_direction: str = "right",
        max_tokens: int | None = None,
        doc_tokens: int | None = None,
    ) -> list[Pair]:
        """(query, document) pairs as the model's pair template lays them out. A pair over `max_tokens` (default: the
        model's input limit) is cut longest-first (sentence-transformers' CrossEncoder; from the texts' ends, or their
        starts with `truncation_direction="left"`, TEI's option) when `truncate`, else PairTooLong naming the
        document. `doc_tokens` first cuts each document to that many of its own tokens (Cohere's
        max_tokens_per_doc)."""
        if self.tokenizer is None:
            raise ModelError(f"{self.info.name} has no tokenizer.json")
        limit = self.info.max_input_tokens if max_tokens is None else min(max_tokens, self.info.max_input_tokens)
        pairs = self.tokenizer.pairs(query, documents, doc_tokens=doc_tokens)
        over = [i for i, p in enumerate(pairs) if len(p) > limit]
        if over and not truncate:
            raise PairTooLong(over[0], len(pairs[over[0]]), limit)
        if over:
            left = truncation_direction == "left"
            specials = self.tokenizer.pair_specials
            if limit < specials:  # `tokenizers` would leave the pair whole
                raise InputError(f"a pair cannot be cut to {limit} tokens: the pair template alone takes {specials}")
            cut = self.tokenizer.pairs(query, [documents[i] for i in over], limit, left, doc_tokens)
            for i, pair in zip(over, cut):
                pairs[i] = pair
        return pairs

    def score(self, pairs: Sequence[Pair], threads: int | None = None) -> np.ndarray:
        """Raw fp32 logits, (N,), of tokenised pairs, packed like any batch (token types where the model has them)."""
        if self.info.kind != RERANKER:
            raise ModelError(f"{self.info.name} is an {self.info.kind} model ({self.info.architecture}): it cannot "
                             "score pairs")
        if not pairs:
            return np.empty(0, dtype=np.float32)
        types = [p.token_types for p in pairs] if getattr(self.spec.arch, "type_vocab_size", 0) > 1 else None
        return self.pooled([p.ids for p in pairs], types, threads)[:, 0]

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """The model's score activation (sentence-transformers' rule: its metadata, else Sigmoid), in fp32."""
        if self._activation is None:
            raise ModelError(f"{self.info.name} is an {self.info.kind} model: it has no score activation")
        with torch.inference_mode():
            return self._activation(torch.as_tensor(np.asarray(logits, dtype=np.float32))).numpy()

    def warmup(self) -> None:
        """Run a few shapes once so the first request does not pay for allocator growth or compilation."""
        for length in (8, 64):
            self.pooled([[1] * min(length, self.info.max_input_tokens)] * 2)
        self.pooled([[1] * min(16, self.info.max_input_tokens)])  # a lone short input: the compiled path, if any

    @staticmethod
    def is_out_of_memory(exc: BaseException) -> bool:
        return isinstance(exc, torch.OutOfMemoryError)
