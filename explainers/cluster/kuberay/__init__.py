"""KubeRay: head service lookup, ``kubectl port-forward``, Ray Client attach, worker scaling.

The pytest plugin's ``--ray-address k8s`` mode uses :func:`connect_k8s`::

    with connect_k8s("default", "kernelshap") as conn:   # API lookups + port-forward
        conn.connect()                                  # ray.init("ray://127.0.0.1:PORT")
        conn.describe()                                 # nodes, CPUs, cluster name
        conn.ensure_cpus(8, timeout=600)                # scale the worker group if needed
        ...                                             # (restored by close())

Every step that can fail raises :class:`K8sError` with a message naming what was looked
for and how to fix it; every network call has a timeout, so nothing hangs.

Ray token authentication (Ray >= 2.52): when the RayCluster sets ``RAY_AUTH_MODE=token``
(or ``spec.authOptions.mode: token``) the client needs the same token. It is taken from,
in order: the ``token`` argument, ``$RAY_AUTH_TOKEN``, the file named by
``$RAY_AUTH_TOKEN_PATH``, and the Kubernetes Secret the RayCluster reads it from.

Modules:

* :mod:`.api`: :class:`K8sError`, the Kubernetes client (:func:`load_kube_api`), guarded
  API calls (:func:`~.api.api_call`), the RayCluster and its head service
  (:func:`find_head_service`);
* :mod:`.auth`: whether a RayCluster requires a Ray token (:func:`auth_requirement`) and
  finding it (:func:`resolve_token`);
* :mod:`.versions`: comparing the cluster's Ray / Python / NumPy / scikit-learn with ours
  (:func:`compare_versions`, :func:`cluster_versions`, :func:`rephrase_init_error`);
* :mod:`.port_forward`: :class:`PortForward` (``kubectl port-forward`` that dies with this
  process) and :func:`free_port`;
* :mod:`.scaling`: worker-group scaling and the Ray nodes it yields;
* :mod:`.connection`: :func:`connect_k8s` and :class:`K8sConnection`, which tie the above
  together, and :func:`probe_ray_client`.
"""
from __future__ import annotations

from .api import (
    API_TIMEOUT,
    RAY_API_VERSION,
    RAY_CLIENT_PORT,
    RAY_GROUP,
    RAYCLUSTER_PLURAL,
    HeadService,
    K8sError,
    KubeApi,
    find_head_service,
    load_kube_api,
)
from .auth import TOKEN_HELP, TOKEN_SECRET_KEY, AuthRequirement, auth_requirement, resolve_token
from .connection import (
    DEFAULT_CLUSTER,
    DEFAULT_NAMESPACE,
    K8sConnection,
    connect_k8s,
    probe_ray_client,
)
from .port_forward import PortForward, free_port
from .scaling import (
    DEFAULT_WORKER_GROUP,
    describe_cluster,
    restore_worker_group,
    scale_worker_group,
    wait_for_nodes,
    worker_group_cpus,
)
from .versions import cluster_versions, compare_versions, rephrase_init_error

__all__ = [
    "K8sError",
    "KubeApi",
    "HeadService",
    "AuthRequirement",
    "PortForward",
    "K8sConnection",
    "load_kube_api",
    "find_head_service",
    "auth_requirement",
    "resolve_token",
    "probe_ray_client",
    "compare_versions",
    "cluster_versions",
    "rephrase_init_error",
    "scale_worker_group",
    "restore_worker_group",
    "worker_group_cpus",
    "wait_for_nodes",
    "describe_cluster",
    "connect_k8s",
    "free_port",
    "RAY_GROUP",
    "RAY_API_VERSION",
    "RAYCLUSTER_PLURAL",
    "RAY_CLIENT_PORT",
    "API_TIMEOUT",
    "DEFAULT_NAMESPACE",
    "DEFAULT_CLUSTER",
    "DEFAULT_WORKER_GROUP",
    "TOKEN_SECRET_KEY",
    "TOKEN_HELP",
]
