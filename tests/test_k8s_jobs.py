"""``--ray-address k8s`` through Ray Jobs, end to end without a Kubernetes cluster.

Real: a local ``ray start --head`` with its dashboard (the Jobs API) and token authentication,
on free ports, started and stopped by this module by process id; the local pytest of a user
(a subprocess, as they run it), the ``kubernetes`` client against a loopback API server
(``k8s_fakes.FakeKubeAPI``: the RayCluster, its head service, the token Secret, the pods), and
``kubectl port-forward`` as ``tests/fake_kubectl/kubectl``, which forwards the dashboard port.
The job runs pytest in the "cluster" (the head) and its benchmarks come back into local
pytest-benchmark storage.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

pytest.importorskip("ray")

from k8s_fakes import CLUSTER, NS, TOKEN, FakeKubeAPI  # noqa: E402
from ray_heads import RayHead, alive  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FAKE_KUBECTL_DIR = Path(__file__).resolve().parent / "fake_kubectl"
#: a local pytest that takes longer than this is a hang
LOCAL_RUN_TIMEOUT = 240


def _fake_kubectl_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(str(FAKE_KUBECTL_DIR) in a for a in (p.info["cmdline"] or [])) and alive(p):
                found.append(p)
        except psutil.Error:
            pass
    return found


class DashboardHead(RayHead):
    """The "cluster": a head with its dashboard, this interpreter (with the project installed,
    as in the image) first on its PATH, so jobs run ``python`` from it."""

    def __init__(self) -> None:
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        super().__init__(TOKEN, dashboard=True, prefix="ksj", env=env, object_store_mb=150)

    def jobs(self) -> dict[str, str]:
        """Every job the head has seen: id -> status."""
        return {j.submission_id: str(j.status.value) for j in self.job_client().list_jobs()}


@pytest.fixture(scope="module")
def head():
    server = DashboardHead()
    try:
        yield server
    finally:
        server.stop()
    assert server.processes() == [], "a process of the Ray head outlived it"


@pytest.fixture
def api():
    server = FakeKubeAPI()
    yield server
    server.close()


@pytest.fixture
def local(head, api, tmp_path):
    """Runs the user's pytest with ``--ray-address k8s``; checks that nothing is left running."""
    kubeconfig = api.kubeconfig(tmp_path / "kubeconfig")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE", "RAY_ADDRESS",
                        "KUBECONFIG", "PYTEST_ADDOPTS", "FAKE_KUBECTL_FAIL")}
    env.update(PATH=f"{FAKE_KUBECTL_DIR}{os.pathsep}{os.environ['PATH']}",
               FAKE_KUBECTL_TARGET=f"127.0.0.1:{head.dashboard_port}",
               FAKE_KUBECTL_LOG=str(tmp_path / "kubectl.log"), HOME=str(tmp_path / "home"))
    before = set(head.jobs())
    runner = LocalPytest(kubeconfig, env, tmp_path)
    yield runner
    runner.kill()
    assert _fake_kubectl_processes() == [], "a kubectl port-forward was left running"
    unfinished = {j: s for j, s in head.jobs().items()
                  if j not in before and s not in ("SUCCEEDED", "FAILED", "STOPPED")}
    assert unfinished == {}, f"jobs left running: {unfinished}"


class LocalPytest:
    """The user's side: ``python -m pytest ARGS --ray-address k8s`` in a project folder."""

    def __init__(self, kubeconfig: Path, env: dict[str, str], tmp_path: Path) -> None:
        self.kubeconfig = kubeconfig
        self.env = env
        self.tmp_path = tmp_path
        self.proc: subprocess.Popen | None = None
        self.output = ""

    def command(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", "pytest", *args, "--ray-address", "k8s",
                "--kubeconfig", str(self.kubeconfig), "-p", "no:cacheprovider"]

    def run(self, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run(self.command(args), cwd=cwd, env={**self.env, **env},
                              capture_output=True, text=True, timeout=LOCAL_RUN_TIMEOUT)

    def start(self, args: list[str], cwd: Path) -> subprocess.Popen:
        self.proc = subprocess.Popen(self.command(args), cwd=cwd, env=self.env, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self.proc

    def wait_for(self, text: str, timeout: float = 120) -> str:
        """Read the started pytest's output until ``text`` appears (or fail)."""
        assert self.proc is not None and self.proc.stdout is not None
        deadline = time.monotonic() + timeout
        while text not in self.output:
            if time.monotonic() > deadline or self.proc.poll() is not None:
                rest = self.proc.stdout.read() if self.proc.poll() is not None else ""
                pytest.fail(f"{text!r} never appeared; output:\n{self.output}{rest}")
            self.output += self.proc.stdout.readline()
        return self.output

    def finish(self, timeout: float = 60) -> tuple[int, str]:
        assert self.proc is not None and self.proc.stdout is not None
        rest, _ = self.proc.communicate(timeout=timeout)
        self.output += rest or ""
        return self.proc.returncode, self.output

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def kubectl_calls(self) -> list[list[str]]:
        log = self.tmp_path / "kubectl.log"
        return [line.split("\t") for line in log.read_text().splitlines()] if log.exists() else []


def _project(tmp_path: Path, test_source: str) -> Path:
    """A user's project folder: an ini file and one test file ``perf/test_it.py``."""
    project = tmp_path / "project"
    (project / "perf").mkdir(parents=True)
    (project / "pytest.ini").write_text("[pytest]\n")
    (project / "perf" / "test_it.py").write_text(textwrap.dedent(test_source))
    return project


SLEEPER = """
    import time

    def test_sleeps():
        print("remote test started", flush=True)
        time.sleep(120)
"""


# ----------------------------------------------------------------------------------- the run

def test_a_job_runs_the_selection_and_its_benchmarks_land_in_local_storage(local, head, tmp_path):
    # the local Ray reports another version: the Jobs transport does not need them to match
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text("import ray\nray.__version__ = '2.59.1'\n")
    storage = tmp_path / "storage"
    args = ["perf/test_scaling.py", "--backends", "pool", "--workers", "1", "--batch-sizes", "10",
            "--n-instances", "8", "--nruns", "1", "--benchmark-autosave",
            f"--benchmark-storage=file://{storage}"]
    t0 = time.monotonic()
    done = local.run(args, cwd=ROOT, PYTHONPATH=str(site))
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    assert "submitted Ray Job" in out and "pool-w1-b10" in out  # the job's log, live
    last = done.stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"=+ 2 passed in [\d.]+s =+", last), last
    assert "kernelshap-ray results" not in out  # the results block is not shown
    [saved] = list(storage.glob("*/0001_*.json"))
    run = json.loads(saved.read_text())
    machine = run["machine_info"]
    assert machine["k8s_cluster"] == CLUSTER and machine["k8s_namespace"] == NS
    assert machine["ray_transport"] == "jobs" and machine["ray_job_id"].startswith("raysubmit_")
    assert machine["ray_version"] == "2.60.0" and machine["ray_address_mode"] == "auto"
    assert machine["ray_nodes"] == 1 and machine["ray_cpus"] == 1
    names = {b["name"] for b in run["benchmarks"]}
    assert any("pool-w1-b10" in n for n in names) and any("serial" in n for n in names), names
    pool = next(b for b in run["benchmarks"] if "pool-w1-b10" in b["name"])
    assert pool["extra_info"]["backend"] == "pool" and pool["stats"]["rounds"] >= 1
    [call] = local.kubectl_calls()
    assert call[:2] == ["port-forward", f"svc/{CLUSTER}-head-svc"] and call[2].endswith(":8265")
    compare = subprocess.run(
        [str(Path(sys.executable).with_name("pytest-benchmark")), "--storage", f"file://{storage}",
         "compare", "0001"], capture_output=True, text=True, timeout=60)
    assert compare.returncode == 0, compare.stderr
    assert "pool-w1-b10" in compare.stdout
    assert time.monotonic() - t0 < LOCAL_RUN_TIMEOUT


def test_a_failing_remote_test_fails_the_local_run_with_its_message(local, head, api, tmp_path):
    project = _project(tmp_path, """
        def test_boom():
            assert 6 * 7 == 41, "remote boom 6x7"
    """)
    api.group()["replicas"] = 0  # --k8s-scale grows the worker group for 4 workers
    done = local.run(["perf", "--k8s-scale", "--workers", "4"], cwd=project)
    out = done.stdout + done.stderr
    assert done.returncode == 1, out
    assert "remote boom 6x7" in out and "AssertionError" in out
    last = done.stdout.strip().splitlines()[-1]  # pytest's own last line tells the job's outcome
    assert re.fullmatch(r"=+ 1 failed in [\d.]+s =+", last), last
    patches = api.patches()
    assert patches, "the worker group was not scaled"
    assert any(op.get("path", "").endswith("/replicas") and op["value"] > 0 for op in patches[0][3])
    assert api.group()["replicas"] == 0, "the worker group was not restored after the failure"


def test_a_wrong_token_is_a_clear_error_within_seconds(local, head, tmp_path):
    project = _project(tmp_path, "def test_never():\n    pass\n")
    jobs_before = set(head.jobs())
    t0 = time.monotonic()
    done = local.run(["perf"], cwd=project, RAY_AUTH_TOKEN="not-the-token-" + secrets.token_hex(8))
    elapsed = time.monotonic() - t0
    out = done.stdout + done.stderr
    assert done.returncode == 4, out
    assert "refused a wrong Ray auth token" in out and "RAY_AUTH_TOKEN" in out
    assert elapsed < 30, f"took {elapsed:.0f} s"
    assert set(head.jobs()) == jobs_before, "a job was submitted with a wrong token"


# ------------------------------------------------------------------------- stopping the job

def _running_job(head, before: set[str]) -> str:
    [job] = [j for j, s in head.jobs().items() if j not in before]
    return job


def _wait_status(head, job: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    status = head.jobs()[job]
    while status not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
        status = head.jobs()[job]
    return status


def _start_sleeping_job(local, head, tmp_path) -> tuple[subprocess.Popen, str]:
    """The user's pytest, running a job whose test sleeps; the process and the job id."""
    project = _project(tmp_path, SLEEPER)
    before = set(head.jobs())
    proc = local.start(["perf", "-s"], cwd=project)
    local.wait_for("remote test started")
    return proc, _running_job(head, before)


def test_a_forward_that_dies_mid_job_is_a_clear_error_and_the_job_is_stopped(local, head, tmp_path):
    proc, job = _start_sleeping_job(local, head, tmp_path)
    [kubectl] = [p for p in _fake_kubectl_processes() if p.ppid() == proc.pid]
    kubectl.kill()  # the forward dies (a head pod restarting, a laptop going to sleep)
    code, out = local.finish()
    assert code == 3, out
    assert "lost the connection to RayCluster default/kernelshap" in out
    assert "the job was stopped" in out
    assert _wait_status(head, job) == "STOPPED"


def test_ctrl_c_stops_the_job(local, head, tmp_path):
    proc, job = _start_sleeping_job(local, head, tmp_path)
    proc.send_signal(signal.SIGINT)
    code, out = local.finish()
    assert code == 2, out
    assert "KeyboardInterrupt" in out
    assert _wait_status(head, job) == "STOPPED"


def test_k8s_timeout_stops_the_job(local, head, tmp_path):
    project = _project(tmp_path, SLEEPER)
    before = set(head.jobs())
    done = local.run(["perf", "--k8s-timeout", "4"], cwd=project)
    out = done.stdout + done.stderr
    assert done.returncode == 3, out
    assert "at the deadline (--k8s-timeout)" in out and "the job was stopped" in out
    assert _wait_status(head, _running_job(head, before)) == "STOPPED"
