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
"""
from __future__ import annotations

import atexit
import base64
import collections
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Optional

from .ray_client import RayAuthEnv, child_env, init_ray_client, no_auto_init
from .ray_client import probe_ray_client as _probe_ray_client

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
    "scale_worker_group",
    "worker_group_cpus",
    "wait_for_nodes",
    "describe_cluster",
    "connect_k8s",
]

RAY_GROUP = "ray.io"
RAY_API_VERSION = "v1"
RAYCLUSTER_PLURAL = "rayclusters"
RAY_CLIENT_PORT = 10001
DEFAULT_NAMESPACE = "default"
DEFAULT_CLUSTER = "kernelshap"
DEFAULT_WORKER_GROUP = "workers"
#: (connect, read) timeout in seconds of every Kubernetes API call
API_TIMEOUT = (3.0, 10.0)
#: the data key of the token Secret (KubeRay's convention)
TOKEN_SECRET_KEY = "auth_token"
TOKEN_HELP = (
    "set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it), e.g. "
    "export RAY_AUTH_TOKEN=$(kubectl get secret {secret} -n {ns} "
    "-o jsonpath='{{.data.{key}}}' | base64 -d)"
)


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


def _call(api: KubeApi, what: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
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
            f"while trying to {what}: {type(exc).__name__}: {_short(exc)}") from None


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[:limit] + "..."


# --------------------------------------------------------------------------- lookups


@dataclass
class HeadService:
    """The head service of a RayCluster and its Ray Client port."""

    name: str
    ray_client_port: int
    namespace: str
    cluster: str
    raycluster: dict = field(repr=False, default_factory=dict)


def _get_raycluster(api: KubeApi, namespace: str, cluster: str) -> dict:
    from kubernetes.client.exceptions import ApiException

    try:
        return _call(api, f"read RayCluster {namespace}/{cluster}",
                     api.custom.get_namespaced_custom_object,
                     RAY_GROUP, RAY_API_VERSION, namespace, RAYCLUSTER_PLURAL, cluster)
    except ApiException as exc:
        if exc.status != 404:
            raise K8sError(f"reading RayCluster {namespace}/{cluster} failed: "
                           f"HTTP {exc.status} {exc.reason}") from None
        hint = ""
        try:
            items = _call(api, f"list RayClusters in {namespace}",
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


def find_head_service(api: KubeApi, namespace: str, cluster: str) -> HeadService:
    """Find the RayCluster ``cluster`` in ``namespace`` and its head service.

    Looks up, in order, the namespace, the RayCluster custom object and the Service
    ``<cluster>-head-svc``; returns its name and Ray Client port (the port named
    ``client``, else 10001). Each missing piece is a :class:`K8sError` naming it.
    """
    from kubernetes.client.exceptions import ApiException

    try:
        _call(api, f"read namespace {namespace}", api.core.read_namespace, namespace)
    except ApiException as exc:
        if exc.status == 404:
            raise K8sError(f"namespace {namespace!r} not found on the Kubernetes API server "
                           f"at {api.host} (pass --k8s-namespace)") from None
        raise K8sError(f"reading namespace {namespace!r} failed: HTTP {exc.status} "
                       f"{exc.reason}") from None
    except _Forbidden:  # may not read namespaces: the RayCluster lookup will tell
        pass
    raycluster = _get_raycluster(api, namespace, cluster)
    svc_name = f"{cluster}-head-svc"
    try:
        svc = _call(api, f"read service {namespace}/{svc_name}",
                    api.core.read_namespaced_service, svc_name, namespace)
    except ApiException as exc:
        state = (raycluster.get("status") or {}).get("state", "unknown")
        raise K8sError(
            f"head service {svc_name!r} of RayCluster {cluster!r} not found in namespace "
            f"{namespace!r} (HTTP {exc.status}); the KubeRay operator creates it with the "
            f"head pod; RayCluster state: {state}") from None
    ports = list(svc.spec.ports or [])
    port = next((p.port for p in ports if p.name == "client"), None)
    if port is None:
        port = next((p.port for p in ports if p.port == RAY_CLIENT_PORT), None)
    if port is None:
        raise K8sError(f"service {namespace}/{svc_name} exposes no Ray Client port (a port "
                       f"named 'client' or {RAY_CLIENT_PORT}); ports: "
                       f"{[(p.name, p.port) for p in ports]}")
    return HeadService(name=svc_name, ray_client_port=int(port), namespace=namespace,
                       cluster=cluster, raycluster=raycluster)


# --------------------------------------------------------------------------- token auth


@dataclass
class AuthRequirement:
    """What a RayCluster says about Ray token authentication."""

    required: bool
    secret_name: Optional[str] = None
    secret_key: str = TOKEN_SECRET_KEY


def _head_env(raycluster: Mapping) -> dict[str, Mapping]:
    """The env entries of the head pod's containers, by name."""
    containers = (raycluster.get("spec", {}).get("headGroupSpec", {}).get("template", {})
                  .get("spec", {}).get("containers", []))
    return {e.get("name"): e for c in containers for e in (c.get("env") or [])}


def auth_requirement(raycluster: Mapping) -> AuthRequirement:
    """Read token-auth settings from a RayCluster: ``spec.authOptions`` or the head env."""
    opts = raycluster.get("spec", {}).get("authOptions") or {}
    name = raycluster.get("metadata", {}).get("name")
    if opts.get("mode") == "token":
        return AuthRequirement(True, opts.get("secretName") or name, TOKEN_SECRET_KEY)
    env = _head_env(raycluster)
    mode = (env.get("RAY_AUTH_MODE") or {}).get("value", "")
    if str(mode).lower() != "token":
        return AuthRequirement(False)
    ref = ((env.get("RAY_AUTH_TOKEN") or {}).get("valueFrom") or {}).get("secretKeyRef") or {}
    return AuthRequirement(True, ref.get("name"), ref.get("key", TOKEN_SECRET_KEY))


def resolve_token(api: Optional[KubeApi], namespace: str, auth: AuthRequirement,
                  token: Optional[str] = None) -> Optional[str]:
    """Find the Ray auth token: argument, $RAY_AUTH_TOKEN, $RAY_AUTH_TOKEN_PATH, Secret.

    Returns None when none is found and the cluster does not declare token auth; raises
    :class:`K8sError` when it does.
    """
    if token:
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path:
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError as exc:
            raise K8sError(f"RAY_AUTH_TOKEN_PATH={path!r} cannot be read: {exc}") from None
        if not value:
            raise K8sError(f"RAY_AUTH_TOKEN_PATH={path!r} is empty")
        return value
    if not auth.required:
        return None
    why = "the RayCluster names no Secret for it"
    if api is not None and auth.secret_name:
        from kubernetes.client.exceptions import ApiException
        try:
            secret = _call(api, f"read Secret {namespace}/{auth.secret_name}",
                           api.core.read_namespaced_secret, auth.secret_name, namespace)
            data = (secret.data or {}).get(auth.secret_key)
            if data:
                return base64.b64decode(data).decode().strip()
            why = f"Secret {auth.secret_name!r} has no key {auth.secret_key!r}"
        except ApiException as exc:
            why = f"Secret {auth.secret_name!r} not readable (HTTP {exc.status})"
        except K8sError as exc:
            why = str(exc)
    raise K8sError(
        "the RayCluster requires Ray token authentication (RAY_AUTH_MODE=token) but no token "
        f"was found ({why}): " + TOKEN_HELP.format(
            secret=auth.secret_name or "<secret>", ns=namespace, key=auth.secret_key))


def probe_ray_client(host: str, port: int, token: Optional[str], *, timeout: float,
                     what: str = "Ray Client server") -> None:
    """Wait until the Ray Client server at ``host:port`` answers a PING (gRPC).

    :func:`explainers.cluster.ray_client.probe_ray_client` with :class:`K8sError` and the token help
    of a RayCluster (its Secret): raises at once on UNAUTHENTICATED (missing / wrong token)
    and after ``timeout`` s when it never answers.
    """
    def error(message: str, **_: Any) -> K8sError:
        return K8sError(message)

    _probe_ray_client(host, port, token, timeout=timeout, what=what, error=error,
                      token_help="set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH) to the value of "
                                 "the Secret the RayCluster reads RAY_AUTH_TOKEN from (key "
                                 f"{TOKEN_SECRET_KEY!r})")


# --------------------------------------------------------------------------- versions


def _py_tuple(version: Any) -> tuple[int, int]:
    if isinstance(version, str):
        parts = version.split(".")
        return int(parts[0]), int(parts[1])
    return int(version[0]), int(version[1])


def _installed_version(module: str) -> Optional[str]:
    """``module.__version__`` of an importable module in this process, else None."""
    try:
        import importlib
        return str(importlib.import_module(module).__version__)
    except Exception:
        return None


def _major_minor(version: str) -> tuple[str, ...]:
    return tuple(re.split(r"[.+]", version)[:2])


def compare_versions(cluster_ray: str, cluster_python: Any, *,
                     local_ray: Optional[str] = None,
                     local_python: Optional[Any] = None,
                     cluster_numpy: Optional[str] = None,
                     cluster_sklearn: Optional[str] = None,
                     local_numpy: Optional[str] = None,
                     local_sklearn: Optional[str] = None,
                     check_model_libs: bool = False) -> None:
    """Raise K8sError unless Ray versions are equal and Python ``major.minor`` are equal.

    NumPy and scikit-learn, whose objects (the model, the data) are cloudpickled to the
    cluster, are compared too: NumPy ``major.minor`` must be equal, scikit-learn exactly
    (its pickles are only supported by the version that wrote them). A library is compared
    when its ``cluster_*`` version is given, or for both when ``check_model_libs`` is true
    (then None means "not installed on the cluster"). ``local_*`` default to this
    process's versions; a library not installed here is not compared (no model of it can
    be pickled here).
    """
    if local_ray is None:
        import ray
        local_ray = ray.__version__
    local_py = _py_tuple(local_python if local_python is not None else sys.version_info[:2])
    cluster_py = _py_tuple(cluster_python)
    problems = []
    if cluster_ray != local_ray:
        problems.append(f"Ray {cluster_ray} on the cluster, {local_ray} here")
    if cluster_py != local_py:
        problems.append("Python {}.{} on the cluster, {}.{} here".format(*cluster_py, *local_py))
    lib_problems, pins = [], []
    for label, dist, module, there, here, same in (
            ("NumPy", "numpy", "numpy", cluster_numpy, local_numpy,
             lambda a, b: _major_minor(a) == _major_minor(b)),
            ("scikit-learn", "scikit-learn", "sklearn", cluster_sklearn, local_sklearn,
             lambda a, b: a == b)):
        if there is None and not check_model_libs:
            continue
        here = here if here is not None else _installed_version(module)
        if here is None:
            continue
        if there is None:
            lib_problems.append(f"{label} not installed on the cluster, {here} here")
        elif not same(str(there), str(here)):
            lib_problems.append(f"{label} {there} on the cluster, {here} here")
        else:
            continue
        pins.append(f"{dist}=={here}")
    message = []
    if problems:
        tag = "{}-py{}{}".format(local_ray, *local_py)
        message.append(
            "Ray/Python version mismatch between this client and the cluster: "
            + "; ".join(problems) + ". Ray Client needs the same Ray version and Python "
            f"major.minor: build the cluster image from rayproject/ray:{tag} (k8s/Dockerfile, "
            f"RAY_VERSION={local_ray}) or install ray=={cluster_ray} on Python "
            "{}.{} here.".format(*cluster_py))
    if lib_problems:
        message.append(
            "NumPy/scikit-learn version mismatch between this client and the cluster: "
            + "; ".join(lib_problems) + ". The model and data are cloudpickled to the "
            "cluster, which needs the same NumPy major.minor and the same scikit-learn: "
            "regenerate k8s/constraints.txt here (python k8s/constraints.py > "
            "k8s/constraints.txt; it pins " + ", ".join(pins) + ") and rebuild the "
            "cluster image from k8s/Dockerfile under a new tag, or install the cluster's "
            "versions here.")
    if message:
        raise K8sError(" ".join(message))


def _rephrase_init_error(exc: BaseException, address: str) -> Optional[K8sError]:
    """Turn Ray Client's own connect errors into K8sError (None: not one we know)."""
    text = str(exc)
    if "Version mismatch" in text:
        ray_v = re.findall(r"Ray: (\S+)", text)
        py_v = re.findall(r"Python: (\S+)", text)
        detail = ""
        if len(ray_v) >= 2 and len(py_v) >= 2:
            try:
                compare_versions(ray_v[0], py_v[0], local_ray=ray_v[1], local_python=py_v[1])
            except K8sError as err:
                return K8sError(f"connecting to {address} failed: {err}")
            detail = "(patch-level difference only)"
        return K8sError(f"connecting to {address} failed: Ray/Python version mismatch "
                        f"{detail}: {_short(exc, 600)}")
    if "authentication" in text.lower() or "UNAUTHENTICATED" in text:
        return K8sError(f"connecting to {address} failed: Ray token authentication: "
                        f"{_short(exc, 600)}; set RAY_AUTH_TOKEN to the cluster's token")
    if isinstance(exc, ConnectionError):
        return K8sError(f"connecting to {address} failed: {exc} (is the port-forward alive "
                        "and the head pod running?)")
    return None


def cluster_versions(timeout: float = 60.0) -> dict[str, Any]:
    """Run a zero-CPU task on the connected cluster: its Ray, Python and project versions,
    and those of NumPy and scikit-learn (the model and data are pickled across).

    Returns ``{"ray": str, "python": (major, minor), "explainers": str | None,
    "numpy": str | None, "sklearn": str | None, "node_id": str}`` (None: not importable).
    """
    import ray

    @ray.remote(num_cpus=0, max_retries=0)
    def _versions() -> dict:
        import importlib
        import sys as _sys

        import ray as _ray
        try:
            project = importlib.import_module("explainers").__version__
        except Exception:  # not installed on the cluster
            project = None
        libs = {}
        for key, module in (("numpy", "numpy"), ("sklearn", "sklearn")):
            try:
                libs[key] = str(importlib.import_module(module).__version__)
            except Exception:  # not installed on the cluster
                libs[key] = None
        return {"ray": _ray.__version__, "python": tuple(_sys.version_info[:2]),
                "explainers": project, **libs,
                "node_id": _ray.get_runtime_context().get_node_id()}

    try:
        return ray.get(_versions.remote(), timeout=timeout)
    except Exception as exc:
        raise K8sError(f"the version-check task did not complete on the cluster within "
                       f"{timeout:.0f} s: {type(exc).__name__}: {_short(exc)}") from None


# --------------------------------------------------------------------------- port-forward

_LIVE_FORWARDS: "weakref.WeakSet[PortForward]" = weakref.WeakSet()


@atexit.register
def _close_all_forwards() -> None:  # pragma: no cover - runs at interpreter exit
    for pf in list(_LIVE_FORWARDS):
        pf.close()


#: a process that kills ``argv[1]`` (kubectl) when its stdin reaches EOF without "done":
#: the parent died (its end of the pipe closed with it) before closing the port-forward
_WATCHDOG = r"""
import os, signal, sys, time
pid = int(sys.argv[1])
try:
    data = sys.stdin.buffer.read()
except BaseException:
    data = b""
if data.startswith(b"done"):
    sys.exit(0)
sig = getattr(signal, "SIGTERM", None)
for attempt in range(2):
    try:
        os.kill(pid, sig if attempt == 0 else getattr(signal, "SIGKILL", sig))
    except OSError:
        sys.exit(0)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except OSError:
            sys.exit(0)
        time.sleep(0.1)
"""


def _die_with_parent_preexec() -> Optional[Callable[[], None]]:
    """A ``preexec_fn`` that makes the child get SIGTERM when this process dies (Linux
    ``prctl(PR_SET_PDEATHSIG)``), or None where that is not available.

    The death signal follows the *thread* that forks, so it is used only from the main
    thread; elsewhere :class:`PortForward` runs a watchdog process instead.
    """
    if not sys.platform.startswith("linux"):
        return None
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # pragma: no cover - no libc prctl
        return None
    parent = os.getpid()

    def preexec() -> None:  # runs in the child between fork and exec: no allocation, no locks
        prctl(1, signal.SIGTERM, 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the parent died before prctl took effect
            os.kill(os.getpid(), signal.SIGTERM)

    return preexec


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on ``host`` right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class PortForward:
    """``kubectl port-forward svc/NAME LOCAL:REMOTE`` as a context manager.

    ``start()`` launches kubectl on a free local port, reads its stdout until the
    "Forwarding from 127.0.0.1:LOCAL -> REMOTE" line (within ``timeout``), then waits until
    the local port accepts a TCP connection. ``close()`` terminates kubectl (SIGTERM, then
    SIGKILL after ``grace`` s) and reaps it; it also runs at interpreter exit. kubectl dies
    with this process even when it is SIGKILLed (Linux: ``PR_SET_PDEATHSIG``; elsewhere, or
    when started from another thread, a watchdog process), and it is started without the
    Ray auth variables in its environment.
    """

    def __init__(self, service: str, remote_port: int, namespace: str, *,
                 kubeconfig: Optional[str] = None, context: Optional[str] = None,
                 local_port: Optional[int] = None, kubectl: str = "kubectl",
                 timeout: float = 30.0, grace: float = 5.0):
        self.service = service
        self.remote_port = int(remote_port)
        self.namespace = namespace
        self.kubeconfig = kubeconfig
        self.context = context
        self.local_port = local_port
        self.kubectl = kubectl
        self.timeout = timeout
        self.grace = grace
        self.proc: Optional[subprocess.Popen] = None
        self._stderr: collections.deque[str] = collections.deque(maxlen=50)
        self._lines: "collections.deque[str]" = collections.deque(maxlen=50)
        self._ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._watchdog: Optional[subprocess.Popen] = None
        self._watchdog_pipe: Optional[int] = None

    # -- state
    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc else None

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def alive(self) -> bool:
        """True while kubectl runs."""
        return self.proc is not None and self.proc.poll() is None

    def stderr_text(self) -> str:
        return "\n".join(self._stderr).strip()

    def check(self) -> None:
        """Raise K8sError when kubectl has exited (with its exit code and stderr)."""
        if self.proc is None:
            raise K8sError("the kubectl port-forward was not started")
        code = self.proc.poll()
        if code is not None:
            self._join_readers(1.0)
            raise K8sError(
                f"kubectl port-forward to svc/{self.service} in namespace {self.namespace!r} "
                f"(pid {self.proc.pid}) exited with code {code}: "
                f"{self.stderr_text() or '(no stderr)'}")

    # -- lifecycle
    def command(self) -> list[str]:
        cmd = [self.kubectl, "port-forward", f"svc/{self.service}",
               f"{self.local_port}:{self.remote_port}", "-n", self.namespace,
               "--address", "127.0.0.1"]
        if self.kubeconfig:
            cmd += ["--kubeconfig", self.kubeconfig]
        if self.context:
            cmd += ["--context", self.context]
        return cmd

    def start(self) -> "PortForward":
        exe = shutil.which(self.kubectl)
        if exe is None:
            raise K8sError(f"{self.kubectl!r} not found on PATH: install kubectl "
                           "(https://kubernetes.io/docs/tasks/tools/) to reach the Ray head")
        if self.local_port is None:
            self.local_port = free_port()
        cmd = self.command()
        cmd[0] = exe
        # kubectl gets no Ray auth token and dies with this process (even a SIGKILLed one)
        preexec = _die_with_parent_preexec()
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, bufsize=1,
                                     env=child_env(), preexec_fn=preexec)
        _LIVE_FORWARDS.add(self)
        if preexec is None:
            self._start_watchdog()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True, name="pf-stdout"),
            threading.Thread(target=self._read_stderr, daemon=True, name="pf-stderr"),
        ]
        for t in self._threads:
            t.start()
        try:
            self._wait_ready()
        except BaseException:
            self.close()
            raise
        return self

    def _start_watchdog(self) -> None:
        """A process that kills kubectl once this one is gone (EOF on a pipe only we hold)."""
        assert self.proc is not None
        read_end, write_end = os.pipe()  # not inheritable: no other child keeps it open
        try:
            self._watchdog = subprocess.Popen(
                [sys.executable, "-c", _WATCHDOG, str(self.proc.pid)], stdin=read_end,
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=child_env(),
                start_new_session=True)
        except BaseException:
            os.close(write_end)
            raise
        finally:
            os.close(read_end)
        self._watchdog_pipe = write_end

    def _stop_watchdog(self) -> None:
        """Tell the watchdog kubectl was closed here (so it kills nothing) and reap it."""
        fd, self._watchdog_pipe = self._watchdog_pipe, None
        if fd is not None:
            try:
                os.write(fd, b"done")
            except OSError:  # pragma: no cover - the watchdog already exited
                pass
            os.close(fd)
        dog, self._watchdog = self._watchdog, None
        if dog is not None:
            try:
                dog.wait(self.grace)
            except subprocess.TimeoutExpired:  # pragma: no cover
                dog.kill()
                dog.wait(self.grace)

    def _read_stdout(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        want = re.compile(rf"^Forwarding from 127\.0\.0\.1:{self.local_port} -> \d+")
        for line in self.proc.stdout:  # keep draining: kubectl logs every connection
            line = line.rstrip()
            self._lines.append(line)
            if want.match(line):
                self._ready.set()

    def _read_stderr(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line.rstrip())

    def _join_readers(self, timeout: float) -> None:
        for t in self._threads:
            t.join(timeout)

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.timeout
        while not self._ready.is_set():
            self.check()
            if time.monotonic() > deadline:
                raise K8sError(
                    f"kubectl port-forward to svc/{self.service} printed no 'Forwarding from "
                    f"127.0.0.1:{self.local_port}' line within {self.timeout:.0f} s; stdout: "
                    f"{list(self._lines)[-3:]}; stderr: {self.stderr_text() or '(none)'}")
            self._ready.wait(0.05)
        while True:
            self.check()
            try:
                with socket.create_connection((self.host, self.local_port), timeout=1.0):
                    return
            except OSError as exc:
                if time.monotonic() > deadline:
                    raise K8sError(f"local port {self.local_port} of the kubectl port-forward "
                                   f"does not accept connections: {exc}") from None
                time.sleep(0.05)

    def close(self) -> None:
        """Terminate kubectl (SIGTERM, SIGKILL after ``grace`` s) and reap it. Idempotent."""
        proc = self.proc
        if proc is None:
            return
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(self.grace)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(self.grace)
            except ProcessLookupError:  # pragma: no cover - raced with its exit
                pass
        else:
            proc.wait()
        self._stop_watchdog()
        self._join_readers(2.0)
        for stream in (proc.stdout, proc.stderr):
            try:
                if stream:
                    stream.close()
            except Exception:  # pragma: no cover
                pass
        _LIVE_FORWARDS.discard(self)

    def __enter__(self) -> "PortForward":
        return self.start() if self.proc is None else self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __del__(self) -> None:  # pragma: no cover - safety net
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(1)
        except Exception:
            pass


# --------------------------------------------------------------------------- scaling


def _find_group(raycluster: Mapping, group: str) -> tuple[int, dict]:
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


def worker_group_cpus(raycluster: Mapping, group: str = DEFAULT_WORKER_GROUP) -> float:
    """Ray CPUs of one pod of ``group``: rayStartParams num-cpus, else the CPU limit/request."""
    _, g = _find_group(raycluster, group)
    params = g.get("rayStartParams") or {}
    if "num-cpus" in params:
        return float(params["num-cpus"])
    containers = g.get("template", {}).get("spec", {}).get("containers", [])
    res = (containers[0].get("resources") or {}) if containers else {}
    for kind in ("limits", "requests"):
        if "cpu" in (res.get(kind) or {}):
            return _cpu_quantity(res[kind]["cpu"])
    raise K8sError(f"cannot tell the CPUs of a {group!r} pod: set rayStartParams num-cpus "
                   "or a CPU limit")


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
    rc = _get_raycluster(api, namespace, cluster)
    i, g = _find_group(rc, group)
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

    rc = _get_raycluster(api, namespace, cluster)
    i, g = _find_group(rc, group)
    base = f"/spec/workerGroupSpecs/{i}"
    ops: list[dict[str, Any]] = [{"op": "test", "path": f"{base}/groupName", "value": group}]
    for key in ("minReplicas", "maxReplicas", "replicas"):
        if before.get(key) is not None and g.get(key) != before[key]:
            ops.append({"op": "replace", "path": f"{base}/{key}", "value": before[key]})
    if len(ops) > 1:
        _patch(api, namespace, cluster, ops, ApiException)


def _patch(api: KubeApi, namespace: str, cluster: str, ops: list, api_exc: type) -> dict:
    try:
        return _call(api, f"patch RayCluster {namespace}/{cluster}",
              api.custom.patch_namespaced_custom_object,
              RAY_GROUP, RAY_API_VERSION, namespace, RAYCLUSTER_PLURAL, cluster, ops,
              _content_type="application/json-patch+json")
    except api_exc as exc:
        raise K8sError(f"patching RayCluster {namespace}/{cluster} failed: HTTP {exc.status} "
                       f"{exc.reason}: {_short(exc.body or '')}") from None


def _alive_nodes() -> int:
    import ray
    return sum(1 for n in ray.nodes() if n.get("Alive"))


def wait_for_nodes(n: int, timeout: float, *, poll: float = 1.0,
                   count: Callable[[], int] = _alive_nodes,
                   hint: str = "") -> int:
    """Poll the alive Ray node count until it is at least ``n``; K8sError after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        have = count()
        if have >= n:
            return have
        if time.monotonic() >= deadline:
            raise K8sError(f"only {have} of {n} Ray nodes alive after {timeout:.0f} s{hint}")
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def describe_cluster() -> dict[str, Any]:
    """Nodes and CPUs of the connected Ray cluster.

    Returns ``{"ray_nodes": int, "ray_cpus": float, "ray_node_cpus": [float, ...]}``.
    """
    import ray

    alive = [n for n in ray.nodes() if n.get("Alive")]
    cpus = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in alive]
    return {"ray_nodes": len(alive), "ray_cpus": sum(cpus), "ray_node_cpus": sorted(cpus)}


# --------------------------------------------------------------------------- connection


class K8sConnection:
    """A KubeRay cluster reached through ``kubectl port-forward`` (see :func:`connect_k8s`).

    Attributes: ``namespace``, ``cluster``, ``api`` (:class:`KubeApi`), ``head``
    (:class:`HeadService`), ``port_forward``, ``address`` (``ray://127.0.0.1:PORT``),
    ``token`` (the Ray auth token in use, or None).
    """

    def __init__(self, namespace: str, cluster: str, api: KubeApi, head: HeadService,
                 port_forward: PortForward, token: Optional[str], *, timeout: float,
                 group: str = DEFAULT_WORKER_GROUP):
        self.namespace = namespace
        self.cluster = cluster
        self.api = api
        self.head = head
        self.port_forward = port_forward
        self.token = token
        self.timeout = timeout
        self.group = group
        self.address = f"ray://127.0.0.1:{port_forward.local_port}"
        self.versions: Optional[dict[str, Any]] = None
        self._auth = RayAuthEnv(token)
        self._connected = False
        self._scaled: Optional[dict[str, Optional[int]]] = None
        self._closed = False

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

    # -- Ray
    def connect(self, *, check_versions: bool = True, require_project: bool = True,
                **init_kwargs: Any) -> Any:
        """``ray.init(self.address, **init_kwargs)`` with token, version and project checks.

        Returns Ray's client context. ``require_project``: fail when ``explainers`` cannot
        be imported on the cluster (it is installed in the image built from k8s/Dockerfile,
        or shipped with ``runtime_env={"py_modules": [...]}``).
        """
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
            err = _rephrase_init_error(exc, self.address)
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
        ``k8s_worker_replicas``, ``ray_nodes``, ``ray_cpus``, ``ray_node_cpus``."""
        self.ensure_alive()
        info: dict[str, Any] = {"k8s_cluster": self.cluster, "k8s_namespace": self.namespace,
                                "k8s_worker_group": self.group}
        try:
            rc = _get_raycluster(self.api, self.namespace, self.cluster)
            info["k8s_worker_replicas"] = _find_group(rc, self.group)[1].get("replicas")
        except K8sError:
            info["k8s_worker_replicas"] = None
        info.update(describe_cluster())
        return info

    # -- scaling
    def worker_cpus(self) -> float:
        """Ray CPUs per pod of the worker group."""
        return worker_group_cpus(_get_raycluster(self.api, self.namespace, self.cluster),
                                 self.group)

    def scale_to(self, replicas: int, *, timeout: Optional[float] = None) -> int:
        """Set the worker group to ``replicas`` pods and wait until they are Ray nodes.

        Remembers the original counts the first time (``restore()`` puts them back).
        Returns the number of alive Ray nodes.
        """
        self.ensure_alive()
        before = scale_worker_group(self.api, self.namespace, self.cluster, self.group,
                                    replicas)
        if self._scaled is None:
            self._scaled = before
        # the head plus every worker pod of every group, as the RayCluster now asks
        rc = _get_raycluster(self.api, self.namespace, self.cluster)
        expected = 1 + sum(int(g.get("replicas") or 0)
                           for g in rc.get("spec", {}).get("workerGroupSpecs") or [])
        hint = (f"; check `kubectl get pods -n {self.namespace} -l ray.io/cluster="
                f"{self.cluster}`: Pending pods mean the Kubernetes cluster has no room for "
                f"{replicas} '{self.group}' pods (add nodes or lower --workers)")
        return wait_for_nodes(expected, self.timeout if timeout is None else timeout,
                              hint=hint)

    def ensure_cpus(self, cpus: float, *, timeout: Optional[float] = None) -> int:
        """Scale up (never down) so that the cluster has at least ``cpus`` Ray CPUs.

        Returns the worker replicas now requested.
        """
        have = describe_cluster()["ray_cpus"]
        rc = _get_raycluster(self.api, self.namespace, self.cluster)
        _, g = _find_group(rc, self.group)
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
                group: str = DEFAULT_WORKER_GROUP, kubectl: str = "kubectl") -> K8sConnection:
    """Find RayCluster ``cluster`` and start a port-forward to its Ray Client port.

    Resolves the kubeconfig, the head service and the auth token, then runs
    ``kubectl port-forward`` on a free local port and waits until it answers. Call
    ``.connect()`` on the result to ``ray.init`` through it; ``.close()`` (or ``with``)
    undoes everything. All failures are :class:`K8sError`.
    """
    api = load_kube_api(kubeconfig, context)
    try:
        head = find_head_service(api, namespace, cluster)
        auth = auth_requirement(head.raycluster)
        tok = resolve_token(api, namespace, auth, token)
        pf = PortForward(head.name, head.ray_client_port, namespace,
                         kubeconfig=api.kubeconfig, context=context, kubectl=kubectl,
                         timeout=timeout)
        pf.start()
    except BaseException:
        api.close()
        raise
    return K8sConnection(namespace, cluster, api, head, pf, tok, timeout=timeout,
                         group=group)


def iter_manifest_images(raycluster: Mapping) -> Iterator[str]:
    """All container images of a RayCluster (head and worker groups)."""
    spec = raycluster.get("spec", {})
    templates = [spec.get("headGroupSpec", {}).get("template", {})]
    templates += [g.get("template", {}) for g in spec.get("workerGroupSpecs") or []]
    for t in templates:
        for c in t.get("spec", {}).get("containers", []):
            yield c.get("image", "")
