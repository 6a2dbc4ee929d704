"""End to end against a real KubeRay cluster:
``pytest tests/test_k8s_e2e.py --ray-address k8s --k8s-transport client``.

These tests run on this machine, so they are collected with the legacy transport (with the
default, Ray Jobs, the selection would run inside the cluster). They test both transports:
Ray Client in this process, and Ray Jobs by running ``pytest perf/ --ray-address k8s`` as a
user does. Skipped (with the reason) unless ``--ray-address k8s`` is given and the Kubernetes
API answers with the RayCluster; from then on every problem is a failure. Uses
``--k8s-namespace`` / ``--k8s-cluster`` / ``--kubeconfig`` / ``--k8s-scale`` when the plugin
defines them.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from explainers.cluster import kuberay as k8s

pytestmark = pytest.mark.k8s


def _opt(config: pytest.Config, name: str, default):
    """The plugin's option ``--NAME`` (dest ``kernelshap_NAME``), else ``default``."""
    for dest in (f"kernelshap_{name}", name):
        try:
            value = config.getoption(dest, default=None)
        except ValueError:  # option not registered
            value = None
        if value is not None:
            return value
    return default


@pytest.fixture(scope="module")
def k8s_conn(request):
    config = request.config
    if _opt(config, "ray_address", None) != "k8s":
        pytest.skip("needs a KubeRay cluster: run with --ray-address k8s")
    ray = pytest.importorskip("ray")
    if ray.is_initialized():
        pytest.skip("Ray is already connected in this session; run this file on its own")
    namespace = _opt(config, "k8s_namespace", k8s.DEFAULT_NAMESPACE)
    cluster = _opt(config, "k8s_cluster", k8s.DEFAULT_CLUSTER)
    kubeconfig = _opt(config, "kubeconfig", None)
    try:  # does a cluster answer at all?
        api = k8s.load_kube_api(kubeconfig)
        try:
            k8s.find_head_service(api, namespace, cluster)
        finally:
            api.close()
    except k8s.K8sError as exc:
        pytest.skip(f"no KubeRay cluster answers: {exc}")
    with k8s.connect_k8s(namespace, cluster, kubeconfig, timeout=120) as conn:
        conn.connect()
        yield conn


def test_cluster_versions_and_project(k8s_conn):
    v = k8s_conn.versions
    import ray
    assert v["ray"] == ray.__version__
    assert tuple(v["python"]) == tuple(sys.version_info[:2])
    assert v["explainers"] is not None


def test_tasks_run_on_workers(k8s_conn):
    import ray

    @ray.remote(num_cpus=1)
    def where() -> str:
        return ray.get_runtime_context().get_node_id()

    info = k8s_conn.describe()
    assert info["ray_nodes"] >= 2 and info["ray_cpus"] >= 1  # head (0 CPUs) + workers
    nodes = set(ray.get([where.remote() for _ in range(4)], timeout=300))
    head = k8s.cluster_versions()["node_id"]  # a 0-CPU task may land on the head
    assert nodes and nodes <= {n["NodeID"] for n in ray.nodes() if n["Alive"]}
    assert head in {n["NodeID"] for n in ray.nodes()}


def test_scale_up_and_restore(k8s_conn, request):
    if not _opt(request.config, "k8s_scale", False):
        pytest.skip("worker scaling is tested with --k8s-scale")
    before = k8s_conn.describe()
    replicas = (before["k8s_worker_replicas"] or 0) + 1
    nodes = k8s_conn.scale_to(replicas, timeout=600)
    assert nodes >= before["ray_nodes"] + 1
    k8s_conn.restore()
    assert k8s_conn.describe()["k8s_worker_replicas"] == before["k8s_worker_replicas"]


def test_perf_selection_as_a_ray_job_lands_in_local_storage(k8s_conn, request, tmp_path):
    """The default transport, as a user runs it: a tiny perf/ selection submitted as a Ray Job."""
    config = request.config
    args = [sys.executable, "-m", "pytest", "perf/test_scaling.py", "-p", "no:cacheprovider",
            "--ray-address", "k8s", "--k8s-namespace", k8s_conn.namespace,
            "--k8s-cluster", k8s_conn.cluster, "--backends", "pool", "--workers", "1",
            "--batch-sizes", "10", "--n-instances", "8", "--nruns", "1",
            f"--benchmark-json={tmp_path / 'run.json'}"]
    if _opt(config, "kubeconfig", None):
        args += ["--kubeconfig", str(_opt(config, "kubeconfig", None))]
    done = subprocess.run(args, cwd=Path(__file__).resolve().parents[1], capture_output=True,
                          text=True, timeout=1800)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    run = json.loads((tmp_path / "run.json").read_text())
    machine = run["machine_info"]
    assert machine["ray_transport"] == "jobs" and machine["k8s_cluster"] == k8s_conn.cluster
    assert machine["ray_nodes"] >= 2
    assert any("pool-w1-b10" in b["name"] for b in run["benchmarks"])
