"""Cross-request dynamic batching: requests arriving within ``max_wait_ms`` (or until ``max_batch`` items)
go through one reward-model call in a worker thread, and the results are split back per request.

Requests of one kind share a call (score, or compare with the same instruction and debias setting). Images
equal in pixels are handed to the model as one object, so the encoder decodes and the engine encodes each
distinct image once per call, whichever request sent it. A bad item found only by the model (rare: requests
are validated before they queue) fails its own request: the call is repeated request by request.
"""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable

from ..errors import InputError
from .metrics import Metrics
from .protocol import DecodedImage


class QueueFull(Exception):
    """The batcher's queue holds ``queue_size`` requests already."""


@dataclass
class Job:
    """One request's items: ``columns`` holds one list of images per media column (1: score, 2: compare)."""

    key: tuple
    columns: list[list[DecodedImage]]
    prompts: list[str]
    future: asyncio.Future = field(default=None)


#: runs one batch: (key, columns of PIL images, prompts) -> one float per item
RunBatch = Callable[[tuple, list[list], list[str]], list[float]]


class Batcher:
    """Collects jobs into batches and runs each batch in a worker thread, one batch at a time.

    Args:
        run_batch: the model call for one batch of items of one key.
        max_batch: the most items a batch collects (a single larger request runs whole).
        max_wait_ms: how long the first job of a batch waits for others.
        queue_size: the most jobs waiting; more raise ``QueueFull``.
        metrics: where engine calls, batch sizes and the queue depth are counted.
    """

    def __init__(self, run_batch: RunBatch, max_batch: int, max_wait_ms: float, queue_size: int, metrics: Metrics):
        self.run_batch, self.max_batch, self.max_wait = run_batch, max_batch, max_wait_ms / 1000
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=queue_size)
        self.metrics = metrics
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        """Finish the jobs already queued, then stop."""
        await self.queue.join()
        if self._task is not None:
            self._task.cancel()

    async def submit(self, job: Job, wait_s: float = 0.0) -> list[float]:
        """Queue ``job`` and wait for its scores.

        Args:
            job: the request's items.
            wait_s: how long to wait for room in a full queue (0: raise ``QueueFull`` at once).
        Returns:
            One float per item, in order.
        Raises:
            QueueFull: no room within ``wait_s``.
            InputError: an item of this request was bad.
        """
        job.future = asyncio.get_running_loop().create_future()
        try:
            if wait_s > 0:
                await asyncio.wait_for(self.queue.put(job), wait_s)
            else:
                self.queue.put_nowait(job)
        except (asyncio.QueueFull, asyncio.TimeoutError):
            raise QueueFull(f"the queue holds {self.queue.maxsize} requests") from None
        self.metrics.queue_depth.set(self.queue.qsize())
        return await job.future

    async def _collect(self) -> list[Job]:
        jobs = [await self.queue.get()]
        items = len(jobs[0].prompts)
        deadline = asyncio.get_running_loop().time() + self.max_wait
        while items < self.max_batch:
            left = deadline - asyncio.get_running_loop().time()
            if left <= 0 and self.queue.empty():
                break
            try:
                job = self.queue.get_nowait() if left <= 0 else await asyncio.wait_for(self.queue.get(), left)
            except (asyncio.TimeoutError, asyncio.QueueEmpty):
                break
            jobs.append(job)
            items += len(job.prompts)
        self.metrics.queue_depth.set(self.queue.qsize())
        return jobs

    async def _loop(self) -> None:
        while True:
            jobs = await self._collect()
            groups: dict[tuple, list[Job]] = {}
            for job in jobs:
                groups.setdefault(job.key, []).append(job)
            for key, group in groups.items():
                try:
                    outcomes = await asyncio.to_thread(self._run_group, key, group)
                except Exception as err:  # a bug or a device error: every request of the group hears of it
                    outcomes = [err] * len(group)
                for job, outcome in zip(group, outcomes):
                    if job.future.done():  # the client went away
                        continue
                    if isinstance(outcome, Exception):
                        job.future.set_exception(outcome)
                    else:
                        job.future.set_result(outcome)
            for _ in jobs:
                self.queue.task_done()

    def _call(self, key: tuple, jobs: list[Job]) -> list[list[float]]:
        """One model call for ``jobs``; images equal in pixels become one object."""
        canonical: dict[str, object] = {}
        n_columns = len(jobs[0].columns)
        columns = [[canonical.setdefault(d.key, d.image) for job in jobs for d in job.columns[c]]
                   for c in range(n_columns)]
        prompts = [p for job in jobs for p in job.prompts]
        self.metrics.engine_calls.inc()
        self.metrics.batch_items.observe(len(prompts))
        self.metrics.batch_requests.observe(len(jobs))
        scores = self.run_batch(key, columns, prompts)
        out, start = [], 0
        for job in jobs:
            out.append(scores[start : start + len(job.prompts)])
            start += len(job.prompts)
        return out

    def _run_group(self, key: tuple, jobs: list[Job]) -> list:
        try:
            return self._call(key, jobs)
        except InputError:
            if len(jobs) == 1:
                raise
        outcomes = []  # some request holds an item only the model refuses: find it by running each alone
        for job in jobs:
            try:
                outcomes.append(self._call(key, [job])[0])
            except InputError as err:
                outcomes.append(err)
        return outcomes
