"""Faults of a ``ray://`` session against a real ``ray start --head`` (token auth on).

* The head dies in the middle of a call: the call ends in a ``ConnectionError`` naming the
  address (``explainers.cluster.session.ClusterConnectionError``) once Ray Client gives up
  reconnecting (after ``RAY_CLIENT_RECONNECT_GRACE_PERIOD``: :data:`RECONNECT_GRACE_S` here,
  Ray's default is 30 s), within a bound; the teardown that
  follows (``ray.kill`` of an actor, as the plugin's in-cluster driver does it, then
  ``ClusterSession.close()``) starts no local Ray and raises nothing unrelated.
* A token-protected head without a token, with a wrong token, and a port where nothing
  listens: three different messages, each within a few seconds (not Ray Client's 30 s
  "connection timeout").

The head is started by the test (``--block``, its own temp dir, free ports, 1 CPU, no
dashboard) with ``RAY_AUTH_MODE=token`` and a token the test generates (passed in
``RAY_AUTH_TOKEN``, so nothing is written to ``~/.ray/auth_token``).
"""
from __future__ import annotations

import os
import re
import secrets
import time

import psutil
import pytest

ray = pytest.importorskip("ray")

from explainers.cluster import session as cluster  # noqa: E402
from ray_heads import RayHead, free_port  # noqa: E402

#: the processes a local Ray (``ray.init()`` starting a head) runs on this machine
LOCAL_RAY_NAMES = ("raylet", "gcs_server")
LOCAL_RAY_CMDLINE = ("dashboard/agent.py", "runtime_env/agent/main.py", "dashboard/dashboard.py",
                     "log_monitor.py", "monitor.py")
#: seconds Ray Client tries to reconnect to a lost head before its calls fail (Ray's default: 30)
RECONNECT_GRACE_S = 5
#: seconds the call in progress may take to fail once the head is gone, grace period included
LOST_HEAD_BOUND_S = RECONNECT_GRACE_S + 25


def _refresh_ray_auth() -> None:
    """Make this process's Ray re-read RAY_AUTH_* (as if they had been set at start)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _local_ray(exclude_dir: str) -> dict[int, str]:
    """Ray processes started below this test process that do not belong to the test's head."""
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            name, cmdline = p.name(), " ".join(p.cmdline())
        except psutil.Error:
            continue
        if exclude_dir in cmdline:
            continue
        if name in LOCAL_RAY_NAMES or any(c in cmdline for c in LOCAL_RAY_CMDLINE):
            found[p.pid] = f"{name}: {cmdline[:120]}"
    return found


@pytest.fixture
def client_env(tmp_path, monkeypatch):
    """No ambient Ray address or token; HOME without ~/.ray/auth_token."""
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for var in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(var, raising=False)
    _refresh_ray_auth()
    assert not ray.is_initialized()
    yield monkeypatch
    monkeypatch.undo()
    _refresh_ray_auth()
    if ray.is_initialized():  # pragma: no cover - a failed test; do not leak into others
        ray.shutdown()


@pytest.mark.filterwarnings("ignore:Ray Client connection timed out")
@pytest.mark.filterwarnings(r"ignore:Exception in thread .*"
                            ":pytest.PytestUnhandledThreadExceptionWarning")
def test_head_death_mid_call_names_the_address_and_starts_no_local_ray(client_env):
    token = secrets.token_hex(16)
    head = RayHead(token, prefix="kfr")
    try:
        # the user's shell exported the token (as the message of a token-protected head says)
        client_env.setenv("RAY_AUTH_MODE", "token")
        client_env.setenv("RAY_AUTH_TOKEN", token)
        client_env.setenv("RAY_CLIENT_RECONNECT_GRACE_PERIOD", str(RECONNECT_GRACE_S))
        _refresh_ray_auth()
        before = _local_ray(head.temp_dir)
        session = cluster.connect(head.address)
        try:
            assert session.info()["nodes"] == 1

            @ray.remote(num_cpus=0, max_restarts=0)
            class Sleeper:
                def nap(self, seconds: float) -> float:
                    time.sleep(seconds)
                    return seconds

            actor = Sleeper.remote()
            assert ray.get(actor.nap.remote(0), timeout=60) == 0
            ref = actor.nap.remote(300)  # a round in progress
            time.sleep(0.5)

            head.kill()
            t0 = time.monotonic()
            error: BaseException | None = None
            try:
                if hasattr(session, "guard"):
                    with session.guard():
                        ray.get(ref, timeout=120)
                else:  # the parent commit: the raw call, so that the teardown sees the same state
                    ray.get(ref, timeout=120)
            except BaseException as exc:  # noqa: BLE001 - checked below
                error = exc
            error_seconds = time.monotonic() - t0

            # the round's teardown, as the plugin's InClusterExplainer.close() does it
            t0 = time.monotonic()
            try:
                ray.kill(actor)
            except Exception:  # noqa: BLE001 - the cluster is gone; not starting one is the point
                pass
            close_error: BaseException | None = None
            try:
                session.close()
            except BaseException as exc:  # noqa: BLE001
                close_error = exc
            teardown_seconds = time.monotonic() - t0
        finally:
            try:
                session.close()
            except Exception:  # noqa: BLE001 - already reported above
                pass

        started = _local_ray(head.temp_dir)
        assert set(started) - set(before) == set(), (
            f"the teardown started a local Ray: {started}")
        assert close_error is None, f"close() after the head died raised {close_error!r}"
        assert isinstance(error, cluster.ClusterConnectionError), repr(error)
        assert isinstance(error, ConnectionError)
        assert head.address in str(error), str(error)
        assert error_seconds < LOST_HEAD_BOUND_S, f"the head's death took {error_seconds:.0f} s to surface"
        assert teardown_seconds < 15, f"the teardown took {teardown_seconds:.0f} s"
        assert not ray.is_initialized()
        assert not ray.util.client.ray.is_connected()
    finally:
        head.stop()
    assert head.processes() == [], "processes of the killed head are left"
    assert set(_local_ray(head.temp_dir)) - set(before) == set()


def test_token_required_wrong_token_and_nothing_listening(client_env):
    token = secrets.token_hex(16)
    head = RayHead(token, prefix="kfr")
    try:
        before = _local_ray(head.temp_dir)
        t0 = time.monotonic()
        with pytest.raises(cluster.ClusterConnectionError,
                           match=rf"the Ray head at {re.escape(head.address)} requires Ray "
                                 r"token authentication .*set RAY_AUTH_TOKEN") as info:
            cluster.connect(head.address)
        assert isinstance(info.value, ConnectionError)
        assert time.monotonic() - t0 < 10
        assert not ray.is_initialized()

        client_env.setenv("RAY_AUTH_TOKEN", "not-" + token)
        t0 = time.monotonic()
        with pytest.raises(cluster.ClusterConnectionError,
                           match=rf"the Ray head at {re.escape(head.address)} rejected the "
                                 r"Ray auth token"):
            cluster.connect(head.address)
        assert time.monotonic() - t0 < 10
        assert not ray.is_initialized()
        assert os.environ["RAY_AUTH_TOKEN"] == "not-" + token  # the user's value, untouched
        assert "RAY_AUTH_MODE" not in os.environ

        nothing = f"ray://127.0.0.1:{free_port()}"
        t0 = time.monotonic()
        with pytest.raises(cluster.ClusterConnectionError,
                           match=rf"nothing answers at {re.escape(nothing)}"):
            cluster.connect(nothing)
        assert time.monotonic() - t0 < 15
        assert not ray.is_initialized()

        client_env.setenv("RAY_AUTH_TOKEN", token)  # and with the right one it works
        with cluster.connect(head.address) as session:
            assert session.info()["total_cpus"] == 1
            assert "RAY_AUTH_MODE" not in os.environ  # set only around ray.init
        assert not ray.is_initialized()
        assert set(_local_ray(head.temp_dir)) - set(before) == set()
    finally:
        head.stop()
