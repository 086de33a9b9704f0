"""Runner for our encoder (the project's own venv, PYTHONPATH = the repository). Speaks `common.serve`."""

from __future__ import annotations

import platform
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common
import torch

from model import cpu_linear
from model.encoder import Encoder

HUGE = 1 << 40  # a max_batch_tokens that never splits: the bench decides the batches
state: dict = {}


def load(model: str, dtype: str = "float32", compile: bool = False, threads: int | None = None,
         linears: str = "auto", device: str = "cpu", cpu_aot_dir: str | None = None) -> dict:
    if linears == "aten":  # fast-path experiment: keep nn.Linear whatever the timing says
        cpu_linear.install = lambda model, **_: "aten"
    enc = Encoder.load(model, device=device, dtype=dtype, compile=compile, threads=threads, cpu_aot_dir=cpu_aot_dir)
    state["enc"] = enc
    return {
        "device": enc.info.device,
        "gpu": torch.cuda.get_device_name(enc.device) if enc.device.type == "cuda" else None,
        "packed_attention": enc.info.packed_attention,
        "dtype": enc.info.dtype,
        "threads": enc.threads,
        "compile": compile,
        "linear_kernel": enc.linear_kernel,
        "cpu_aot_package": str(enc.cpu_aot_package) if enc.cpu_aot_package else None,
        "versions": {"python": platform.python_version(), **common.versions("torch", "tokenizers", "numpy")},
    }


def _enc() -> Encoder:
    return state["enc"]


def embed_texts(texts: list[str]) -> dict:
    enc = _enc()
    return {"vectors": enc.embed(enc.tokenize(texts), max_batch_tokens=HUGE).tolist()}


def embed_ids(batch: list[list[int]]) -> dict:
    return {"vectors": _enc().embed(batch, max_batch_tokens=HUGE).tolist()}


def time_texts(texts: list[str], batch_size: int, warmup: int, reps: int, max_s: float) -> dict:
    """Text in, normalised vectors out, `batch_size` texts per forward. Like sentence-transformers' encode(), the
    texts are first sorted longest first (by characters) and cut into batches in that order."""
    enc = _enc()
    ordered = sorted(texts, key=len, reverse=True)
    chunks = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]

    def run() -> None:
        for chunk in chunks:
            enc.embed(enc.tokenize(chunk), max_batch_tokens=HUGE)

    times = common.timed(run, warmup, reps, max_s)
    tokens = sum(len(ids) for ids in enc.tokenize(texts))
    return {"times": times, "tokens": tokens, "n": len(texts)}


def time_ids(batches: list[list[list[int]]], warmup: int, reps: int, max_s: float) -> dict:
    """Token ids in, one forward per given batch (no re-batching), normalised vectors out."""
    enc = _enc()
    return common.time_batches(lambda batch: enc.embed(batch, max_batch_tokens=HUGE), batches, warmup, reps, max_s)


def _ranked_chunks(documents: list[str], batch_size: int) -> list[list[str]]:
    """Documents longest first (by characters), cut into batches: what CrossEncoder.predict does with pairs."""
    ordered = sorted(documents, key=len, reverse=True)
    return [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]


def score_pairs(query: str, documents: list[str]) -> dict:
    """A cross-encoder's scores (its activation applied) for the query against each document, in order."""
    enc = _enc()
    return {"scores": enc.activate(enc.score(enc.tokenize_pairs(query, documents, truncate=True))).tolist()}


def time_pairs(query: str, documents: list[str], batch_size: int, warmup: int, reps: int, max_s: float) -> dict:
    """Text in, scores out: tokenise the pairs, one forward per `batch_size` pairs, the activation."""
    enc = _enc()
    chunks = _ranked_chunks(documents, batch_size)

    def run() -> None:
        for chunk in chunks:
            enc.activate(enc.score(enc.tokenize_pairs(query, chunk, truncate=True)))

    times = common.timed(run, warmup, reps, max_s)
    tokens = sum(len(p) for p in enc.tokenize_pairs(query, documents, truncate=True))
    return {"times": times, "tokens": tokens, "n": len(documents)}


def _sync() -> None:
    if _enc().device.type == "cuda":
        torch.cuda.synchronize()


@torch.inference_mode()
def time_forward(batches: list[list[list[int]]], warmup: int, reps: int, max_s: float) -> dict:
    """The model's forward alone on packed batches already on the device (no tokenizer, no copies, no pooling),
    until the device is done. Also what the batches would cost padded, for the padded/real figure."""
    enc = _enc()
    packed = [enc.prepare(b).to(enc.device) for b in batches]

    def run() -> None:
        for p in packed:
            enc.model(p)
        _sync()

    times = common.timed(run, warmup, reps, max_s)
    lengths = [len(s) for b in batches for s in b]
    padded = sum(len(b) * max(len(s) for s in b) for b in batches)
    return {"times": times, "tokens": sum(lengths), "n": len(lengths), "padded_tokens": padded,
            "packed_attention": enc.info.packed_attention}


@torch.inference_mode()
def gemm_ceiling(tokens: int, warmup: int, reps: int, max_s: float) -> dict:
    """The model's linear layers alone (every nn.Linear, its own weight, in order) on `tokens` rows of activations:
    what a forward would take if nothing but its matmuls ran. tokens / time is the forward's ceiling."""
    enc = _enc()
    linears = [m for m in enc.model.modules() if isinstance(m, torch.nn.Linear)]
    if not linears:
        raise RuntimeError("no nn.Linear left in the model (CPU: load with linears='aten')")
    inputs = {m.in_features: torch.randn(tokens, m.in_features, device=enc.device, dtype=enc.dtype) for m in linears}

    def run() -> None:
        for m in linears:
            torch.nn.functional.linear(inputs[m.in_features], m.weight, m.bias)
        _sync()

    times = common.timed(run, warmup, reps, max_s)
    flops = sum(2.0 * tokens * m.in_features * m.out_features for m in linears)
    return {"times": times, "tokens": tokens, "linears": len(linears), "flops": flops}


def flops(lengths: list[int]) -> dict:
    """Matmul FLOPs of one forward over sequences of these lengths (the model's own count)."""
    model = _enc().model
    return {"flops": float(sum(n * model.flops_per_token(n) for n in lengths))}


@torch.inference_mode()
def matmul_peak(n: int = 4096, dtype: str = "float32", max_s: float = 4.0, threads: int | None = None,
                device: str = "cpu") -> dict:
    """This machine's dense matmul rate on n x n operands: the better of torch.mm (MKL) and oneDNN's packed matmul
    (what our encoder may use, model/cpu_linear.py), best and median of the timed calls, and each kernel's best.
    On a GPU: torch.mm (cuBLAS) alone, each call waited for."""
    if threads:
        torch.set_num_threads(threads)
    dt = getattr(torch, dtype)
    a, b = torch.randn(n, n, dtype=dt, device=device), torch.randn(n, n, dtype=dt, device=device)
    out = torch.empty(n, n, dtype=dt, device=device)
    if device != "cpu":
        def mm() -> None:
            torch.mm(a, b, out=out)
            torch.cuda.synchronize()

        kernels = {"torch.mm": mm}
    else:
        kernels = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if device == "cpu" and cpu_linear.available():
        packed = cpu_linear.PackedLinear(torch.nn.Linear(n, n, bias=False, dtype=dt))
        kernels["onednn"] = lambda: packed(a)
    work = 2.0 * n**3
    timings = {name: common.timed(fn, warmup=1, reps=50, max_s=max_s / len(kernels), min_reps=3)
               for name, fn in kernels.items()}
    best = min(timings, key=lambda name: min(timings[name]))
    return {"best_flops": work / min(timings[best]), "median_flops": work / statistics.median(timings[best]),
            "kernel": best, "per_kernel_best_flops": {k: work / min(t) for k, t in timings.items()}, "n": n,
            "threads": torch.get_num_threads(), "reps": len(timings[best])}


if __name__ == "__main__":
    common.serve({"load": load, "embed_texts": embed_texts, "embed_ids": embed_ids, "time_texts": time_texts,
                  "time_ids": time_ids, "score_pairs": score_pairs, "time_pairs": time_pairs,
                  "time_forward": time_forward, "gemm_ceiling": gemm_ceiling, "flops": flops,
                  "matmul_peak": matmul_peak})
