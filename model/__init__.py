"""The encoders: one file per architecture, the packed batches they run on, and the Encoder that serves them.

Importing this package, before torch loads, bounds how long OpenMP's idle threads spin (`GOMP_SPINCOUNT` 1000, unless
the environment sets it or `OMP_WAIT_POLICY`). libgomp's default spins a thread 300,000 times after each parallel
region; in this VM a spin costs ~1.5 us (the hypervisor traps the pause loop), so after every forward on two threads
the idle helper burnt ~200 ms of the core the event loop and the client needed. 1,000 spins (~1.5 ms here, microseconds
on bare metal) still bridge the gaps between one forward's ops; a sleeping thread (`passive`) must be woken for each
op instead. Measured on the 2-vCPU Zen 4 at load average 8-11 (noisy): 16-token forwards 50 ms apart, CPU per forward
214 ms at the default, 12-14 ms at 1,000, 11-13 ms passive; an idle server's fastest request 11.6 ms at 1,000 vs
16.3 ms passive and 17.0 ms at 10,000. libgomp reads it once, when torch loads, so the server, the CLI and the bench's
runner import `model` first.
"""

import os

if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = "1000"
