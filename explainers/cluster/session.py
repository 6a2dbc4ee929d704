"""Connecting to a Ray cluster for a session: ``local`` (1 or more nodes), ``auto``, ``ray://``, ``k8s``.

``connect(address, ...)`` returns a :class:`ClusterSession`; ``close()`` undoes only
what ``connect`` did: a cluster it started is shut down (every Ray process of it), a
cluster it attached to is only disconnected from. An ``atexit`` hook closes sessions
that were not closed (Ctrl-C, a crash of the caller), so no Ray process is left behind.

Ray is imported only inside the functions that need it.
"""
from __future__ import annotations

import atexit
import os
import platform
import re
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .leftovers import end_leftovers, ray_processes
from .ray_client import (
    ClusterConnectionError,
    RayAuthEnv,
    connection_guard,
    init_ray_client,
    no_auto_init,
    probe_ray_client,
    ray_connected,
    resolve_client_token,
    teardown_call,
)

__all__ = [
    "ADDRESS_FORMS",
    "ClusterConnectionError",
    "ClusterSession",
    "K8sOptions",
    "K8S_TRANSPORTS",
    "DEFAULT_JOB_TIMEOUT",
    "address_mode",
    "connect",
    "connection_guard",
    "no_auto_init",
    "ray_connected",
    "split_cpus",
    "teardown_call",
]

if TYPE_CHECKING:
    from .kuberay import K8sConnection

#: the values ``address`` may take, for error messages
ADDRESS_FORMS = "'local', 'auto', 'ray://HOST:PORT' or 'k8s'"

_RAY_CLIENT = re.compile(r"^ray://(?P<host>[^:/\s]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})/?$")

#: object store per local node unless told otherwise (small: the machine is shared)
DEFAULT_OBJECT_STORE_BYTES = 300 * 1024**2
#: seconds a ``ray://`` head has to answer a PING before ``connect`` says nothing answers
CLIENT_PROBE_TIMEOUT = 5.0


def address_mode(address: str | None) -> str:
    """The mode of an address: ``"local"``, ``"auto"``, ``"client"`` (``ray://``) or ``"k8s"``.

    Raises ``ValueError`` naming the allowed forms for anything else.
    """
    if address is None or address.strip() in ("", "local"):
        return "local"
    address = address.strip()
    if address in ("auto", "k8s"):
        return address
    match = _RAY_CLIENT.match(address)
    if match:
        if not 0 < int(match.group("port")) < 65536:
            raise ValueError(f"Ray address {address!r}: port must be in 1..65535")
        return "client"
    raise ValueError(f"unknown Ray address {address!r}: use {ADDRESS_FORMS}")


def ray_version() -> str:
    """The installed Ray version, without importing Ray."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:  # pragma: no cover - ray is a dependency
        return "not installed"


def split_cpus(total: int, nodes: int) -> list[int]:
    """``total`` CPUs split over ``nodes`` nodes as evenly as possible (first nodes get the rest).

    ``split_cpus(5, 2) == [3, 2]``. Every node gets at least one CPU.
    """
    if nodes < 1:
        raise ValueError(f"nodes must be >= 1, got {nodes}")
    if total < nodes:
        raise ValueError(f"{total} CPUs cannot be split over {nodes} nodes: every node needs at least 1 CPU")
    base, rest = divmod(total, nodes)
    return [base + (1 if i < rest else 0) for i in range(nodes)]


#: how ``--ray-address k8s`` runs: a Ray Job through the dashboard (default), or Ray Client (legacy)
K8S_TRANSPORTS = ("jobs", "client")
#: seconds a Ray Job of the suite may run before it is stopped, unless told otherwise
DEFAULT_JOB_TIMEOUT = 6 * 3600.0


@dataclass
class K8sOptions:
    """How to reach a KubeRay cluster (see ``explainers.cluster.kuberay``).

    ``timeout``: seconds for each lookup, the port-forward and scaling; ``transport``: one of
    :data:`K8S_TRANSPORTS`; ``job_timeout``: seconds the whole Ray Job may take (``jobs`` only).
    """

    namespace: str = "default"
    cluster: str = "kernelshap"
    kubeconfig: str | None = None
    timeout: float = 60.0
    transport: str = "jobs"
    job_timeout: float = DEFAULT_JOB_TIMEOUT


@dataclass
class ClusterSession:
    """A connection of this process to a Ray cluster, and what it started to get it."""

    mode: str
    address: str
    started: bool
    _cluster: Any = None  # ray.cluster_utils.Cluster when we started several local nodes
    _k8s: "K8sConnection | None" = None  # the KubeRay connection when mode == "k8s"
    _info: dict[str, Any] | None = None
    _auth: Any = None  # explainers.cluster.ray_client.RayAuthEnv of a ``ray://`` connection
    _auto_connect: Any = None  # Ray's auto-init setting before this remote session
    _closed: bool = False
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    # ----------------------------------------------------------------- state
    @property
    def is_remote(self) -> bool:
        """Whether the driver talks to the cluster through Ray Client (``ray://`` or ``k8s``)."""
        return self.mode in ("client", "k8s")

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def k8s(self) -> "K8sConnection | None":
        """The KubeRay connection (``None`` unless ``mode == "k8s"``)."""
        return self._k8s

    @property
    def can_scale(self) -> bool:
        """Whether :meth:`ensure_cpus` can add CPUs (a KubeRay worker group)."""
        return self._k8s is not None

    def known_info(self) -> dict[str, Any] | None:
        """:meth:`info` if it was read already, else ``None`` (never contacts the cluster)."""
        return None if self._info is None else dict(self._info)

    def ensure_cpus(self, cpus: float) -> dict[str, Any]:
        """Scale the KubeRay worker group up until the cluster has ``cpus`` CPUs; the new :meth:`info`.

        :meth:`close` puts the original replica count back. ``RuntimeError`` off Kubernetes.
        """
        if self._k8s is None:
            raise RuntimeError(f"a {self.mode!r} Ray cluster cannot be scaled; only --ray-address k8s can")
        self._k8s.ensure_cpus(cpus)
        return self.refresh()

    def machine_info(self) -> dict[str, Any]:
        """pytest-benchmark ``machine_info`` fields: ``ray_version``, ``ray_address_mode``,
        ``ray_nodes``, ``ray_cpus``, ``ray_node_cpus`` and, on Kubernetes, the ``k8s_*`` fields."""
        info = self.info()
        out: dict[str, Any] = {
            "ray_version": info["ray_version"],
            "ray_address_mode": info["address_mode"],
            "ray_nodes": info["nodes"],
            "ray_cpus": info["total_cpus"],
            "ray_node_cpus": info["cpus_per_node"],
        }
        if self._k8s is not None:
            out.update({k: v for k, v in self._k8s.describe().items() if k.startswith("k8s_")})
        return out

    def refresh(self) -> dict[str, Any]:
        """Re-read nodes and CPUs from the cluster (after scaling) and return :meth:`info`."""
        self._info = None
        return self.info()

    def info(self) -> dict[str, Any]:
        """What this session runs on (read once, cached; :meth:`refresh` re-reads).

        Keys: ``address_mode``, ``address``, ``started``, ``ray_version``,
        ``python_version``, ``nodes``, ``cpus_per_node`` (list, one per alive node),
        ``total_cpus``, and ``k8s_cluster`` (``None`` off Kubernetes).
        """
        if self._info is None:
            import ray

            alive = [n for n in ray.nodes() if n.get("Alive", n.get("alive", False))]
            per_node = [float(n.get("Resources", {}).get("CPU", 0.0)) for n in alive]
            total = float(ray.cluster_resources().get("CPU", 0.0))
            k8s_name = self._k8s.cluster if self._k8s is not None else None
            self._info = {
                "address_mode": self.mode,
                "address": self.address,
                "started": self.started,
                "ray_version": ray.__version__,
                "python_version": platform.python_version(),
                "nodes": len(alive),
                "cpus_per_node": [int(c) if c.is_integer() else c for c in per_node],
                "total_cpus": int(total) if total.is_integer() else total,
                "k8s_cluster": k8s_name,
            }
        return dict(self._info)

    def connected(self) -> bool:
        """Whether Ray calls can reach the cluster now (False once a ``ray://`` head died)."""
        return not self._closed and ray_connected()

    def guard(self) -> Any:
        """Context manager: a lost cluster inside it is a :class:`ClusterConnectionError`
        naming :attr:`address` (a ``ConnectionError``), and no Ray call in it starts a
        local Ray::

            with session.guard():
                ray.get(ref)
        """
        return connection_guard(self.address)

    # ----------------------------------------------------------------- teardown
    def close(self) -> None:
        """Disconnect; shut down what :func:`connect` started. Safe to call more than once."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        errors: list[BaseException] = []
        if self._k8s is not None:  # it restores scaling, disconnects Ray and stops kubectl
            try:
                self._k8s.close()
            except BaseException as exc:  # noqa: BLE001 - keep tearing down
                errors.append(exc)
            self._k8s = None
        processes = ray_processes() if self.started and not self.is_remote else []
        try:
            import ray
            from ray._private.client_mode_hook import client_mode_should_convert

            with no_auto_init():  # a dead head must not make Ray start a local one
                if ray_connected() or client_mode_should_convert():
                    ray.shutdown()  # a lost Ray Client is only disconnected
        except BaseException as exc:  # noqa: BLE001 - keep tearing down
            if not self.is_remote or ray_connected():
                errors.append(exc)
        if self._auth is not None:
            try:
                self._auth.release()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            self._auth = None
        if self._cluster is not None:
            try:
                self._cluster.shutdown()
            except BaseException as exc:  # noqa: BLE001
                errors.append(exc)
            self._cluster = None
        if self._auto_connect is not None:
            _restore_auto_connect(self._auto_connect)
            self._auto_connect = None
        end_leftovers(processes)
        _OPEN.discard(self)
        if errors:
            raise RuntimeError(f"closing the Ray session failed: {errors[0]!r}") from errors[0]

    def __enter__(self) -> "ClusterSession":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __hash__(self) -> int:  # sessions live in a set until closed
        return id(self)

    def __eq__(self, other: object) -> bool:
        return self is other


_OPEN: set[ClusterSession] = set()


def _disable_auto_connect() -> bool:
    """Stop Ray from starting a local Ray on ``ray.get``/``ray.kill``... while nothing is
    connected (a remote session's head died); returns the previous setting."""
    from ray._private import auto_init_hook

    previous = bool(auto_init_hook.enable_auto_connect)
    auto_init_hook.enable_auto_connect = False
    return previous


def _restore_auto_connect(previous: bool) -> None:
    if not any(s.is_remote and s._auto_connect is not None for s in _OPEN if not s._closed):
        from ray._private import auto_init_hook

        auto_init_hook.enable_auto_connect = previous


@atexit.register
def _close_all_at_exit() -> None:
    """Close sessions left open (interrupted runs), so no Ray process outlives this one."""
    for session in list(_OPEN):
        try:
            session.close()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass


def connect(
    address: str | None = "local",
    *,
    nodes: int = 1,
    num_cpus: int | None = None,
    object_store_memory: int | None = None,
    k8s: K8sOptions | None = None,
    include_dashboard: bool = False,
    runtime_env: dict[str, Any] | None = None,
) -> ClusterSession:
    """Connect this process to Ray and return the session.

    address:
        ``"local"``: start a cluster on this machine (``nodes`` nodes, ``num_cpus``
        CPUs in total, default all of this machine's, split between the nodes);
        ``"auto"``: attach to the cluster already running on this machine;
        ``"ray://HOST:PORT"``: attach through Ray Client; ``"k8s"``: find a KubeRay
        cluster through ``explainers.cluster.kuberay`` (``k8s`` options) and attach to it.
    nodes, num_cpus, object_store_memory:
        Only for ``local`` (a ``ValueError`` otherwise); ``object_store_memory`` is per node.

    If Ray is already initialised in this process the session reuses that connection
    and ``close()`` leaves it alone.
    """
    mode = address_mode(address)
    if isinstance(nodes, bool) or not isinstance(nodes, int) or nodes < 1:
        raise ValueError(f"nodes must be an int >= 1, got {nodes!r}")
    if mode != "local" and (nodes != 1 or num_cpus is not None):
        raise ValueError(f"nodes and num_cpus apply to address 'local' only, not {address!r}")
    if num_cpus is not None and (isinstance(num_cpus, bool) or not isinstance(num_cpus, int) or num_cpus < 1):
        raise ValueError(f"num_cpus must be an int >= 1, got {num_cpus!r}")

    import ray

    if ray.is_initialized():
        session = ClusterSession(mode=mode, address=str(address or "local"), started=False)
        return session

    store = int(object_store_memory or DEFAULT_OBJECT_STORE_BYTES)
    if mode == "local":
        session = _start_local(nodes, num_cpus, store, include_dashboard, runtime_env)
    elif mode == "auto":
        ray.init(address="auto", runtime_env=runtime_env, log_to_driver=False)
        session = ClusterSession(mode="auto", address=_gcs_address() or "auto", started=False)
    elif mode == "client":
        session = _connect_client(str(address).strip(), runtime_env)
    else:
        session = _connect_k8s(k8s or K8sOptions(), runtime_env)
    if session.is_remote:  # a lost head must end in its error, not in a new local Ray
        session._auto_connect = _disable_auto_connect()
    _OPEN.add(session)
    try:
        session.info()
    except BaseException:
        session.close()
        raise
    return session


def _connect_client(address: str, runtime_env: dict[str, Any] | None) -> ClusterSession:
    """``ray.init("ray://HOST:PORT")`` after a PING that tells a token-protected head, a
    wrong token and an address where nothing answers apart (in seconds, each a
    :class:`ClusterConnectionError` naming the address). The token (``$RAY_AUTH_TOKEN``,
    ``$RAY_AUTH_TOKEN_PATH``) is put in ``os.environ`` only around ``ray.init``."""
    match = _RAY_CLIENT.match(address)
    assert match is not None  # address_mode checked it
    host, port = match.group("host").strip("[]"), int(match.group("port"))
    token = resolve_client_token()
    probe_ray_client(host, port, token, timeout=CLIENT_PROBE_TIMEOUT, what="Ray head",
                     address=address)
    auth = RayAuthEnv(token) if token else None
    try:
        with auth.connecting() if auth else no_auto_init():
            init_ray_client(address, runtime_env=runtime_env, log_to_driver=False)
    except BaseException as exc:
        if auth is not None:
            auth.release()
        if isinstance(exc, ConnectionError) and not isinstance(exc, ClusterConnectionError):
            raise ClusterConnectionError(f"connecting to the Ray head at {address} failed: "
                                         f"{exc}", address=address, reason="unreachable") from exc
        raise
    return ClusterSession(mode="client", address=address, started=False, _auth=auth)


def _gcs_address() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().gcs_address
    except Exception:  # noqa: BLE001 - only for display
        return None


def _start_local(
    nodes: int,
    num_cpus: int | None,
    store: int,
    include_dashboard: bool,
    runtime_env: dict[str, Any] | None,
) -> ClusterSession:
    import ray

    total = num_cpus if num_cpus is not None else (os.cpu_count() or 1)
    if nodes == 1:
        try:
            ray.init(
                num_cpus=total,
                object_store_memory=store,
                include_dashboard=include_dashboard,
                runtime_env=runtime_env,
                log_to_driver=False,
            )
        except BaseException:
            if ray.is_initialized():
                ray.shutdown()
            raise
        return ClusterSession(mode="local", address=_gcs_address() or "local", started=True)

    from ray.cluster_utils import Cluster

    per_node = split_cpus(total, nodes)
    cluster = Cluster()
    try:
        cluster.add_node(
            num_cpus=per_node[0], object_store_memory=store, include_dashboard=include_dashboard
        )
        for cpus in per_node[1:]:
            cluster.add_node(num_cpus=cpus, object_store_memory=store)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, runtime_env=runtime_env, log_to_driver=False)
    except BaseException:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        raise
    return ClusterSession(mode="local", address=cluster.address, started=True, _cluster=cluster)


def _connect_k8s(options: K8sOptions, runtime_env: dict[str, Any] | None) -> ClusterSession:
    """Ray Client through a port-forward (``--k8s-transport client``, the legacy transport)."""
    from .kuberay import connect_k8s

    conn = connect_k8s(
        options.namespace, options.cluster, kubeconfig=options.kubeconfig, timeout=options.timeout
    )
    try:
        init_kwargs: dict[str, Any] = {"log_to_driver": False}
        if runtime_env is not None:
            init_kwargs["runtime_env"] = runtime_env
        conn.connect(**init_kwargs)  # ray.init with the token, version and project checks
    except BaseException:
        conn.close()
        raise
    return ClusterSession(mode="k8s", address=str(conn.address), started=False, _k8s=conn)
