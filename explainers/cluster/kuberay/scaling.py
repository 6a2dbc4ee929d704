"""Worker-group scaling of a RayCluster and the Ray nodes it yields.

:func:`scale_worker_group` patches ``workerGroupSpecs[group].replicas`` and returns what
:func:`restore_worker_group` needs to put it back; :func:`wait_for_nodes` waits for the
pods to join Ray (or, without a Ray connection, :func:`ready_pods` to be Ready);
:func:`describe_cluster` reports the connected cluster's nodes and CPUs and :func:`spec_cpus`
the CPUs the RayCluster asks for.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Mapping, Optional

from .api import (RAY_API_VERSION, RAY_GROUP, RAYCLUSTER_PLURAL, K8sError, KubeApi, api_call,
                  get_raycluster, shorten)

__all__ = ["DEFAULT_WORKER_GROUP", "find_group", "worker_group_cpus", "spec_cpus", "ready_pods",
           "scale_worker_group", "restore_worker_group", "wait_for_nodes", "describe_cluster"]

DEFAULT_WORKER_GROUP = "workers"


def find_group(raycluster: Mapping, group: str) -> tuple[int, dict]:
    """The index and spec of worker group ``group``; K8sError naming the groups if absent."""
    groups = raycluster.get("spec", {}).get("workerGroupSpecs") or []
    for i, g in enumerate(groups):
        if g.get("groupName") == group:
            return i, g
    name = raycluster.get("metadata", {}).get("name")
    raise K8sError(f"RayCluster {name!r} has no worker group {group!r}; groups: "
                   f"{[g.get('groupName') for g in groups]}")


def _cpu_quantity(value: Any) -> float:
    text = str(value)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def pod_cpus(group_spec: Mapping, what: str) -> float:
    """Ray CPUs of one pod of a head or worker group spec: rayStartParams num-cpus, else the
    first container's CPU limit, else its request."""
    params = group_spec.get("rayStartParams") or {}
    if "num-cpus" in params:
        return float(params["num-cpus"])
    containers = group_spec.get("template", {}).get("spec", {}).get("containers", [])
    res = (containers[0].get("resources") or {}) if containers else {}
    for kind in ("limits", "requests"):
        if "cpu" in (res.get(kind) or {}):
            return _cpu_quantity(res[kind]["cpu"])
    raise K8sError(f"cannot tell the CPUs of a {what} pod: set rayStartParams num-cpus "
                   "or a CPU limit")


def worker_group_cpus(raycluster: Mapping, group: str = DEFAULT_WORKER_GROUP) -> float:
    """Ray CPUs of one pod of ``group``: rayStartParams num-cpus, else the CPU limit/request."""
    _, g = find_group(raycluster, group)
    return pod_cpus(g, repr(group))


def spec_cpus(raycluster: Mapping) -> float:
    """Ray CPUs the RayCluster asks for: its head's plus every worker group's replicas x pod CPUs."""
    spec = raycluster.get("spec", {})
    total = pod_cpus(spec.get("headGroupSpec") or {}, "head")
    for g in spec.get("workerGroupSpecs") or []:
        total += int(g.get("replicas") or 0) * pod_cpus(g, repr(g.get("groupName")))
    return total


def ready_pods(api: KubeApi, namespace: str, cluster: str) -> int:
    """Pods of RayCluster ``cluster`` (label ``ray.io/cluster``) that are Running and Ready."""
    pods = api_call(api, f"list pods of RayCluster {namespace}/{cluster}",
                    api.core.list_namespaced_pod, namespace,
                    label_selector=f"ray.io/cluster={cluster}")
    ready = 0
    for pod in pods.items or []:
        status = pod.status
        conditions = (status.conditions or []) if status is not None else []
        if (status is not None and status.phase == "Running"
                and any(c.type == "Ready" and c.status == "True" for c in conditions)):
            ready += 1
    return ready


def scale_worker_group(api: KubeApi, namespace: str, cluster: str, group: str,
                       replicas: int) -> dict[str, Optional[int]]:
    """Set ``workerGroupSpecs[group].replicas`` (widening min/maxReplicas if needed).

    Sends one JSON patch (with a ``test`` op on the group name so that a concurrent reorder
    fails instead of patching the wrong group). Returns the previous
    ``{"replicas", "minReplicas", "maxReplicas"}`` for :func:`restore_worker_group`.
    """
    from kubernetes.client.exceptions import ApiException

    if replicas < 0:
        raise ValueError(f"replicas must be >= 0, got {replicas}")
    rc = get_raycluster(api, namespace, cluster)
    i, g = find_group(rc, group)
    before = {k: g.get(k) for k in ("replicas", "minReplicas", "maxReplicas")}
    base = f"/spec/workerGroupSpecs/{i}"
    ops: list[dict[str, Any]] = [
        {"op": "test", "path": f"{base}/groupName", "value": group},
        {"op": "add" if g.get("replicas") is None else "replace",
         "path": f"{base}/replicas", "value": replicas},
    ]
    if g.get("maxReplicas") is not None and g["maxReplicas"] < replicas:
        ops.append({"op": "replace", "path": f"{base}/maxReplicas", "value": replicas})
    if g.get("minReplicas") is not None and g["minReplicas"] > replicas:
        ops.append({"op": "replace", "path": f"{base}/minReplicas", "value": replicas})
    _patch(api, namespace, cluster, ops, ApiException)
    return before


def restore_worker_group(api: KubeApi, namespace: str, cluster: str, group: str,
                         before: Mapping[str, Optional[int]]) -> None:
    """Put back the ``replicas`` / ``minReplicas`` / ``maxReplicas`` saved by scaling."""
    from kubernetes.client.exceptions import ApiException

    rc = get_raycluster(api, namespace, cluster)
    i, g = find_group(rc, group)
    base = f"/spec/workerGroupSpecs/{i}"
    ops: list[dict[str, Any]] = [{"op": "test", "path": f"{base}/groupName", "value": group}]
    for key in ("minReplicas", "maxReplicas", "replicas"):
        if before.get(key) is not None and g.get(key) != before[key]:
            ops.append({"op": "replace", "path": f"{base}/{key}", "value": before[key]})
    if len(ops) > 1:
        _patch(api, namespace, cluster, ops, ApiException)


def _patch(api: KubeApi, namespace: str, cluster: str, ops: list, api_exc: type) -> dict:
    try:
        return api_call(api, f"patch RayCluster {namespace}/{cluster}",
                        api.custom.patch_namespaced_custom_object,
                        RAY_GROUP, RAY_API_VERSION, namespace, RAYCLUSTER_PLURAL, cluster,
                        ops, _content_type="application/json-patch+json")
    except api_exc as exc:
        raise K8sError(f"patching RayCluster {namespace}/{cluster} failed: HTTP {exc.status} "
                       f"{exc.reason}: {shorten(exc.body or '')}") from None


def _alive_nodes() -> int:
    import ray
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def wait_for_nodes(n: int, timeout: float, *, poll: float = 1.0,
                   count: Callable[[], int] = _alive_nodes,
                   what: str = "Ray nodes alive", hint: str = "") -> int:
    """Poll ``count()`` (default: alive Ray nodes) until it is at least ``n``; K8sError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        have = count()
        if have >= n:
            return have
        if time.monotonic() >= deadline:
            raise K8sError(f"only {have} of {n} {what} after {timeout:.0f} s{hint}")
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def describe_cluster() -> dict[str, Any]:
    """Nodes and CPUs of the connected Ray cluster.

    Returns ``{"ray_nodes": int, "ray_cpus": float, "ray_node_cpus": [float, ...]}``.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in alive]
    return {"ray_nodes": len(alive), "ray_cpus": sum(cpus), "ray_node_cpus": sorted(cpus)}
