"""Ray Client (``ray://``) plumbing shared by :mod:`explainers.cluster.session` and :mod:`explainers.cluster.kuberay`.

* :func:`init_ray_client`: ``ray.init("ray://...")`` that survives the head's transient
  failures to start a client server.
* :func:`probe_ray_client`: a gRPC PING that tells a token-protected head (UNAUTHENTICATED)
  from one that does not answer, in seconds instead of Ray Client's 30 s "connection timeout".
* :class:`RayAuthEnv`: the token in ``os.environ`` only around ``ray.init``.
* :func:`ray_connected`, :func:`no_auto_init`, :func:`teardown_call`: teardown that never
  starts a local Ray (Ray's ``ray.kill``/``ray.get``... call ``ray.init()`` when nothing
  is connected, e.g. after the ``ray://`` head died).
* :class:`ClusterConnectionError` and :func:`connection_guard`: a lost head is a
  ``ConnectionError`` naming its address.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Optional

# The Ray Client proxier on the head starts one server process per client. On a loaded
# machine that start can time out, or the new process can die before the proxier looks at
# it (psutil.ZombieProcess); the proxier then answers "Initialization failure from server".
_TRANSIENT_START_FAILURES = (
    "Starting Ray client server failed",
    "SpecificServer startup failed",
    "ZombieProcess",
    "Initialization failure from server",
)
_PERMANENT = ("Version mismatch", "authentication", "UNAUTHENTICATED")

#: how a missing token is set for a ``ray://`` head (the k8s module names its Secret instead)
TOKEN_HELP = ("set RAY_AUTH_TOKEN (or RAY_AUTH_TOKEN_PATH to a file holding it) to the head's "
              "token (`ray get-auth-token` on the head prints it)")
#: what Ray Client says once its connection to the head is gone
_LOST_MARKERS = (
    "Client is shutting down",
    "Ray Client is not connected",
    "Failed to reconnect",
    "connection timeout",
    "Connection to the head was lost",
    "StatusCode.UNAVAILABLE",
    "Socket closed",
)


class ClusterConnectionError(ConnectionError):
    """The Ray cluster at ``address`` cannot be reached or was lost.

    ``reason``: ``"token"`` (the head needs a token and none is set), ``"rejected"`` (wrong
    token), ``"unreachable"`` (nothing answers) or ``"lost"`` (the head went away in use).
    """

    def __init__(self, message: str, *, address: str = "", reason: str = "lost") -> None:
        super().__init__(message)
        self.address = address
        self.reason = reason


def is_transient_start_failure(exc: BaseException) -> bool:
    """Whether ``ray.init("ray://...")`` failed because the head could not start its server."""
    text = str(exc)
    if any(p.lower() in text.lower() for p in _PERMANENT):
        return False
    return isinstance(exc, ConnectionAbortedError) or any(
        marker in text for marker in _TRANSIENT_START_FAILURES)


def init_ray_client(address: str, *, attempts: int = 3, pause: float = 1.0,
                    **init_kwargs: Any) -> Any:
    """``ray.init(address, **init_kwargs)``, retried when the head fails to start the server.

    Any other error, and the last transient one, propagates unchanged. Returns Ray's
    client context.
    """
    import ray

    for attempt in range(1, attempts + 1):
        try:
            return ray.init(address, **init_kwargs)
        except Exception as exc:
            with no_auto_init():
                if ray.is_initialized():
                    ray.shutdown()
            if attempt == attempts or not is_transient_start_failure(exc):
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


# --------------------------------------------------------------------------- token


def resolve_client_token(token: Optional[str] = None) -> Optional[str]:
    """The token for a ``ray://`` head: ``token``, ``$RAY_AUTH_TOKEN``, the file named by
    ``$RAY_AUTH_TOKEN_PATH``, and (only with ``RAY_AUTH_MODE=token``, as Ray does it)
    ``~/.ray/auth_token``; None when there is none."""
    if token and token.strip():
        return token.strip()
    if os.environ.get("RAY_AUTH_TOKEN", "").strip():
        return os.environ["RAY_AUTH_TOKEN"].strip()
    paths = [os.environ.get("RAY_AUTH_TOKEN_PATH", "")]
    if os.environ.get("RAY_AUTH_MODE", "").lower() == "token":
        paths.append(str(Path("~/.ray/auth_token").expanduser()))
    for path in filter(None, paths):
        try:
            value = Path(path).expanduser().read_text().strip()
        except OSError:
            continue
        if value:
            return value
    return None


class RayAuthEnv:
    """Point this process's Ray at one token (or none) for ``ray.init``, and only then.

    Ray reads ``RAY_AUTH_MODE`` / ``RAY_AUTH_TOKEN`` from the environment into its C++
    config (``Config.initialize``) and its token loader's cache. :meth:`connecting` sets
    them, refreshes Ray, and puts the environment back right after the block: Ray keeps
    the mode and the cached token for the connection (its reconnects included), while no
    process started later inherits the token. :meth:`release` (after ``ray.shutdown``)
    makes Ray forget them.
    """

    VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

    def __init__(self, token: Optional[str]):
        self.token = token
        self._applied = False

    @staticmethod
    def _refresh() -> None:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()

    @contextlib.contextmanager
    def connecting(self) -> Iterator[None]:
        saved = {k: os.environ.get(k) for k in self.VARS}
        try:
            os.environ.pop("RAY_AUTH_TOKEN_PATH", None)
            if self.token:
                os.environ["RAY_AUTH_MODE"] = "token"
                os.environ["RAY_AUTH_TOKEN"] = self.token
            else:
                os.environ["RAY_AUTH_MODE"] = "disabled"
                os.environ.pop("RAY_AUTH_TOKEN", None)
            self._refresh()  # Ray now holds mode and token in memory
            self._applied = True
            yield
        finally:
            _restore_env(saved)

    def release(self) -> None:
        """Let Ray re-read the (restored) environment: it forgets this token."""
        if self._applied:
            self._applied = False
            self._refresh()


def _restore_env(saved: dict[str, Optional[str]]) -> None:
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def child_env(extra: Optional[dict[str, str]] = None) -> dict[str, str]:
    """``os.environ`` without the Ray auth variables: for subprocesses (kubectl...)."""
    env = {k: v for k, v in os.environ.items() if k not in RayAuthEnv.VARS}
    env.update(extra or {})
    return env


def probe_ray_client(host: str, port: int, token: Optional[str], *, timeout: float,
                     what: str = "Ray Client server", address: Optional[str] = None,
                     token_help: str = TOKEN_HELP,
                     error: Callable[..., BaseException] = ClusterConnectionError) -> None:
    """Wait until the Ray Client server at ``host:port`` answers a PING (gRPC).

    Sends ``authorization: Bearer <token>`` when a token is given. Raises ``error(message,
    address=..., reason=...)`` at once on UNAUTHENTICATED (reason ``"token"`` without a
    token, ``"rejected"`` with a wrong one) and after ``timeout`` s when nothing answers
    (``"unreachable"``). This replaces Ray Client's own 30 s "connection timeout".
    ``address`` is how the server is named in messages (default ``host:port``).
    """
    import grpc
    from ray.core.generated import ray_client_pb2, ray_client_pb2_grpc

    shown = address or f"{host}:{port}"
    metadata = [("authorization", f"Bearer {token}")] if token else None
    deadline = time.monotonic() + timeout
    last = "no answer"
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise error(f"nothing answers at {shown} (the {what}) within {timeout:.0f} s "
                        f"(last error: {last}): is the head running and the port right?",
                        address=shown, reason="unreachable")
        channel = grpc.insecure_channel(f"{host}:{port}")
        try:
            stub = ray_client_pb2_grpc.RayletDriverStub(channel)
            stub.ClusterInfo(ray_client_pb2.ClusterInfoRequest(
                type=ray_client_pb2.ClusterInfoType.PING),
                timeout=max(0.5, min(5.0, left)), metadata=metadata)
            return
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                if token:
                    raise error(
                        f"the {what} at {shown} rejected the Ray auth token "
                        f"({exc.details()}): the token does not match the cluster's; check "
                        "RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH", address=shown,
                        reason="rejected") from None
                raise error(
                    f"the {what} at {shown} requires Ray token authentication "
                    f"({exc.details()}) and no token is configured: {token_help}",
                    address=shown, reason="token") from None
            last = f"{code.name}: {exc.details()}"
            time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))
        finally:
            channel.close()


# --------------------------------------------------------------------------- teardown


def ray_connected() -> bool:
    """Whether this process is connected to a Ray cluster that Ray calls can use now.

    In Ray Client mode that is the client's live connection (``ray.is_initialized()`` is
    not enough once the head died); never imports or starts Ray.
    """
    ray = sys.modules.get("ray")
    if ray is None:
        return False
    try:
        from ray._private.client_mode_hook import client_mode_should_convert

        if ray.util.client.ray.is_connected():
            return True
        if client_mode_should_convert():  # client mode, connection gone
            return False
        return bool(ray.is_initialized())
    except Exception:  # noqa: BLE001 - a half torn-down Ray is not connected
        return False


@contextlib.contextmanager
def no_auto_init() -> Iterator[None]:
    """Inside the block no Ray call (``ray.kill``, ``ray.get``...) starts a local Ray.

    Ray starts one with ``ray.init()`` when such a call finds nothing connected; after a
    ``ray://`` head died that start fails (AssertionError in node.py) and hides the real
    error, and its agents linger.
    """
    try:
        from ray._private import auto_init_hook
    except ImportError:  # pragma: no cover - no Ray: nothing can start
        yield
        return
    previous = auto_init_hook.enable_auto_connect
    auto_init_hook.enable_auto_connect = False
    try:
        yield
    finally:
        auto_init_hook.enable_auto_connect = previous


def teardown_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """``fn(*args, **kwargs)`` (``ray.kill``, ``serve.delete``...) if Ray is still connected.

    Never starts a local Ray. Returns whether it ran; an error raised because the
    connection went away meanwhile is swallowed (nothing is left to tear down), any other
    propagates.
    """
    if not ray_connected():
        return False
    with no_auto_init():
        try:
            fn(*args, **kwargs)
        except Exception:
            if not ray_connected():
                return False
            raise
    return True


def lost_connection(exc: BaseException, address: str) -> Optional[ClusterConnectionError]:
    """``exc`` as a :class:`ClusterConnectionError` naming ``address`` when it means the
    cluster is gone (None otherwise, e.g. a task's own error)."""
    if isinstance(exc, ClusterConnectionError):
        return exc
    text = f"{type(exc).__name__}: {exc}"
    lost = (isinstance(exc, ConnectionError) or any(m in text for m in _LOST_MARKERS)
            or not ray_connected())
    if not lost:
        return None
    return ClusterConnectionError(
        f"lost the connection to the Ray cluster at {address}: {' '.join(text.split())[:500]}"
        " (did the head die or restart?)", address=address, reason="lost")


@contextlib.contextmanager
def connection_guard(address: str) -> Iterator[None]:
    """Re-raise a lost connection inside the block as :class:`ClusterConnectionError`
    naming ``address``; no Ray call in it starts a local Ray."""
    with no_auto_init():
        try:
            yield
        except Exception as exc:
            err = lost_connection(exc, address)
            if err is None or err is exc:
                raise
            raise err from exc
