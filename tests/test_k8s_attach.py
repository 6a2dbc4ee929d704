"""The KubeRay attach path end to end, without a Kubernetes cluster.

Real: a local Ray head with its Ray Client server and token authentication (``ray start
--head``), the ``kubernetes`` API client talking HTTP to a loopback API server that answers
the few paths used, the port-forward process handling (``kubectl`` on ``PATH`` is
``tests/fake_kubectl/kubectl``, a loopback TCP forwarder that behaves like
``kubectl port-forward``), the ``ray://`` connection, version checks and teardown.
"""
from __future__ import annotations

import os
import re
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

ray = pytest.importorskip("ray")

from explainers.cluster import kuberay as k8s  # noqa: E402
from explainers.cluster.kuberay import K8sError, connect_k8s  # noqa: E402
from k8s_fakes import CLUSTER, NS, TOKEN, FakeKubeAPI  # noqa: E402
from ray_heads import RayHead, free_port  # noqa: E402

FAKE_KUBECTL_DIR = Path(__file__).resolve().parent / "fake_kubectl"


# ----------------------------------------------------------------------------- Ray head

@pytest.fixture(scope="module")
def ray_head():
    """A local Ray head (1 CPU, token auth) with its Ray Client server; yields its port."""
    head = RayHead(TOKEN, prefix="ksr")
    try:
        yield head.port
    finally:
        head.stop()


# ----------------------------------------------------------------------------- fake API

@pytest.fixture
def api():
    server = FakeKubeAPI()
    yield server
    server.close()


def _fake_kubectl_pids() -> list[int]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(FAKE_KUBECTL_DIR) in a for a in (p.info["cmdline"] or [])):
                found.append(p.pid)
        except psutil.Error:
            pass
    return found


@pytest.fixture
def env(tmp_path, monkeypatch, api):
    """PATH with the fake kubectl, a kubeconfig for the fake API, no ambient token."""
    monkeypatch.setenv("PATH", f"{FAKE_KUBECTL_DIR}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_KUBECTL_LOG", str(tmp_path / "kubectl.log"))
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", "127.0.0.1:1")  # tests that forward set it
    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "KUBECONFIG",
                "KUBERNETES_SERVICE_HOST", "FAKE_KUBECTL_FAIL", "RAY_ADDRESS"):
        monkeypatch.delenv(var, raising=False)
    before = _fake_kubectl_pids()
    yield api.kubeconfig(tmp_path / "kubeconfig")
    assert not ray.is_initialized(), "a test left Ray connected"
    assert _fake_kubectl_pids() == before, "a kubectl port-forward was left running"


def _kubectl_calls(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "kubectl.log"
    return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


# ----------------------------------------------------------------------------- happy path

def test_attach_runs_a_task_and_tears_down(ray_head, env, api, tmp_path, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    auth_before = os.environ.get("RAY_AUTH_MODE")
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        pf = conn.port_forward
        assert conn.alive() and psutil.pid_exists(pf.pid)
        assert conn.address == f"ray://127.0.0.1:{pf.local_port}"
        assert conn.token == TOKEN  # read from the Secret the RayCluster names
        assert conn.head.name == f"{CLUSTER}-head-svc" and conn.head.ray_client_port == 10001
        conn.connect(log_to_driver=False)  # as explainers.cluster.session calls it
        assert conn.versions["ray"] == ray.__version__
        assert tuple(conn.versions["python"]) == tuple(sys.version_info[:2])
        assert conn.versions["explainers"] is not None

        @ray.remote(num_cpus=1)
        def square(x):
            return x * x

        assert ray.get([square.remote(i) for i in range(5)], timeout=60) == [0, 1, 4, 9, 16]
        info = conn.describe()
        assert info["k8s_cluster"] == CLUSTER and info["k8s_namespace"] == NS
        assert info["ray_nodes"] == 1 and info["ray_cpus"] == 1.0
        assert info["k8s_worker_replicas"] == 1
        pid = pf.pid
    assert not pf.alive() and not psutil.pid_exists(pid)
    assert not ray.is_initialized()
    assert os.environ.get("RAY_AUTH_MODE") == auth_before  # auth env restored
    [call] = _kubectl_calls(tmp_path)
    assert call[:2] == ["port-forward", f"svc/{CLUSTER}-head-svc"]
    assert call[2] == f"{pf.local_port}:10001"
    assert call[call.index("-n") + 1] == NS
    assert call[call.index("--kubeconfig") + 1] == str(env)


def test_token_from_environment_takes_precedence(ray_head, env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", TOKEN)
    api.secrets.clear()  # not needed when the token is in the environment
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        assert conn.token == TOKEN
        conn.connect()
        assert ray.is_initialized()


# ----------------------------------------------------------------------------- API failures

def test_no_kubeconfig(env, tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))  # no ~/.kube/config
    with pytest.raises(K8sError, match="no Kubernetes configuration found.*--kubeconfig"):
        connect_k8s(NS, CLUSTER, None, timeout=5)
    with pytest.raises(K8sError, match=r"kubeconfig '.*nope' \(from --kubeconfig\) does "
                                       "not exist"):
        connect_k8s(NS, CLUSTER, str(tmp_path / "nope"), timeout=5)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    with pytest.raises(K8sError, match="KUBECONFIG=.*names no existing file"):
        connect_k8s(NS, CLUSTER, None, timeout=5)
    bad = tmp_path / "bad-kubeconfig"
    bad.write_text("apiVersion: v1\nkind: Config\nclusters: []\n")
    with pytest.raises(K8sError, match="invalid Kubernetes configuration"):
        connect_k8s(NS, CLUSTER, str(bad), timeout=5)
    assert _kubectl_calls(tmp_path) == []


def test_kubeconfig_from_environment(env, api, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(env))
    kapi = k8s.load_kube_api()
    assert kapi.host == f"http://127.0.0.1:{api.port}" and kapi.kubeconfig is None
    assert k8s.find_head_service(kapi, NS, CLUSTER).ray_client_port == 10001
    kapi.close()


def test_api_server_unreachable(env, api, tmp_path):
    closed = free_port()  # nothing listens there
    cfg = api.kubeconfig(tmp_path / "closed-kubeconfig", port=closed)
    t0 = time.monotonic()
    with pytest.raises(K8sError, match=rf"API server at http://127.0.0.1:{closed} .* is "
                                       "unreachable while trying to read namespace"):
        connect_k8s(NS, CLUSTER, str(cfg), timeout=5)
    assert time.monotonic() - t0 < 15
    assert _kubectl_calls(tmp_path) == []


def test_namespace_missing(env, api, tmp_path):
    with pytest.raises(K8sError, match="namespace 'ray-nowhere' not found"):
        connect_k8s("ray-nowhere", CLUSTER, str(env), timeout=5)
    assert _kubectl_calls(tmp_path) == []


def test_raycluster_missing(env, api, tmp_path):
    with pytest.raises(K8sError, match=r"RayCluster 'other' \(ray.io/v1 rayclusters\) not "
                                       r"found in namespace 'default'; RayClusters in "
                                       r"'default': kernelshap"):
        connect_k8s(NS, "other", str(env), timeout=5)
    api.rayclusters.clear()
    with pytest.raises(K8sError, match="there is no RayCluster in 'default'.*kubectl apply"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5)
    api.crd_installed = False
    with pytest.raises(K8sError, match="is the KubeRay operator installed"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5)
    assert _kubectl_calls(tmp_path) == []


def test_head_service_missing(env, api, tmp_path):
    api.services.clear()
    with pytest.raises(K8sError, match="head service 'kernelshap-head-svc' of RayCluster "
                                       "'kernelshap' not found.*state: ready"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5)
    assert _kubectl_calls(tmp_path) == []


def test_head_service_without_client_port(env, api):
    svc = api.services[(NS, f"{CLUSTER}-head-svc")]
    svc["spec"]["ports"] = [p for p in svc["spec"]["ports"] if p["name"] != "client"]
    with pytest.raises(K8sError, match="exposes no Ray Client port"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5)


def test_api_server_forbids(env, api, tmp_path):
    api.forbidden = True
    with pytest.raises(K8sError, match=r"refused to read RayCluster default/kernelshap "
                                       r"\(HTTP 403 Forbidden\); check the credentials in "
                                       r"kubeconfig"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5)
    assert _kubectl_calls(tmp_path) == []


# ----------------------------------------------------------------------------- port-forward

def test_kubectl_not_on_path(env, api):
    with pytest.raises(K8sError, match="'kubectl-missing' not found on PATH"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5, kubectl="kubectl-missing")


def test_kubectl_exits_early_reports_stderr(env, api, monkeypatch):
    msg = "error: unable to forward port because pod is not running. Current status=Pending"
    monkeypatch.setenv("FAKE_KUBECTL_FAIL", msg)
    t0 = time.monotonic()
    with pytest.raises(K8sError, match=r"exited with code 1: " + re.escape(msg)):
        connect_k8s(NS, CLUSTER, str(env), timeout=10)
    assert time.monotonic() - t0 < 10


def test_port_forward_never_ready_times_out(env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_DELAY", "30")
    t0 = time.monotonic()
    with pytest.raises(K8sError, match="printed no 'Forwarding from 127.0.0.1:"):
        connect_k8s(NS, CLUSTER, str(env), timeout=1.5)
    assert time.monotonic() - t0 < 10  # killed after the grace period at most


@pytest.mark.filterwarnings("ignore:Ray Client connection timed out")
# gRPC's connectivity-polling thread of the Ray Client channel (target ``_run``) may raise
# "Cannot monitor channel state: Channel closed!" once the dead forward's channel is closed
@pytest.mark.filterwarnings(r"ignore:Exception in thread Thread-\d+ \(_run\)"
                            ":pytest.PytestUnhandledThreadExceptionWarning")
def test_port_forward_dies_during_session(ray_head, env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    conn = connect_k8s(NS, CLUSTER, str(env), timeout=30)
    try:
        conn.connect()
        os.kill(conn.port_forward.pid, signal.SIGKILL)  # a crash, not a polite exit
        deadline = time.monotonic() + 10
        while conn.alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not conn.alive()
        with pytest.raises(K8sError, match=r"lost the connection to RayCluster "
                                           r"default/kernelshap: kubectl port-forward .* "
                                           r"exited with code -9"):
            conn.describe()
        with pytest.raises(K8sError, match="exited with code -9"):
            conn.scale_to(2)
        assert api.patches() == []
    finally:
        t0 = time.monotonic()
        conn.close()
        assert time.monotonic() - t0 < 45
    assert not ray.is_initialized()


# ----------------------------------------------------------------------------- versions

def test_version_mismatch_is_reported(ray_head, env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        conn.connect()  # same Ray and Python: passes
        with pytest.raises(K8sError, match=rf"Ray {re.escape(ray.__version__)} on the "
                                           r"cluster, 2\.59\.0 here.*rayproject/ray:"
                                           r"2\.59\.0-py3\d+"):
            conn.check_versions(expected_ray="2.59.0")
        with pytest.raises(K8sError, match=r"Python 3\.\d+ on the cluster, 3\.9 here"):
            conn.check_versions(expected_python=(3, 9))
        conn.check_versions(expected_python="{}.{}.99".format(*sys.version_info[:2]))


def test_ray_client_version_error_is_rephrased():
    from ray._private.utils import check_version_info

    with pytest.raises(RuntimeError) as info:  # Ray Client's own check, real message
        check_version_info({"ray_version": "2.59.0", "python_version": "3.10.4"},
                           "Ray Client", raise_on_mismatch=True,
                           python_version_match_level="minor")
    err = k8s.rephrase_init_error(info.value, "ray://127.0.0.1:1")
    assert isinstance(err, K8sError)
    assert re.search(r"Ray 2\.59\.0 on the cluster, .* here; Python 3\.10 on the cluster",
                     str(err))


# ----------------------------------------------------------------------------- token

def test_missing_token_declared_by_raycluster(env, api, tmp_path):
    api.secrets.clear()
    with pytest.raises(K8sError, match=r"requires Ray token authentication .*Secret "
                                       r"'kernelshap-ray-token' not readable \(HTTP 404\).*"
                                       r"set RAY_AUTH_TOKEN.*kubectl get secret "
                                       r"kernelshap-ray-token -n default"):
        connect_k8s(NS, CLUSTER, str(env), timeout=5)
    assert _kubectl_calls(tmp_path) == []


def test_missing_token_detected_from_the_server(ray_head, env, api, monkeypatch):
    """The RayCluster does not say so, but the head requires a token: clear, fast error."""
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    rc = api.rayclusters[(NS, CLUSTER)]
    rc["spec"].pop("authOptions", None)
    for c in rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"]:
        c["env"] = []
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        assert conn.token is None
        t0 = time.monotonic()
        with pytest.raises(K8sError, match="requires Ray token authentication .* no token "
                                           "is configured: set RAY_AUTH_TOKEN"):
            conn.connect()
        assert time.monotonic() - t0 < 10
        assert not ray.is_initialized()


def test_token_sources(env, api, tmp_path, monkeypatch):
    rc = api.rayclusters[(NS, CLUSTER)]
    auth = k8s.auth_requirement(rc)
    assert (auth.required, auth.secret_name, auth.secret_key) == (
        True, "kernelshap-ray-token", "auth_token")
    kapi = k8s.load_kube_api(str(env))
    try:
        assert k8s.resolve_token(kapi, NS, auth) == TOKEN  # from the Secret
        token_file = tmp_path / "token"
        token_file.write_text("from-file\n")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
        assert k8s.resolve_token(kapi, NS, auth) == "from-file"
        monkeypatch.setenv("RAY_AUTH_TOKEN", "from-env")
        assert k8s.resolve_token(kapi, NS, auth) == "from-env"
        assert k8s.resolve_token(kapi, NS, auth, "given") == "given"
        monkeypatch.setenv("RAY_AUTH_TOKEN", "")
        monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
        with pytest.raises(K8sError, match="RAY_AUTH_TOKEN_PATH=.*missing' cannot be read"):
            k8s.resolve_token(kapi, NS, auth)
        monkeypatch.delenv("RAY_AUTH_TOKEN_PATH")
        assert k8s.resolve_token(kapi, NS, k8s.AuthRequirement(False)) is None
    finally:
        kapi.close()
    # KubeRay >= 1.5.1: spec.authOptions, Secret named after the cluster by default
    generated = {"metadata": {"name": "c1"}, "spec": {"authOptions": {"mode": "token"}}}
    assert k8s.auth_requirement(generated) == k8s.AuthRequirement(True, "c1", "auth_token")
    # as KubeRay's CheckName shortens it: the last 50 characters, no leading digit
    generated["metadata"]["name"] = "x" * 10 + "9" + "y" * 49
    assert k8s.auth_requirement(generated).secret_name == "r" + "y" * 49
    # Kubernetes ServiceAccount tokens: no Secret to read, the token comes from the environment
    generated["spec"]["authOptions"]["enableK8sTokenAuth"] = True
    assert k8s.auth_requirement(generated) == k8s.AuthRequirement(True, None, "auth_token")


def test_wrong_token_is_rejected(ray_head, env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "not-the-token")
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        with pytest.raises(K8sError, match="rejected the Ray auth token"):
            conn.connect()


# ----------------------------------------------------------------------------- scaling

def test_scale_worker_group_patches_replicas(env, api):
    kapi = k8s.load_kube_api(str(env))
    try:
        before = k8s.scale_worker_group(kapi, NS, CLUSTER, "workers", 3)
        assert before == {"replicas": 1, "minReplicas": 0, "maxReplicas": 8}
        [(_, path, headers, body)] = api.patches()
        assert path == f"/apis/ray.io/v1/namespaces/{NS}/rayclusters/{CLUSTER}"
        assert headers["Content-Type"] == "application/json-patch+json"
        assert body == [
            {"op": "test", "path": "/spec/workerGroupSpecs/0/groupName", "value": "workers"},
            {"op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 3}]
        assert api.group()["replicas"] == 3

        k8s.scale_worker_group(kapi, NS, CLUSTER, "workers", 12)  # above maxReplicas
        assert {"op": "replace", "path": "/spec/workerGroupSpecs/0/maxReplicas",
                "value": 12} in api.patches()[-1][3]
        assert (api.group()["replicas"], api.group()["maxReplicas"]) == (12, 12)

        k8s.restore_worker_group(kapi, NS, CLUSTER, "workers", before)
        g = api.group()
        assert (g["replicas"], g["minReplicas"], g["maxReplicas"]) == (1, 0, 8)

        with pytest.raises(K8sError, match=r"no worker group 'gpu'; groups: \['workers'\]"):
            k8s.scale_worker_group(kapi, NS, CLUSTER, "gpu", 2)
        assert k8s.worker_group_cpus(api.rayclusters[(NS, CLUSTER)]) == 2.0
    finally:
        kapi.close()


def test_scale_waits_for_nodes_then_times_out_and_restores(ray_head, env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        conn.connect()
        assert conn.ensure_cpus(1) == 1 and api.patches() == []  # the head's CPU suffices
        t0 = time.monotonic()
        # 4 CPUs wanted, 1 here, 2 per worker pod: 1 + 2 more pods; none ever joins
        with pytest.raises(K8sError, match=r"only 1 of 4 Ray nodes alive after 2 s; check "
                                           r"`kubectl get pods -n default -l ray.io/cluster="
                                           r"kernelshap`"):
            conn.ensure_cpus(4, timeout=2)
        assert 2 <= time.monotonic() - t0 < 10
        assert api.group()["replicas"] == 3
    # close() put the original count back
    assert api.group()["replicas"] == 1
    assert api.patches()[-1][3][-1] == {
        "op": "replace", "path": "/spec/workerGroupSpecs/0/replicas", "value": 1}


def test_wait_for_nodes_counts_real_nodes(ray_head, env, api, monkeypatch):
    monkeypatch.setenv("FAKE_KUBECTL_TARGET", f"127.0.0.1:{ray_head}")
    with connect_k8s(NS, CLUSTER, str(env), timeout=30) as conn:
        conn.connect()
        assert k8s.wait_for_nodes(1, timeout=5) == 1
        with pytest.raises(K8sError, match="only 1 of 2 Ray nodes alive after 1 s"):
            k8s.wait_for_nodes(2, timeout=1, poll=0.2)
