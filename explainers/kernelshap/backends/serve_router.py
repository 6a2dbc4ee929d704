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
    router's event loop, like ``choose_replicas``). An offer Serve's routing loop did not
    take (the replica's queue length probe timed out, or its queue was full) shows as a
    new ``choose_replicas`` for the same pending request: the earlier offer is uncounted
    then, or it would make a loaded replica look busier than it is.
    """

    def initialize_state(self, **kwargs: Any) -> None:
        self._outstanding: collections.Counter[ReplicaID] = collections.Counter()
        self._offered: collections.Counter[ReplicaID] = collections.Counter()
        # id(pending request) -> (the request, the replica offered) until it is assigned
        self._offers: dict[int, tuple[PendingRequest, ReplicaID]] = {}

    async def choose_replicas(
        self,
        candidate_replicas: List[RunningReplica],
        pending_request: Optional[PendingRequest] = None,
    ) -> List[List[RunningReplica]]:
        self._settle_offers(pending_request)
        if not candidate_replicas:
            return []
        best = min(candidate_replicas, key=lambda r: (
            self._outstanding[r.replica_id], self._offered[r.replica_id], r.replica_id.unique_id))
        self._outstanding[best.replica_id] += 1
        self._offered[best.replica_id] += 1
        if pending_request is not None:
            self._offers[id(pending_request)] = (pending_request, best.replica_id)
        return [[best]]

    def _settle_offers(self, asking_again: Optional[PendingRequest]) -> None:
        """Uncount offers that were not taken; forget the ones that were."""
        for key, (request, replica_id) in list(self._offers.items()):
            future = request.future
            if request is asking_again or future.cancelled() or (future.done() and future.exception()):
                self._uncount(replica_id)
                del self._offers[key]
            elif future.done():  # assigned: counts until it completes
                del self._offers[key]

    def _uncount(self, replica_id: ReplicaID) -> None:
        for counter in (self._outstanding, self._offered):
            if counter[replica_id] > 0:
                counter[replica_id] -= 1

    def decrement_queue_len_cache(self, replica_id: ReplicaID) -> None:
        if self._outstanding[replica_id] > 0:
            self._outstanding[replica_id] -= 1
        super().decrement_queue_len_cache(replica_id)

    def on_replica_actor_died(self, replica_id: ReplicaID) -> None:
        self._outstanding.pop(replica_id, None)
        self._offered.pop(replica_id, None)
        self._offers = {k: v for k, v in self._offers.items() if v[1] != replica_id}
        super().on_replica_actor_died(replica_id)
