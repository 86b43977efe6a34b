"""Cached stages with dependencies, run in worker processes side by side (one thread each), longest path first.

The same list-scheduling rule plans (``makespan``, for a budget's estimate) and runs (``run_parallel``): whenever a
worker is free it takes the ready task with the longest chain of estimated work still behind it. A task is any
hashable; ``job(task, *args)`` must be a module-level function (workers are spawned processes) that leaves its
result in its stage cache, so the caller reads results back after the run.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait


def _check(costs: dict, deps: dict) -> None:
    for task, before in deps.items():
        missing = set(before) - set(costs)
        if task not in costs or missing:
            raise ValueError(f"task {task!r} or its dependencies {sorted(map(str, missing))} have no cost")


def ranks(costs: dict, deps: dict) -> dict:
    """Each task's own cost plus the longest chain of tasks that wait for it (the priority)."""
    _check(costs, deps)
    after = {t: [u for u in costs if t in deps.get(u, ())] for t in costs}
    memo: dict = {}

    def rank(task, seen=()):
        if task in seen:
            raise ValueError(f"dependency cycle through {task!r}")
        if task not in memo:
            memo[task] = costs[task] + max((rank(u, seen + (task,)) for u in after[task]), default=0.0)
        return memo[task]

    return {t: rank(t) for t in costs}


def _ready(pending, done, deps, priority):
    return sorted((t for t in pending if set(deps.get(t, ())) <= done), key=lambda t: (-priority[t], str(t)))


def makespan(costs: dict, deps: dict, workers: int) -> float:
    """Seconds until every task ends with ``workers`` side by side, tasks taking their ``costs``."""
    priority = ranks(costs, deps)
    pending, done, running, now = set(costs), set(), [], 0.0  # running: (end time, task)
    while pending or running:
        for task in _ready(pending, done, deps, priority)[: workers - len(running)]:
            pending.discard(task)
            running.append((now + costs[task], task))
        running.sort(key=lambda r: (r[0], str(r[1])))
        now, task = running.pop(0)
        done.add(task)
    return now


def _one_thread():
    import torch

    torch.set_num_threads(1)


def run_parallel(job, costs: dict, deps: dict, workers: int, *args) -> None:
    """Run ``job(task, *args)`` for every task of ``costs`` once its ``deps`` are done, ``workers`` processes side
    by side (torch on one thread each). A failing job stops the run with its error once running jobs end."""
    priority = ranks(costs, deps)
    pending, done = set(costs), set()
    context = multiprocessing.get_context("spawn")  # fork would copy the parent's torch threads and locks
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_one_thread) as pool:
        running = {}
        while pending or running:
            for task in _ready(pending, done, deps, priority)[: workers - len(running)]:
                pending.discard(task)
                running[pool.submit(job, task, *args)] = task
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                task = running.pop(future)
                future.result()  # re-raises the job's error here
                done.add(task)
