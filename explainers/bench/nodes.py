"""Which nodes the workers of one benchmark ran on (``extra_info["nodes_used"]``)."""
from __future__ import annotations

from typing import Any

from explainers.kernelshap.backends import WORKER_CLASSES

#: actor classes that hold a backend's workers besides ours: Serve's replica wrapper and Ray Data's map actor
FRAMEWORK_WORKER_CLASSES = ("ServeReplica", "MapWorker")


class ActorNodeTracker:
    """Nodes that the workers of one backend run ran on.

    Uses ``explainer.last_run_info["node_ids"]`` when the explainer reports it;
    otherwise the actors created since :meth:`start` in Ray's actor table (kept by the
    GCS also after the actors died), limited to the backends' worker classes.
    """

    def __init__(self) -> None:
        self._before: set[str] | None = None

    def start(self) -> "ActorNodeTracker":
        self._before = set(actor_table())
        return self

    def nodes_used(self, explainer: Any = None) -> int | None:
        info = getattr(explainer, "last_run_info", None)
        if isinstance(info, dict) and info.get("node_ids"):
            return len(set(info["node_ids"]))
        if self._before is None:
            return None
        classes = WORKER_CLASSES + FRAMEWORK_WORKER_CLASSES
        nodes = {
            node for actor_id, (cls, node) in actor_table().items()
            if actor_id not in self._before and node and any(k in cls for k in classes)
        }
        return len(nodes) or None


def actor_table() -> dict[str, tuple[str, str]]:
    """``actor id -> (class name, node id)`` of every actor the GCS knows (alive or dead)."""
    import ray

    def read() -> dict[str, tuple[str, str]]:
        from ray._private import state

        table = state.actors()
        return {
            aid: (str(a.get("ActorClassName", "")), str((a.get("Address") or {}).get("NodeID", "")))
            for aid, a in table.items()
        }

    if ray.util.client.ray.is_connected():  # Ray Client: read it inside the cluster
        return ray.get(ray.remote(num_cpus=0)(read).remote())
    return read()
