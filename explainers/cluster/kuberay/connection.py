"""Attaching to a KubeRay cluster: :func:`connect_k8s` and the :class:`K8sConnection` it gives.

:func:`connect_k8s` looks up the head service and the auth token and starts a port-forward;
:meth:`K8sConnection.connect` runs ``ray.init`` through it (after :func:`probe_ray_client`)
and checks versions; ``close()`` undoes scaling, Ray, kubectl and the API client.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Optional

from .. import ray_client
from ..ray_client import RayAuthEnv, init_ray_client, no_auto_init
from .api import (HeadService, K8sError, KubeApi, find_head_service, get_raycluster,
                  load_kube_api)
from .auth import SECRET_TOKEN_HELP, auth_requirement, resolve_token
from .port_forward import PortForward
from .scaling import (DEFAULT_WORKER_GROUP, describe_cluster, find_group, ready_pods,
                      restore_worker_group, scale_worker_group, spec_cpus, wait_for_nodes,
                      worker_group_cpus)
from .versions import cluster_versions, compare_versions, rephrase_init_error

if TYPE_CHECKING:
    from .jobs import RayJobs

__all__ = ["DEFAULT_NAMESPACE", "DEFAULT_CLUSTER", "probe_ray_client", "K8sConnection",
           "connect_k8s"]

DEFAULT_NAMESPACE = "default"
DEFAULT_CLUSTER = "kernelshap"


def probe_ray_client(host: str, port: int, token: Optional[str], *, timeout: float,
                     what: str = "Ray Client server") -> None:
    """Wait until the Ray Client server at ``host:port`` answers a PING (gRPC).

    :func:`explainers.cluster.ray_client.probe_ray_client` with :class:`K8sError` and the token help
    of a RayCluster (its Secret): raises at once on UNAUTHENTICATED (missing / wrong token)
    and after ``timeout`` s when it never answers.
    """
    def error(message: str, **_: Any) -> K8sError:
        return K8sError(message)

    ray_client.probe_ray_client(
        host, port, token, timeout=timeout, what=what, error=error,
        token_help=SECRET_TOKEN_HELP)


class K8sConnection:
    """A KubeRay cluster reached through ``kubectl port-forward`` (see :func:`connect_k8s`).

    Attributes: ``namespace``, ``cluster``, ``api`` (:class:`KubeApi`), ``head``
    (:class:`HeadService`), ``port_forward``, ``kind`` (``"client"`` or ``"dashboard"``, the
    port forwarded), ``address`` (``ray://127.0.0.1:PORT`` or ``http://127.0.0.1:PORT``),
    ``token`` (the Ray auth token in use, or None).
    """

    def __init__(self, namespace: str, cluster: str, api: KubeApi, head: HeadService,
                 port_forward: PortForward, token: Optional[str], *, timeout: float,
                 group: str = DEFAULT_WORKER_GROUP, kind: str = "client"):
        self.namespace = namespace
        self.cluster = cluster
        self.api = api
        self.head = head
        self.port_forward = port_forward
        self.token = token
        self.timeout = timeout
        self.group = group
        self.kind = kind
        self.versions: Optional[dict[str, Any]] = None
        self._auth = RayAuthEnv(token)
        self._connected = False
        self._scaled: Optional[dict[str, Optional[int]]] = None
        self._closed = False

    @property
    def address(self) -> str:
        """Where the forward listens: ``ray://127.0.0.1:PORT`` (client) or ``http://...`` (dashboard)."""
        scheme = "ray" if self.kind == "client" else "http"
        return f"{scheme}://127.0.0.1:{self.port_forward.local_port}"

    # -- health
    def alive(self) -> bool:
        return self.port_forward.alive()

    def ensure_alive(self) -> None:
        """Raise K8sError when the port-forward has died (e.g. the head pod restarted)."""
        try:
            self.port_forward.check()
        except K8sError as exc:
            raise K8sError(f"lost the connection to RayCluster {self.namespace}/"
                           f"{self.cluster}: {exc}") from None

    def reforward(self) -> None:
        """Replace a port-forward that died (the old kubectl is gone) by a new one, on a new port."""
        self.port_forward.close()
        self.port_forward = self.port_forward.restarted()

    # -- Ray Jobs
    def jobs(self) -> "RayJobs":
        """The Ray Jobs API of the head (needs ``port="dashboard"``)."""
        if self.kind != "dashboard":
            raise K8sError("Ray Jobs need the dashboard port: connect_k8s(..., port='dashboard')")
        from .jobs import RayJobs

        return RayJobs(self)

    # -- Ray
    def connect(self, *, check_versions: bool = True, require_project: bool = True,
                **init_kwargs: Any) -> Any:
        """``ray.init(self.address, **init_kwargs)`` with token, version and project checks.

        Returns Ray's client context. ``require_project``: fail when ``explainers`` cannot
        be imported on the cluster (it is installed in the image built from k8s/Dockerfile,
        or shipped with ``runtime_env={"py_modules": [...]}``).
        """
        if self.kind != "client":
            raise K8sError("ray.init through Kubernetes needs the Ray Client port: "
                           "connect_k8s(..., port='client')")
        self.ensure_alive()
        port = int(self.port_forward.local_port)
        probe_ray_client("127.0.0.1", port, self.token, timeout=self.timeout,
                         what=f"Ray Client server of {self.namespace}/{self.cluster} "
                              "(via kubectl port-forward)")
        init_kwargs.setdefault("logging_level", "WARNING")
        try:
            with self._auth.connecting():  # the token is in os.environ only for ray.init
                ctx = init_ray_client(self.address, **init_kwargs)
        except Exception as exc:
            self.ensure_alive()
            err = rephrase_init_error(exc, self.address)
            if err is None:
                raise
            raise err from None
        self._connected = True
        if check_versions:
            self.check_versions(require_project=require_project)
        return ctx

    def check_versions(self, *, expected_ray: Optional[str] = None,
                       expected_python: Optional[Any] = None,
                       require_project: bool = False,
                       expected_numpy: Optional[str] = None,
                       expected_sklearn: Optional[str] = None,
                       check_model_libs: bool = True) -> dict[str, Any]:
        """Ask the cluster (a remote task) for its versions and compare with ours.

        ``expected_*`` default to this process's Ray / Python (major, minor) / NumPy /
        scikit-learn. NumPy (major.minor) and scikit-learn are compared because the model
        is cloudpickled to the cluster; ``check_model_libs=False`` skips them.
        """
        self.ensure_alive()
        self.versions = cluster_versions(timeout=self.timeout)
        v = self.versions
        libs = check_model_libs and ("numpy" in v or "sklearn" in v)  # reported by the task
        compare_versions(v["ray"], v["python"],
                         local_ray=expected_ray, local_python=expected_python,
                         cluster_numpy=v.get("numpy") if libs else None,
                         cluster_sklearn=v.get("sklearn") if libs else None,
                         local_numpy=expected_numpy, local_sklearn=expected_sklearn,
                         check_model_libs=bool(libs))
        if require_project and self.versions.get("explainers") is None:
            raise K8sError(
                f"the package 'explainers' is not installed on RayCluster {self.namespace}/"
                f"{self.cluster}: use the image built from k8s/Dockerfile, or connect with "
                "runtime_env={'py_modules': [explainers]}")
        return self.versions

    def describe(self) -> dict[str, Any]:
        """Machine info: ``k8s_cluster``, ``k8s_namespace``, ``k8s_worker_group``,
        ``k8s_worker_replicas`` and, connected to Ray, ``ray_nodes``, ``ray_cpus``, ``ray_node_cpus``."""
        self.ensure_alive()
        info: dict[str, Any] = {"k8s_cluster": self.cluster, "k8s_namespace": self.namespace,
                                "k8s_worker_group": self.group}
        try:
            rc = get_raycluster(self.api, self.namespace, self.cluster)
            info["k8s_worker_replicas"] = find_group(rc, self.group)[1].get("replicas")
        except K8sError:
            info["k8s_worker_replicas"] = None
        if self._connected:
            info.update(describe_cluster())
        return info

    # -- scaling
    def scale_to(self, replicas: int, *, timeout: Optional[float] = None) -> int:
        """Set the worker group to ``replicas`` pods and wait until they are Ray nodes.

        Remembers the original counts the first time (``restore()`` puts them back).
        Returns the number of alive Ray nodes, or without a Ray connection (Ray Jobs) the
        number of the RayCluster's pods that are Running and Ready.
        """
        self.ensure_alive()
        before = scale_worker_group(self.api, self.namespace, self.cluster, self.group,
                                    replicas)
        if self._scaled is None:
            self._scaled = before
        # the head plus every worker pod of every group, as the RayCluster now asks
        rc = get_raycluster(self.api, self.namespace, self.cluster)
        expected = 1 + sum(int(g.get("replicas") or 0)
                           for g in rc.get("spec", {}).get("workerGroupSpecs") or [])
        hint = (f"; check `kubectl get pods -n {self.namespace} -l ray.io/cluster="
                f"{self.cluster}`: Pending pods mean the Kubernetes cluster has no room for "
                f"{replicas} '{self.group}' pods (add nodes or lower --workers)")
        wait = self.timeout if timeout is None else timeout
        if self._connected:
            return wait_for_nodes(expected, wait, hint=hint)
        return wait_for_nodes(expected, wait, hint=hint, what="pods Ready",
                              count=lambda: ready_pods(self.api, self.namespace, self.cluster))

    def ensure_cpus(self, cpus: float, *, timeout: Optional[float] = None) -> int:
        """Scale up (never down) so that the cluster has at least ``cpus`` Ray CPUs.

        Connected to Ray it counts the CPUs Ray has, else (Ray Jobs) those the RayCluster
        asks for (:func:`spec_cpus`). Returns the worker replicas now requested.
        """
        rc = get_raycluster(self.api, self.namespace, self.cluster)
        have = describe_cluster()["ray_cpus"] if self._connected else spec_cpus(rc)
        _, g = find_group(rc, self.group)
        current = int(g.get("replicas") or 0)
        if have >= cpus:
            return current
        per_pod = worker_group_cpus(rc, self.group)
        if per_pod <= 0:
            raise K8sError(f"worker group {self.group!r} has 0 CPUs per pod")
        need = current + math.ceil((cpus - have) / per_pod)
        self.scale_to(need, timeout=timeout)
        return need

    def restore(self) -> None:
        """Put the worker group's replica counts back to what they were before scaling."""
        if self._scaled is not None:
            restore_worker_group(self.api, self.namespace, self.cluster, self.group,
                                 self._scaled)
            self._scaled = None

    # -- teardown
    def close(self) -> None:
        """Restore scaling, disconnect Ray, stop kubectl. Idempotent; never raises K8sError
        for a port-forward that already died."""
        if self._closed:
            return
        self._closed = True
        errors: list[BaseException] = []
        try:
            self.restore()
        except Exception as exc:
            errors.append(exc)
        if self._connected:
            try:
                import ray
                with no_auto_init():  # the head may be gone: never start a local Ray
                    ray.shutdown()
            except Exception as exc:  # pragma: no cover
                errors.append(exc)
            self._connected = False
        self.port_forward.close()
        try:
            self._auth.release()
        except Exception as exc:  # pragma: no cover
            errors.append(exc)
        self.api.close()
        if errors:
            raise K8sError(f"while closing the connection to {self.namespace}/"
                           f"{self.cluster}: {errors[0]}") from errors[0]

    def __enter__(self) -> "K8sConnection":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def connect_k8s(namespace: str = DEFAULT_NAMESPACE, cluster: str = DEFAULT_CLUSTER,
                kubeconfig: Optional[str] = None, *, context: Optional[str] = None,
                timeout: float = 60.0, token: Optional[str] = None,
                group: str = DEFAULT_WORKER_GROUP, kubectl: str = "kubectl",
                port: str = "client") -> K8sConnection:
    """Find RayCluster ``cluster`` and start a port-forward to its ``port``: ``"client"`` (the
    Ray Client server, 10001) or ``"dashboard"`` (the dashboard and Ray Jobs, 8265).

    Resolves the kubeconfig, the head service and the auth token, then runs
    ``kubectl port-forward`` on a free local port and waits until it answers. Call
    ``.connect()`` (client) or ``.jobs()`` (dashboard) on the result; ``.close()`` (or
    ``with``) undoes everything. All failures are :class:`K8sError`.
    """
    if port not in ("client", "dashboard"):
        raise ValueError(f"port must be 'client' or 'dashboard', got {port!r}")
    api = load_kube_api(kubeconfig, context)
    try:
        head = find_head_service(api, namespace, cluster, require=port)
        auth = auth_requirement(head.raycluster)
        tok = resolve_token(api, namespace, auth, token)
        pf = PortForward(head.name, head.port(port), namespace,
                         kubeconfig=api.kubeconfig, context=context, kubectl=kubectl,
                         timeout=timeout)
        pf.start()
    except BaseException:
        api.close()
        raise
    return K8sConnection(namespace, cluster, api, head, pf, tok, timeout=timeout,
                         group=group, kind=port)
