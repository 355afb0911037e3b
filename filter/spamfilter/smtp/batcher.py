"""Micro-batching: many SMTP sessions, one model, an event loop that never blocks.

Sessions ``await batcher.score(raw)``. One worker task takes every message waiting (up
to ``max_batch``) and runs the scorer on them in a worker thread, up to ``workers``
batches at once: one where a model run uses every core through its runtime's threads
(two would only fight over them), one per core where each run keeps to one thread (the
daemon's ``model_runs``). It never waits for a batch to fill: when the model is
idle, a message that arrives is scored at once (one client pays no batching delay), and
while the model is busy, arriving messages queue and form the next batch (under load,
batches fill by themselves).
The queue is bounded: when it is full, ``score`` raises ``Overloaded`` at once, which
the handler turns into 451 so the MTA retries later (back-pressure, never a drop).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Generic, TypeVar

from spamfilter.config import FilterConfig

log = logging.getLogger(__name__)

R = TypeVar("R")  # what the batch function gives per message: a score, an explanation


class Overloaded(RuntimeError):
    """The scoring queue is full."""


class MicroBatcher(Generic[R]):
    """Collects messages into batches for ``score_batch`` (e.g. ``Classifier.score_raw``)."""

    def __init__(
        self,
        score_batch: Callable[[Sequence[bytes]], list[R]],
        max_batch: int = FilterConfig.batch_size,
        queue_size: int = FilterConfig.queue_size,
        on_batch: Callable[[int, float], None] = lambda size, seconds: None,
        workers: int = 1,
    ) -> None:
        self._score_batch = score_batch
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._queue: asyncio.Queue[tuple[bytes, asyncio.Future[R]]] = asyncio.Queue(queue_size)
        self._workers = workers
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="scorer")
        self._worker: asyncio.Task[None] | None = None
        self._callers = 0  # score() calls not yet answered

    @property
    def depth(self) -> int:
        """Messages waiting for the model."""
        return self._queue.qsize()

    @property
    def running(self) -> bool:
        return self._worker is not None and not self._worker.done()

    def start(self) -> None:
        self._worker = asyncio.get_running_loop().create_task(self._run(), name="batcher")

    async def score(self, raw: bytes) -> R:
        """P(spam) of ``raw``; raises Overloaded, or whatever the scorer raised."""
        self._callers += 1
        try:
            future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
            try:
                self._queue.put_nowait((raw, future))
            except asyncio.QueueFull:
                raise Overloaded(
                    f"{self._queue.maxsize} messages already wait for the model"
                ) from None
            return await future
        finally:
            self._callers -= 1

    async def retire(self, poll: float = 0.05) -> None:
        """Answer every caller (the scorer still runs), then close: for a batcher whose model
        was replaced on SIGHUP while new messages go to its successor. ``poll``: seconds.
        """
        # Callers that took this batcher before its replacement were scheduled before this
        # task, so they are in score() by the time it first looks.
        await asyncio.sleep(0)
        while self._callers:
            await asyncio.sleep(poll)
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the worker (failing what still waits) and the scoring thread."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        while not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(RuntimeError("the filter is shutting down"))
        self._executor.shutdown(wait=True)

    async def _run(self) -> None:
        """Up to ``workers`` batches in the scorer at once, each taken when a worker frees."""
        free = asyncio.Semaphore(self._workers)
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                await free.acquire()
                batch = await self._collect()
                task = asyncio.get_running_loop().create_task(self._score(batch))
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                task.add_done_callback(lambda _: free.release())
        finally:
            for task in in_flight:
                task.cancel()

    async def _score(self, batch: list[tuple[bytes, asyncio.Future[R]]]) -> None:
        live = [(raw, future) for raw, future in batch if not future.done()]
        if not live:  # every sender gave up (timeout, lost connection)
            return
        started = time.perf_counter()
        try:
            scores = await asyncio.get_running_loop().run_in_executor(
                self._executor, self._score_batch, [raw for raw, _ in live]
            )
            results = list(zip(live, scores, strict=True))
        except Exception as error:
            log.exception("scoring a batch of %d failed", len(live))
            for _, future in live:
                if not future.done():
                    future.set_exception(error)
            return
        self._on_batch(len(live), time.perf_counter() - started)
        for (_, future), score in results:
            if not future.done():
                future.set_result(score)

    async def _collect(self) -> list[tuple[bytes, asyncio.Future[R]]]:
        """The next batch: the first message to arrive, and those already waiting with it."""
        batch = [await self._queue.get()]
        while len(batch) < self.max_batch and not self._queue.empty():
            batch.append(self._queue.get_nowait())
        return batch
