"""How many intra-op threads rdfast scores with on CPU: the cores nobody else is using right now.

Policy (``scoring_threads``), first that applies:
1. an explicit ``threads`` argument;
2. the environment variable ``RDFAST_NUM_THREADS`` (a positive integer; ``0`` or ``torch`` leaves torch's own
   setting alone);
3. ``min(torch.get_num_threads(), cores we may run on - other runnable tasks)``, at least 1.

Why: an intra-op thread that shares its core with another busy process waits at every barrier for its
time slice, so with co-located work (a trainer beside its reward model) two threads on two cores run many
times slower than one. "Other runnable tasks" is the instantaneous count of running tasks in /proc/loadavg
minus our own running threads (the 1-minute load average lags a new co-runner by a minute); where /proc is
absent it falls back to the 1-minute load average. Cores we may run on: ``os.sched_getaffinity``.
"""
from __future__ import annotations

import contextlib
import os

import torch

ENV_VAR = "RDFAST_NUM_THREADS"


def free_cores(cores: int, others_running: float) -> int:
    """Cores left when ``others_running`` tasks (rounded to the nearest whole task) hold one each; at least 1."""
    return max(1, cores - max(0, int(round(others_running))))


def choose_threads(torch_threads: int, cores: int, others_running: float, override: str | int | None = None) -> int:
    """The policy as pure logic (tests inject the values): an override wins, else the free cores, capped at
    torch's thread count. ``override``: a positive int (or its text), or 0 / "0" / "torch" for torch's own."""
    if override is not None and str(override).strip() != "":
        text = str(override).strip().lower()
        if text in ("0", "torch"):
            return torch_threads
        try:
            n = int(text)
        except ValueError:
            raise ValueError(f"{ENV_VAR} must be a positive integer, 0 or 'torch', got {override!r}") from None
        if n < 0:
            raise ValueError(f"{ENV_VAR} must be a positive integer, 0 or 'torch', got {override!r}")
        return n or torch_threads
    return max(1, min(torch_threads, free_cores(cores, others_running)))


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _own_running_threads() -> int:
    """Threads of this process in state R (the reader itself is one)."""
    running = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            with open(f"/proc/self/task/{tid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "R":
                    running += 1
    except (OSError, IndexError):
        return 1
    return max(1, running)


def others_running() -> float:
    """Tasks running or runnable now that are not ours (/proc/loadavg), else the 1-minute load average."""
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        return max(0, running - _own_running_threads())
    except (OSError, IndexError, ValueError):
        return os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0


def scoring_threads(threads: int | None = None) -> int:
    """Intra-op threads for one CPU scoring call under the policy above."""
    override = threads if threads is not None else os.environ.get(ENV_VAR)
    return choose_threads(torch.get_num_threads(), _cores(), others_running(), override)


@contextlib.contextmanager
def cpu_scoring_threads(device: torch.device, threads: int | None = None):
    """Run the block with ``scoring_threads(threads)`` intra-op threads when ``device`` is a CPU; torch's
    setting is restored afterwards (nested blocks restore in order). Other devices: nothing changes. With
    OpenMP builds the setting is per calling thread, so server workers each follow the policy on their own."""
    if torch.device(device).type != "cpu":
        yield None
        return
    before = torch.get_num_threads()
    n = scoring_threads(threads)
    if n != before:
        torch.set_num_threads(n)
    try:
        yield n
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
