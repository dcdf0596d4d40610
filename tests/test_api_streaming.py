"""webui.api.streaming.ready_batches: how the API hands a model's blocking stream to the
event loop: tokens that arrive while the consumer is busy leave together, errors come
after the items before them, and a consumer that stops early stops the model."""
from __future__ import annotations

import asyncio
import threading
from contextlib import aclosing

import pytest

from webui.api.streaming import coalesced_text, ready_batches


def _run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


def test_items_ready_together_come_as_one_batch():
    produced_three, go_on = threading.Event(), threading.Event()

    def model():
        yield from ("a", "b", "c")
        produced_three.set()  # the pump asks for the 4th item: a, b, c are handed over
        go_on.wait(10)
        yield from ("d", "e")

    async def consume():
        async with aclosing(ready_batches(model())) as batches:
            first = await anext(batches)  # starts the pump
            assert first[0] == "a"
            await asyncio.to_thread(produced_three.wait, 10)
            rest = [] if first == ["a", "b", "c"] else await anext(batches)
            go_on.set()
            later = [b async for b in batches]
        return first, rest, later

    first, rest, later = _run(consume())
    assert first + rest == ["a", "b", "c"]
    assert max(len(first), len(rest)) >= 2, "items that were waiting leave in one batch"
    assert [x for b in later for x in b] == ["d", "e"] and all(later)


def test_waiting_consumer_gets_everything_in_order_as_joined_text():
    async def consume():
        words = (f"w{i} " for i in range(500))
        return [t async for t in coalesced_text(words)]

    texts = _run(consume())
    assert "".join(texts) == "".join(f"w{i} " for i in range(500))
    assert all(texts)


def test_error_comes_after_the_items_before_it():
    def model():
        yield "x"
        yield "y"
        raise RuntimeError("CUDA out of memory")

    async def consume():
        got = []
        with pytest.raises(RuntimeError, match="CUDA out of memory"):
            async for batch in ready_batches(model()):
                got.extend(batch)
        return got

    assert _run(consume()) == ["x", "y"]


def test_consumer_stopping_early_closes_the_stream_in_the_pump_thread():
    closed_in = []
    produced = []

    def model():
        try:
            for i in range(10_000):
                produced.append(i)
                yield str(i)
                threading.Event().wait(0.001)  # a token a millisecond
        finally:
            closed_in.append(threading.current_thread().name)

    async def consume():
        async with aclosing(ready_batches(model())) as batches:
            await anext(batches)
        # aclose returned: the stream is closed already (the pump waited for it)
        return list(closed_in), len(produced)

    closed, n = _run(consume())
    assert closed == ["stream-pump"] and n < 100


def test_cancelled_consumer_still_closes_the_stream():
    closed = threading.Event()

    def model():
        try:
            while True:
                yield "t"
                threading.Event().wait(0.005)
        finally:
            closed.set()

    async def consume():
        async def reader():
            async for _ in ready_batches(model()):
                pass
        task = asyncio.create_task(reader())
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return closed.is_set()

    assert _run(consume())


def test_min_interval_spaces_the_batches_and_loses_nothing():
    def model():
        for i in range(60):
            threading.Event().wait(0.002)
            yield f"{i},"

    async def consume(interval):
        loop = asyncio.get_running_loop()
        start = loop.time()
        batches = [b async for b in ready_batches(model(), min_interval=interval)]
        return batches, loop.time() - start

    batches, elapsed = _run(consume(0.05))
    assert "".join(x for b in batches for x in b) == "".join(f"{i}," for i in range(60))
    # the first batch at once, then at most one per 50 ms
    assert len(batches) <= elapsed / 0.05 + 2


def test_stream_interval_setting():
    from webui.settings import parse_settings

    assert parse_settings([]).stream_interval_ms == 10
    assert parse_settings(["--stream-interval-ms", "0"]).stream_interval_ms == 0
    with pytest.raises(SystemExit):
        parse_settings(["--stream-interval-ms", "-1"])


@pytest.mark.parametrize("interval", [0.0, 0.002])
def test_a_fast_producer_loses_nothing_and_wakes_the_loop_once_per_batch(interval: float):
    """The pump appends from its thread while the loop takes batches: every item arrives once,
    in order, and the loop is woken about once per batch, not once per item."""
    n = 20_000

    async def consume():
        loop = asyncio.get_running_loop()
        wakeups = [0]
        schedule = loop.call_soon_threadsafe

        def counting(callback, *args, **kwargs):
            wakeups[0] += 1
            return schedule(callback, *args, **kwargs)

        loop.call_soon_threadsafe = counting  # an instance attribute: only this loop, only this test
        batches = [b async for b in ready_batches(iter(range(n)), min_interval=interval)]
        return batches, wakeups[0]

    batches, wakeups = _run(consume())
    assert [x for b in batches for x in b] == list(range(n))
    assert all(batches)
    assert wakeups <= len(batches) + 2  # the batches' wake-ups and the end, at most one stray
    assert len(batches) < n  # items did come together
