"""A lone short input on CPU through an ahead-of-time compiled copy of the model (AOTInductor), opt-in.

Why: a 16-token forward is ~100 eager op calls around 24 small matmuls, and on CPU each call's dispatch and the cache
misses after every weight stream add up. AOTInductor exports the forward once, fuses the pointwise ops into the
linears around them (oneDNN matmuls with the bias, GELU and the residual add as post-ops) and runs the whole graph from
C++. Measured on a 2-vCPU Zen 4 EPYC, all-MiniLM-L6-v2, 1 x 16 tokens on 2 threads, processes in turns with ONNX
Runtime's forward: fp32 eager 4.8-5.4 ms best (p50 6.2-7.1), compiled 3.5-3.9 (p50 4.4-4.9), ORT 3.44; bf16 eager
2.7-3.5, compiled 2.3-2.7 (bench/README.md, the `ort` rows). Eager and compiled in one process, calls interleaved,
speed-up best at 16 / 32 / 48 / 64 tokens: fp32 1.24-1.45x / 1.10x / 1.09-1.20x / 1.11-1.16x (p50 1.16-1.30x), bf16
1.34x / 1.14x / 1.11x / 1.17x. Under trace, CPU attention is one SDPA op at every length (`packing.attend`), so the
graph has no branch at the eager path's 32-key switch.

What it covers: one sequence of 2 to `MAX_TOKENS` tokens with no token types (an idle server's single short
request, the latency case); every other forward stays eager, where packing already wins. The graph takes the token
count as a dynamic dimension, so one compiled package serves every length in that range.

Costs: a C++ compiler at the first load, ~25 s per model and dtype, after which the package is kept on disk
(`cache_dir`, keyed by everything the compiled code depends on) and loads in under a second; the package holds its own
copy of the weights (MiniLM fp32 88 MB). MoE models are not exported (data-dependent routing); a model that fails to
export or a machine without a compiler logs why and keeps eager forwards.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

from model.packing import PackedBatch, pack

log = logging.getLogger(__name__)

MAX_TOKENS = 64  # model/cold_start.py's small forwards: past it a forward spreads its work well and packing leads
MODEL_CODE = Path(__file__).parent


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "nomic-embed-server" / "cpu-aot"


class _OneSequence(nn.Module):
    """The model's forward on one packed sequence, from plain tensors (what export takes): (T,) ids and positions ->
    (T, E) hidden states."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, ids, positions, seq_index, lengths, cu_seqlens):
        n = ids.shape[0]
        return self.net(PackedBatch(ids, None, positions, seq_index, lengths, cu_seqlens, n, [n]))


def _args(packed: PackedBatch) -> tuple[torch.Tensor, ...]:
    return packed.input_ids, packed.positions, packed.seq_index, packed.lengths, packed.cu_seqlens


def _cpu_flags() -> str:
    """The instruction sets the compiled kernels were built for: a package built on another CPU is not reused."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_key(dtype: torch.dtype, state: dict[str, torch.Tensor]) -> str:
    """Everything the compiled package depends on: the weights (names, shapes and a sample of every tensor's values;
    not the model's name, so a folder and its hub id share one), the model code, the dtype, torch's version and the
    CPU's instruction sets."""
    h = hashlib.sha256()
    h.update(json.dumps([str(dtype), torch.__version__, _cpu_flags(), MAX_TOKENS]).encode())
    for file in sorted(MODEL_CODE.glob("*.py")):
        h.update(file.read_bytes())
    for name, tensor in state.items():
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 4096)].float().contiguous()
        h.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        h.update(sample.numpy().tobytes())
    return h.hexdigest()[:32]


class SmallForward:
    """`covers(packed)` says whether a forward can go through the compiled package; `__call__` runs it: (T, E)."""

    def __init__(self, runner, path: Path):
        self._runner, self.path = runner, path

    @staticmethod
    def covers(packed: PackedBatch) -> bool:
        return packed.batch_size == 1 and packed.token_type_ids is None and 2 <= packed.max_len <= MAX_TOKENS

    def __call__(self, packed: PackedBatch) -> torch.Tensor:
        return self._runner(*_args(packed))

    @classmethod
    def build(cls, net: nn.Module, source: str, cache_dir: Path) -> SmallForward | None:
        """Load the package for `net` (eval mode, on CPU in its dtype, plain nn.Linear layers) from `cache_dir`,
        compiling it first when it is not there. None, with the reason logged, when it cannot be built here."""
        from torch._inductor import aoti_compile_and_package, aoti_load_package

        dtype = next(net.parameters()).dtype
        path = cache_dir / f"{cache_key(dtype, net.state_dict())}.pt2"
        try:
            if not path.is_file():
                start = time.perf_counter()
                path.parent.mkdir(parents=True, exist_ok=True)
                tokens = torch.export.Dim("tokens", min=2, max=MAX_TOKENS)
                partial = path.with_name(f"{path.stem}.{os.getpid()}.partial.pt2")
                # freezing: the weights become constants, so the linears are packed for oneDNN inside the package
                # (outside inference mode they stayed aten addmm calls: 1.6x slower than the eager forward)
                with torch.inference_mode(), torch._inductor.config.patch(freezing=True):
                    # on a copy: tracing stores fake tensors in the modules' own caches (the rotary tables)
                    example = pack([list(range(MAX_TOKENS // 2))])  # ids below any vocabulary's size
                    exported = torch.export.export(_OneSequence(copy.deepcopy(net)).eval(), _args(example),
                                                   dynamic_shapes=({0: tokens}, {0: tokens}, {0: tokens}, None, None))
                    aoti_compile_and_package(exported, package_path=str(partial))
                partial.replace(path)  # whole or absent: two processes compiling at once both end with one package
                log.info("compiled %s's short CPU forward (%s) in %.0f s: %s", source, dtype,
                         time.perf_counter() - start, path)
            return cls(aoti_load_package(str(path)), path)
        except Exception as exc:  # noqa: BLE001 -- any failure here leaves the eager forward, which is always right
            log.warning("%s: no compiled short CPU forward (%s: %s); short inputs run eager", source,
                        type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
            return None
