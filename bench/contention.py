"""Co-runners for measuring under contention: N single-threaded busy-loop processes beside the benchmark.

    with co_runners(1) as pids:   # one process spinning on one core until the block ends
        ...

RL users co-locate reward models with training, so a benchmark should also report the shared-core case.
Each co-runner is a pure-Python spin loop (one thread, no torch/numpy threads), stopped when the block
ends, on exceptions and Ctrl-C alike; each also exits by itself if its parent dies (it checks its parent's
pid), so no stray process outlives the benchmark.
"""
from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal


def _spin(parent: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us; Ctrl-C goes to it
    x = 0
    while True:
        for _ in range(200_000):
            x += 1
        if os.getppid() != parent:  # orphaned: the benchmark was killed
            return


@contextlib.contextmanager
def co_runners(n: int):
    """Start ``n`` busy-loop processes for the block; yields their pids; stops them all afterwards."""
    if n < 0:
        raise ValueError(f"--contention must be 0 or more, got {n}")
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    procs = []
    try:
        for _ in range(n):
            p = ctx.Process(target=_spin, args=(os.getpid(),), daemon=True)
            p.start()
            procs.append(p)
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.join(5)
            if p.is_alive():
                p.kill()
                p.join(5)
