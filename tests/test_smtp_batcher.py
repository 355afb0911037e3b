"""The micro-batcher (``smtp.batcher``): batches, back-pressure, scorer errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

from spamfilter.smtp.batcher import MicroBatcher, Overloaded


class GatedScorer:
    """A scorer that records the batch sizes it is called with and holds each batch until
    ``release`` is set; ``entered`` is set once a batch is in it."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def __call__(self, messages):
        self.entered.set()
        self.release.wait(5)
        self.batches.append(len(messages))
        return [len(raw) / 10 for raw in messages]


async def _yield_to_the_loop(times: int = 3) -> None:
    for _ in range(times):  # no time passes: other ready tasks (the batcher) run
        await asyncio.sleep(0)


def test_a_lone_message_goes_to_an_idle_model_at_once():
    """B arrives a few loop turns after A: A is already in the model, so B is not in A's batch
    (a batcher that waited for a batch to fill, as batch_wait_ms did, scored them together)."""
    scorer = GatedScorer()

    async def scenario():
        batcher = MicroBatcher(scorer, max_batch=4)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(b"a"))
        await _yield_to_the_loop()
        second = asyncio.ensure_future(batcher.score(b"bb"))
        await _yield_to_the_loop()
        scorer.release.set()
        results = await asyncio.gather(first, second)
        await batcher.aclose()
        return results

    assert asyncio.run(scenario()) == [0.1, 0.2]
    assert scorer.batches == [1, 1]


def test_messages_arriving_while_the_model_is_busy_form_the_next_batch_and_overload_451s():
    scorer = GatedScorer()

    async def scenario():
        batcher = MicroBatcher(scorer, max_batch=4, queue_size=5)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(b"x"))
        await asyncio.get_running_loop().run_in_executor(None, scorer.entered.wait, 5)
        waiting = [asyncio.ensure_future(batcher.score(b"y" * n)) for n in range(1, 6)]
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await batcher.score(b"one too many")
        scorer.release.set()
        results = await asyncio.gather(first, *waiting)
        await batcher.aclose()
        return results

    assert asyncio.run(scenario()) == [0.1, 0.1, 0.2, 0.3, 0.4, 0.5]
    assert scorer.batches == [1, 4, 1]  # batches of at most max_batch


@pytest.mark.parametrize("workers", [1, 2])
def test_with_two_workers_a_batch_is_scored_while_another_is_in_the_model(workers):
    """Two lone messages, the first still in the scorer when the second arrives: with two
    workers both are inside at once; with one, the second waits (and the barrier breaks)."""
    both_inside = threading.Barrier(2, timeout=2)

    def scorer(messages):
        both_inside.wait()
        return [0.5] * len(messages)

    async def scenario():
        batcher = MicroBatcher(scorer, max_batch=4, workers=workers)
        batcher.start()
        first = asyncio.ensure_future(batcher.score(b"a"))
        await _yield_to_the_loop()
        second = asyncio.ensure_future(batcher.score(b"b"))
        results = await asyncio.gather(first, second, return_exceptions=True)
        await batcher.aclose()
        return results

    results = asyncio.run(scenario())
    if workers == 2:
        assert results == [0.5, 0.5]
    else:
        assert all(isinstance(result, threading.BrokenBarrierError) for result in results)


def test_batcher_passes_scorer_errors_to_every_waiting_message():
    def broken(messages):
        raise RuntimeError("model crashed")

    async def scenario():
        batcher = MicroBatcher(broken, max_batch=2)
        batcher.start()
        results = await asyncio.gather(
            batcher.score(b"a"), batcher.score(b"b"), return_exceptions=True
        )
        assert batcher.running  # the worker survives a failing batch
        await batcher.aclose()
        return results

    assert [str(result) for result in asyncio.run(scenario())] == ["model crashed"] * 2


def test_a_retired_batcher_answers_what_it_was_handed_then_stops():
    """A model replaced on SIGHUP: messages already handed to its batcher (one in the model,
    more queued, one whose task has not started yet) all get its scores; then it closes."""
    release = threading.Event()

    def score(messages):
        release.wait(5)
        return [0.25] * len(messages)

    async def scenario():
        batcher = MicroBatcher(score, max_batch=2)
        batcher.start()
        in_model = asyncio.ensure_future(batcher.score(b"a"))
        await asyncio.sleep(0.05)
        queued = [asyncio.ensure_future(batcher.score(b"b")) for _ in range(3)]
        await asyncio.sleep(0)
        not_started = asyncio.ensure_future(batcher.score(b"c"))  # runs after retire begins
        retiring = asyncio.ensure_future(batcher.retire(poll=0.01))
        await asyncio.sleep(0.05)
        assert not retiring.done()  # it waits for its callers
        release.set()
        results = await asyncio.gather(in_model, *queued, not_started)
        await asyncio.wait_for(retiring, 5)
        return results, batcher.running

    results, running = asyncio.run(scenario())
    assert results == [0.25] * 5
    assert not running
