"""Kubernetes API access for KubeRay: the client, guarded calls, RayCluster, head service.

Every call goes through :func:`api_call`, which adds a timeout and turns transport and
authorisation failures into :class:`K8sError`.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

__all__ = [
    "K8sError",
    "KubeApi",
    "HeadService",
    "load_kube_api",
    "api_call",
    "shorten",
    "get_raycluster",
    "find_head_service",
    "RAY_GROUP",
    "RAY_API_VERSION",
    "RAYCLUSTER_PLURAL",
    "RAY_CLIENT_PORT",
    "API_TIMEOUT",
]

RAY_GROUP = "ray.io"
RAY_API_VERSION = "v1"
RAYCLUSTER_PLURAL = "rayclusters"
RAY_CLIENT_PORT = 10001
#: the head's dashboard port, which serves the Ray Jobs API
DASHBOARD_PORT = 8265
#: the head service's port for each transport, by KubeRay's port name and its default number
HEAD_PORTS = {"client": ("client", RAY_CLIENT_PORT), "dashboard": ("dashboard", DASHBOARD_PORT)}
#: (connect, read) timeout in seconds of every Kubernetes API call
API_TIMEOUT = (3.0, 10.0)


class K8sError(RuntimeError):
    """A Kubernetes / KubeRay / port-forward problem, with a message saying what to fix."""


class _Forbidden(K8sError):
    """The API server answered 401/403."""


# --------------------------------------------------------------------------- API client


@dataclass
class KubeApi:
    """A Kubernetes API client bound to one kubeconfig (not the global default config)."""

    api_client: Any
    core: Any
    custom: Any
    source: str  #: where the configuration came from (for messages)
    kubeconfig: Optional[str] = None  #: path passed on to kubectl (None: in-cluster/default)
    context: Optional[str] = None

    @property
    def host(self) -> str:
        return str(self.api_client.configuration.host)

    def close(self) -> None:
        try:
            self.api_client.close()
        except Exception:  # pragma: no cover - best effort
            pass


def load_kube_api(kubeconfig: Optional[str | os.PathLike] = None,
                  context: Optional[str] = None) -> KubeApi:
    """Load a Kubernetes API client with the usual resolution order.

    An explicit ``kubeconfig`` path, else ``$KUBECONFIG`` (``os.pathsep``-separated list),
    else ``~/.kube/config``, else the in-cluster service account. Raises :class:`K8sError`
    when none is found or the file is not a valid kubeconfig.
    """
    from kubernetes import client as kclient
    from kubernetes import config as kconfig

    cfg = kclient.Configuration()
    tried: list[str] = []
    path: Optional[str] = None
    if kubeconfig is not None:
        path = os.fspath(kubeconfig)
        if not Path(path).expanduser().is_file():
            raise K8sError(f"kubeconfig {path!r} (from --kubeconfig) does not exist")
        path = str(Path(path).expanduser())
        source = f"kubeconfig {path}"
    elif os.environ.get("KUBECONFIG"):
        files = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
        existing = [p for p in files if Path(p).expanduser().is_file()]
        if not existing:
            raise K8sError(f"KUBECONFIG={os.environ['KUBECONFIG']!r} names no existing file")
        path = os.pathsep.join(existing)
        source = f"KUBECONFIG={path}"
    else:
        default = Path("~/.kube/config").expanduser()
        tried.append(str(default))
        if default.is_file():
            path = str(default)
            source = f"kubeconfig {path}"
        else:
            source = "in-cluster service account"
    try:
        if path is not None:
            kconfig.load_kube_config(config_file=path, context=context,
                                     client_configuration=cfg, persist_config=False)
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            kconfig.load_incluster_config(client_configuration=cfg)
        else:
            raise K8sError(
                "no Kubernetes configuration found: pass --kubeconfig PATH, set KUBECONFIG, "
                f"or create {tried[0]} (e.g. `kind create cluster` writes it); not running "
                "inside a pod either (KUBERNETES_SERVICE_HOST unset)")
    except K8sError:
        raise
    except Exception as exc:  # ConfigException, YAML errors, missing keys...
        raise K8sError(f"invalid Kubernetes configuration ({source}): {exc}") from None
    cfg.retries = 1  # fail fast when the API server is unreachable
    api_client = kclient.ApiClient(cfg)
    return KubeApi(api_client=api_client, core=kclient.CoreV1Api(api_client),
                   custom=kclient.CustomObjectsApi(api_client), source=source,
                   kubeconfig=path if kubeconfig is not None else None,
                   context=context)


def api_call(api: KubeApi, what: str, fn: Callable[..., Any], *args: Any,
             **kwargs: Any) -> Any:
    """Call one API function with a timeout; translate transport errors into K8sError.

    ``ApiException`` (an HTTP answer) is re-raised for the caller to interpret.
    """
    import urllib3
    from kubernetes.client.exceptions import ApiException

    kwargs.setdefault("_request_timeout", API_TIMEOUT)
    try:
        return fn(*args, **kwargs)
    except ApiException as exc:
        if not exc.status:  # no HTTP answer (TLS failure, ...)
            raise K8sError(
                f"the Kubernetes API server at {api.host} ({api.source}) could not be "
                f"reached while trying to {what}: {exc.reason}") from None
        if exc.status in (401, 403):
            raise _Forbidden(
                f"the Kubernetes API server at {api.host} refused to {what} "
                f"(HTTP {exc.status} {exc.reason}); check the credentials in {api.source}"
            ) from None
        raise
    except (urllib3.exceptions.HTTPError, OSError) as exc:  # refused, timeouts, DNS
        raise K8sError(
            f"the Kubernetes API server at {api.host} ({api.source}) is unreachable "
            f"while trying to {what}: {type(exc).__name__}: {shorten(exc)}") from None


def shorten(exc: BaseException, limit: int = 300) -> str:
    """``exc`` as one line of at most ``limit`` characters (plus "...")."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- lookups


@dataclass
class HeadService:
    """The head service of a RayCluster and its Ray Client and dashboard ports (``None``: not exposed)."""

    name: str
    ray_client_port: Optional[int]
    namespace: str
    cluster: str
    raycluster: dict = field(repr=False, default_factory=dict)
    dashboard_port: Optional[int] = None

    def port(self, kind: str) -> int:
        """The service's ``"client"`` or ``"dashboard"`` port; :class:`K8sError` if it has none."""
        port = self.ray_client_port if kind == "client" else self.dashboard_port
        if port is None:
            name, number = HEAD_PORTS[kind]
            raise K8sError(f"service {self.namespace}/{self.name} exposes no {kind} port (a port "
                           f"named {name!r} or {number})")
        return port


def get_raycluster(api: KubeApi, namespace: str, cluster: str) -> dict:
    """The RayCluster custom object ``namespace/cluster``.

    Raises :class:`K8sError` when it is missing, naming the RayClusters that do exist or
    telling that the KubeRay operator is not installed.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        return api_call(api, f"read RayCluster {namespace}/{cluster}",
                        api.custom.get_namespaced_custom_object,
                        RAY_GROUP, RAY_API_VERSION, namespace, RAYCLUSTER_PLURAL, cluster)
    except ApiException as exc:
        if exc.status != 404:
            raise K8sError(f"reading RayCluster {namespace}/{cluster} failed: "
                           f"HTTP {exc.status} {exc.reason}") from None
        hint = ""
        try:
            items = api_call(api, f"list RayClusters in {namespace}",
                             api.custom.list_namespaced_custom_object,
                             RAY_GROUP, RAY_API_VERSION, namespace, RAYCLUSTER_PLURAL)
            names = sorted(i["metadata"]["name"] for i in items.get("items", []))
            hint = (f"; RayClusters in {namespace!r}: {', '.join(names)}" if names else
                    f"; there is no RayCluster in {namespace!r}: deploy one with "
                    "`kubectl apply -k k8s/`")
        except ApiException:
            hint = ("; the ray.io/v1 API is not served: is the KubeRay operator installed? "
                    "(helm install kuberay-operator kuberay/kuberay-operator)")
        except K8sError:
            pass
        raise K8sError(f"RayCluster {cluster!r} (ray.io/v1 rayclusters) not found in "
                       f"namespace {namespace!r}{hint}") from None


def find_head_service(api: KubeApi, namespace: str, cluster: str,
                      require: str = "client") -> HeadService:
    """Find the RayCluster ``cluster`` in ``namespace`` and its head service.

    Looks up, in order, the namespace, the RayCluster custom object and the Service
    ``<cluster>-head-svc``; returns its name and ports (the port named ``client``, else
    10001; the port named ``dashboard``, else 8265). Each missing piece, and a missing
    ``require`` port (``"client"`` or ``"dashboard"``), is a :class:`K8sError` naming it.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        api_call(api, f"read namespace {namespace}", api.core.read_namespace, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise K8sError(f"namespace {namespace!r} not found on the Kubernetes API server "
                           f"at {api.host} (pass --k8s-namespace)") from None
        raise K8sError(f"reading namespace {namespace!r} failed: HTTP {exc.status} "
                       f"{exc.reason}") from None
    except _Forbidden:  # may not read namespaces: the RayCluster lookup will tell
        pass
    raycluster = get_raycluster(api, namespace, cluster)
    svc_name = f"{cluster}-head-svc"
    try:
        svc = api_call(api, f"read service {namespace}/{svc_name}",
                       api.core.read_namespaced_service, svc_name, namespace)
    except ApiException as exc:
        state = (raycluster.get("status") or {}).get("state", "unknown")
        raise K8sError(
            f"head service {svc_name!r} of RayCluster {cluster!r} not found in namespace "
            f"{namespace!r} (HTTP {exc.status}); the KubeRay operator creates it with the "
            f"head pod; RayCluster state: {state}") from None
    ports = list(svc.spec.ports or [])
    found: dict[str, Optional[int]] = {}
    for kind, (port_name, number) in HEAD_PORTS.items():
        port = next((p.port for p in ports if p.name == port_name), None)
        if port is None:
            port = next((p.port for p in ports if p.port == number), None)
        found[kind] = None if port is None else int(port)
    if found[require] is None:
        port_name, number = HEAD_PORTS[require]
        what = "Ray Client" if require == "client" else "dashboard (Ray Jobs)"
        raise K8sError(f"service {namespace}/{svc_name} exposes no {what} port (a port "
                       f"named {port_name!r} or {number}); ports: "
                       f"{[(p.name, p.port) for p in ports]}")
    return HeadService(name=svc_name, ray_client_port=found["client"], namespace=namespace,
                       cluster=cluster, raycluster=raycluster, dashboard_port=found["dashboard"])
