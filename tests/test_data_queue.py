"""The Ray Data backend's minibatch queue, on its own (no Ray): hand-out order, heartbeats, stop."""
from __future__ import annotations

import asyncio

import pytest

from explainers.kernelshap.backends.data import IDLE, IDLE_HEARTBEAT_S, LATER, MinibatchQueue


def run(coro):
    return asyncio.run(coro)


async def _blocks(awaitable, seconds: float = 10 * IDLE_HEARTBEAT_S) -> bool:
    try:
        await asyncio.wait_for(awaitable, seconds)
    except asyncio.TimeoutError:
        return True
    return False


def test_items_are_handed_out_in_order_then_heartbeats_until_the_call_finishes():
    async def scenario():
        q = MinibatchQueue(readers=2)
        await q.put([(0, 0, 10, "X"), (0, 10, 15, "X")])
        assert await q.take() == (0, 0, 10, "X")
        assert await q.take() == (0, 10, 15, "X")
        # nothing left to hand out, but call 0 is still in progress: idle readers beat
        assert await q.take() == IDLE
        assert await q.take() == IDLE
        await q.finish(0)
        assert await _blocks(q.take()), "an idle reader beat with no call in progress"

    run(scenario())


def test_a_dropped_call_loses_its_waiting_items_and_its_heartbeats():
    async def scenario():
        q = MinibatchQueue(readers=1)
        await q.put([(0, 0, 10, "X"), (0, 10, 20, "X")])
        await q.put([(1, 0, 10, "Y")])
        await q.drop(0)
        assert await q.take() == (1, 0, 10, "Y")
        assert await q.take() == IDLE  # call 1 is still in progress
        await q.finish(1)
        assert await _blocks(q.take())

    run(scenario())


def test_a_waiting_reader_wakes_for_new_work():
    async def scenario():
        q = MinibatchQueue(readers=1)
        waiting = asyncio.ensure_future(q.take())
        await asyncio.sleep(5 * IDLE_HEARTBEAT_S)
        assert not waiting.done()
        await q.put([(3, 0, 4, "Z")])
        assert await asyncio.wait_for(waiting, 1) == (3, 0, 4, "Z")

    run(scenario())


@pytest.mark.parametrize("how", ["stop", "extra reader"])
def test_stopping_ends_every_reader(how):
    """``stop`` (the backend closes), or one registration more than expected (a map actor was
    restarted, so some reader's minibatch is lost): every take answers ``None``."""
    async def scenario():
        q = MinibatchQueue(readers=2)
        await q.register()
        await q.register()
        assert await q.wait_readers(1) == 2
        await q.put([(0, 0, 10, "X")])
        waiting = asyncio.ensure_future(q.take())
        assert await waiting == (0, 0, 10, "X")
        await q.finish(0)
        waiting = asyncio.ensure_future(q.take())
        await asyncio.sleep(0.05)
        if how == "stop":
            await q.stop()
        else:
            await q.register()
        assert await asyncio.wait_for(waiting, 1) is None
        assert await q.take() is None

    run(scenario())


def test_a_busy_reader_gets_the_next_item_only_while_every_other_reader_would_find_one():
    async def scenario():
        q = MinibatchQueue(readers=2)
        await q.put([(0, s, s + 10, "X") for s in range(0, 40, 10)])
        assert await q.take() == (0, 0, 10, "X")
        assert await q.take_ahead() == (0, 10, 20, "X")  # 3 waiting, 2 readers
        assert await q.take_ahead() == (0, 20, 30, "X")  # 2 waiting
        assert await q.take_ahead() == LATER  # 1 waiting: it is left for a reader that is free
        assert await q.take() == (0, 30, 40, "X")
        assert await q.take_ahead() == LATER
        assert await q.take() == IDLE  # call 0 in progress, nothing to hand out
        await q.stop()
        assert await q.take_ahead() is None

    run(scenario())


def test_one_reader_always_gets_the_next_item_ahead():
    async def scenario():
        q = MinibatchQueue(readers=1)
        await q.put([(0, 0, 10, "X"), (0, 10, 15, "X")])
        assert await q.take_ahead() == (0, 0, 10, "X")
        assert await q.take_ahead() == (0, 10, 15, "X")
        assert await q.take_ahead() == LATER

    run(scenario())
