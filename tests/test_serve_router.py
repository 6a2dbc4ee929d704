"""The least-outstanding router's bookkeeping, without Serve (its Serve behaviour is in
``test_distributed.py::test_router_splits_a_burst_evenly``)."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

pytest.importorskip("ray.serve")

from explainers.kernelshap.backends.serve_router import LeastOutstandingRouter  # noqa: E402


@dataclass(frozen=True)
class FakeReplicaID:
    unique_id: str


@dataclass
class FakeReplica:
    replica_id: FakeReplicaID


@dataclass
class FakeRequest:
    future: asyncio.Future = field(default_factory=lambda: asyncio.get_event_loop().create_future())


def _router() -> LeastOutstandingRouter:
    router = LeastOutstandingRouter.__new__(LeastOutstandingRouter)  # no Serve around it
    router.initialize_state()
    return router


def _choose(router, replicas, request=None) -> str:
    chosen = asyncio.get_event_loop().run_until_complete(router.choose_replicas(replicas, request))
    return chosen[0][0].replica_id.unique_id


@pytest.fixture()
def loop():
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    yield loop
    loop.close()
    asyncio.set_event_loop(None)


def test_a_burst_is_offered_round_robin(loop):
    router = _router()
    replicas = [FakeReplica(FakeReplicaID(name)) for name in "abc"]
    offered = [_choose(router, replicas, FakeRequest()) for _ in range(9)]
    assert sorted(offered.count(r) for r in "abc") == [3, 3, 3]


def test_an_offer_not_taken_is_uncounted(loop):
    """Serve asks again for a request whose offer failed (probe timeout): only the last offer counts."""
    router = _router()
    replicas = [FakeReplica(FakeReplicaID(name)) for name in "ab"]
    request = FakeRequest()
    for _ in range(5):  # five failed offers for the same request
        _choose(router, replicas, request)
    request.future.set_result(replicas[0])
    others = [_choose(router, replicas, FakeRequest()) for _ in range(4)]
    counts = {name: sum(1 for o in others if o == name) for name in "ab"}
    assert router._outstanding[replicas[0].replica_id] + router._outstanding[replicas[1].replica_id] == 5
    assert abs(counts["a"] - counts["b"]) <= 2, counts


def test_completion_and_cancellation_release_a_replica(loop):
    router = _router()
    a, b = (FakeReplica(FakeReplicaID(name)) for name in "ab")
    first, second = FakeRequest(), FakeRequest()
    assert _choose(router, [a, b], first) == "a"
    assert _choose(router, [a, b], second) == "b"
    first.future.set_result(a)
    router._outstanding[a.replica_id] -= 1  # what decrement_queue_len_cache does on completion
    second.future.cancel()
    third = FakeRequest()
    _choose(router, [a, b], third)  # settles: the cancelled offer to b is uncounted
    assert router._outstanding[b.replica_id] + router._outstanding[a.replica_id] == 1
