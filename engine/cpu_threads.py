"""How an engine process waits between parallel regions of its CPU kernels.

torch's CPU kernels run on OpenMP. When a parallel region ends, the threads that are done wait for the others;
libgomp's default wait spins first (GOMP_SPINCOUNT, 300,000 iterations when OMP_WAIT_POLICY is unset: libgomp
manual, "GOMP_SPINCOUNT"). A spinning thread holds a core that the thread it waits for may need: when QGIS, a
bulk run or a second engine has taken a core, each of the ~50 products of a decode step waits on the scheduler
and decoding collapses. `OMP_WAIT_POLICY=PASSIVE` (OpenMP 5.2 specification, "OMP_WAIT_POLICY"; read by libgomp,
LLVM's libomp and Intel's) makes waiting threads sleep and give the core back.

Measured on 2 shared cores (`bench/bench_threads.py`, docs/benchmarks.md; decode tokens/s, batch 1, with 0 / 1 / 2
other processes spinning): libgomp's default 56.3 / 19.1 / 8.0, PASSIVE 49.0 / 36.8 / 22.4, a short spin
(GOMP_SPINCOUNT=10000) 53.7 / 17.8 / 21.2. Passive waiting costs 13 % on an idle machine (a sleeping thread takes
time to wake) and is 1.9x and 2.8x faster beside one or two busy processes; an engine beside QGIS is the case it
is made for, so it is the default, and a user's own setting of any wait variable wins. The compiled CPU decode
step (models/cpu_decode_step.py) runs its threads on numba's TBB layer where the `tbb` wheel is installed, whose
workers spin briefly and then sleep (79.5 / 61.8 / 34.3 tokens/s, against 69.5 / 59.4 / 44.2 on numba's OpenMP
layer with the passive wait and 77.7 / 25.3 / 22.4 spinning); the wait set here then governs torch's encoder and
prefill, and the step where TBB is absent.

The runtime reads the policy once, when torch's library is loaded, so it must be in the environment before
`import torch`: `geovlm`'s command line (every engine process, `geovlm serve` included) calls
`use_passive_wait()` first.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import MutableMapping, Optional

log = logging.getLogger(__name__)

# Set by the user or the machine: any of these means the wait was chosen on purpose and is left alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")


def use_passive_wait(environ: Optional[MutableMapping[str, str]] = None) -> bool:
    """Set OMP_WAIT_POLICY=PASSIVE in `environ` (default: this process's) unless a wait variable
    (`WAIT_VARIABLES`) is already set. Returns whether it was set. In this process it takes effect only if torch
    is not imported yet (a warning in the log otherwise)."""
    env = os.environ if environ is None else environ
    if any(name in env for name in WAIT_VARIABLES):
        return False
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    if environ is None and "torch" in sys.modules:
        log.warning("torch was imported before OMP_WAIT_POLICY was set: its threads keep libgomp's spinning wait")
    return True
