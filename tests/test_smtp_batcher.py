"""The micro-batcher (``smtp.batcher``): batches, back-pressure, scorer errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

from spamfilter.smtp.batcher import MicroBatcher, Overloaded


def test_batcher_batches_waiting_messages_and_reports_overload():
    release = threading.Event()
    batches = []

    def score(messages):
        release.wait(5)
        batches.append(len(messages))
        return [len(raw) / 10 for raw in messages]

    async def scenario():
        batcher = MicroBatcher(score, max_batch=4, max_wait=0.05, queue_size=5)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(b"x"))
        await asyncio.sleep(0.1)  # the first batch (of one) is in the model
        waiting = [asyncio.ensure_future(batcher.score(b"y" * n)) for n in range(1, 6)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.score(b"one too many")
        release.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.aclose()
        return results

    assert asyncio.run(scenario()) == [0.1, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert batches == [1, 4, 1]


def test_batcher_passes_scorer_errors_to_every_waiting_message():
    def broken(messages):
        raise RuntimeError("model crashed")

    async def scenario():
        batcher = MicroBatcher(broken, max_batch=2, max_wait=0.01)
        batcher.start()
        results = await asyncio.gather(
            batcher.score(b"a"), batcher.score(b"b"), return_exceptions=True
        )
        assert batcher.running  # the worker survives a failing batch
        await batcher.aclose()
        return results

    assert [str(result) for result in asyncio.run(scenario())] == ["model crashed"] * 2
