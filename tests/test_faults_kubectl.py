"""Faults around ``kubectl port-forward`` and the Ray auth token (the fake kubectl of
``tests/fake_kubectl``, the loopback API server and Ray head of ``test_k8s_attach``).

* A hard-killed parent (SIGKILL, e.g. a CI runner killing pytest) takes its kubectl with it:
  the port-forward does not go on forwarding re-parented to PID 1.
* The token read from the Secret (or the environment) is not in ``os.environ`` after the
  connection is made, nor in the environment of kubectl or of any process started meanwhile.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from test_k8s_attach import (  # noqa: E402,F401 - fixtures re-used: api, env, ray_head
    CLUSTER,
    FAKE_KUBECTL_DIR,
    NS,
    TOKEN,
    api,
    env,
    ray_head,
)

from explainers.cluster.kuberay import connect_k8s  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, sys, threading, time
    from explainers.cluster.kuberay import PortForward

    def open_forward():
        pf = PortForward("kernelshap-head-svc", 10001, "default", timeout=20)
        pf.start()
        print(json.dumps({"kubectl": pf.pid}), flush=True)
        time.sleep(600)

    if sys.argv[1] == "thread":  # opened by a thread that stays alive
        threading.Thread(target=open_forward, daemon=True).start()
        time.sleep(600)
    else:
        open_forward()
""")


def _environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0")
                if "=" in item)


@pytest.mark.parametrize("opened_by", ["main", "thread"])
def test_kubectl_dies_with_a_sigkilled_parent(tmp_path, opened_by):
    env = dict(os.environ, PATH=f"{FAKE_KUBECTL_DIR}{os.pathsep}{os.environ['PATH']}",
               FAKE_KUBECTL_TARGET="127.0.0.1:1", PYTHONPATH=str(ROOT))
    for var in ("FAKE_KUBECTL_FAIL", "FAKE_KUBECTL_DELAY", "FAKE_KUBECTL_LOG"):
        env.pop(var, None)
    child = subprocess.Popen([sys.executable, "-c", CHILD, opened_by], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    kubectl = None
    try:
        line = child.stdout.readline()  # the forward is up when this line comes
        assert line, f"the child printed nothing: {child.stderr.read()[-2000:]}"
        kubectl = psutil.Process(json.loads(line)["kubectl"])
        assert kubectl.is_running() and kubectl.ppid() == child.pid
        os.kill(child.pid, signal.SIGKILL)  # no atexit, no finally, no close()
        child.wait(10)
        t0 = time.monotonic()
        while time.monotonic() - t0 < 5:
            try:
                if kubectl.status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        else:
            pytest.fail(f"kubectl (pid {kubectl.pid}) still runs 5 s after its parent was "
                        f"SIGKILLed, parent now {kubectl.ppid()}")
    finally:
        if child.poll() is None:
            child.kill()
            child.wait(10)
        if kubectl is not None:
            try:
                kubectl.kill()
            except psutil.Error:
                pass
        child.stdout.close()
        child.stderr.close()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs /proc")
@pytest.mark.parametrize("source", ["secret", "environment"])
def test_token_lives_in_the_environment_only_during_connect(ray_head, env, api, monkeypatch,
                                                            source):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    if source == "environment":
        monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)  # the user's own: it stays, unchanged
    before = {k: os.environ.get(k) for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        assert conn.token == TOKEN
        kubectl_env = _environ(conn.port_forward.pid)
        assert not {k for k, v in kubectl_env.items() if TOKEN in v or k.startswith("RAY_AUTH")}, \
            "kubectl was started with the Ray auth token in its environment"
        conn.connect()
        if source == "secret":
            assert TOKEN not in os.environ.values(), "the token stayed in os.environ"
        assert {k: os.environ.get(k) for k in before} == before
        out = subprocess.run([sys.executable, "-c", "import os; print(dict(os.environ))"],
                             capture_output=True, text=True, timeout=30).stdout
        if source == "secret":
            assert TOKEN not in out, "a process started during the session got the token"

        @ray.remote(num_cpus=0)
        def one() -> int:
            return 1

        assert ray.get(one.remote(), timeout=60) == 1  # the connection keeps its token
    assert {k: os.environ.get(k) for k in before} == before
