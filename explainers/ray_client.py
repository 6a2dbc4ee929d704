"""``ray.init("ray://...")`` that survives the head's transient failures to start a client server."""

from __future__ import annotations

import time
from typing import Any

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
            if ray.is_initialized():
                ray.shutdown()
            if attempt == attempts or not is_transient_start_failure(exc):
                raise
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover
