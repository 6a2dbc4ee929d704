"""A least-outstanding-requests Serve router for requests of equal cost.

Serve's default router (power of two choices over the queue lengths replicas report)
sends a burst of requests mostly to one replica: the reports lag behind the requests
still in flight. This router counts, in the caller's process, the requests it sent to
each replica that have not completed, and offers the replica with the fewest (ties: the
one sent the fewest so far). A burst of equal-cost KernelSHAP requests is thus split
evenly. The router runs where the deployment handle is used, so this module must be
importable there.
"""
from __future__ import annotations

import collections
from typing import Any, List, Optional

from ray.serve.request_router import (
    PendingRequest,
    ReplicaID,
    RequestRouter,
    RunningReplica,
)

#: for ``RequestRouterConfig(request_router_class=...)``
ROUTER_PATH = f"{__name__}:LeastOutstandingRouter"


class LeastOutstandingRouter(RequestRouter):
    """Offers the replica with the fewest of this router's requests still outstanding.

    A request counts from the moment it is offered a replica: Serve's routing tasks
    choose replicas for several queued requests before any of them is sent, so counting
    at send time would offer one replica to a whole burst. It stops counting when it
    completes (``decrement_queue_len_cache``, Serve's own bookkeeping hook on the
    router's event loop, like ``choose_replicas``). A replica whose queue is full
    (``max_ongoing_requests``) is refused by Serve's routing loop, which asks again; such
    a refused offer keeps counting, which only makes that full replica less preferred.
    """

    def initialize_state(self, **kwargs: Any) -> None:
        self._outstanding: collections.Counter[ReplicaID] = collections.Counter()
        self._offered: collections.Counter[ReplicaID] = collections.Counter()

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        if not candidate_replicas:
            return []
        best = min(candidate_replicas, key=lambda r: (
            self._outstanding[r.replica_id], self._offered[r.replica_id], r.replica_id.unique_id))
        self._outstanding[best.replica_id] += 1
        self._offered[best.replica_id] += 1
        return [[best]]

    def decrement_queue_len_cache(self, replica_id: ReplicaID) -> None:
        if self._outstanding[replica_id] > 0:
            self._outstanding[replica_id] -= 1
        super().decrement_queue_len_cache(replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        self._outstanding.pop(replica_id, None)
        self._offered.pop(replica_id, None)
        super().on_replica_actor_died(replica_id)
