"""The encoders: one file per architecture, the packed batches they run on, and the Encoder that serves them.

Importing this package, before torch loads, makes OpenMP's idle threads sleep instead of spin (`OMP_WAIT_POLICY`
passive, unless the environment sets it or `GOMP_SPINCOUNT`). libgomp's default spins a thread ~300,000 times after
each parallel region; in this VM a spin costs ~1-3 us (the hypervisor traps the pause loop), so after every forward on
two threads the idle helper burnt ~200 ms of a core the event loop and the client needed (2-vCPU Zen 4, 16-token
forwards 50 ms apart: 214 ms CPU per forward at the default, 11-13 ms passive; best wall 8.2 ms passive vs 65 ms
default, 10-11 ms at a spin count of 1,000, 70 ms at 10,000; load average 8-10). libgomp reads it once, when torch
loads, so the server, the CLI and the bench's runner import `model` first.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["OMP_WAIT_POLICY"] = "passive"
