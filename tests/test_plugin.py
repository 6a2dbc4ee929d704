"""The pytest plugin (``explainers.bench.plugin``) and the scaling suite, through pytester.

Most tests run an inner pytest session in-process without starting Ray (option parsing,
ini twins, ids, header, the serial-equality assertion, the ``--benchmark-compare-fail``
gate). A few start real Ray clusters in a subprocess: the skip of configurations the
cluster cannot place together with the two-node placement, the cleanup after a failing
test, the cleanup after Ctrl-C, and the ``ray://`` path.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from explainers.bench.grid import ScalingConfig, default_workers, scaling_grid, study_workers
from explainers.bench.options import OPTIONS
from explainers.bench.pairing import paired_efficiency

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "perf" / "test_scaling.py"


# --------------------------------------------------------------------------- helpers
@pytest.fixture(scope="module")
def model_cache(tmp_path_factory, adult_workload) -> Path:
    """A model cache shared by the inner sessions (so each does not refit the model)."""
    from explainers.workloads.adult import load_workload

    cache = tmp_path_factory.mktemp("models")
    load_workload(adult_workload.data_path.parent, cache_dir=cache)
    return cache


@pytest.fixture
def inner_env(monkeypatch, model_cache, adult_workload) -> dict[str, str]:
    """Environment of the inner sessions: the Adult files and the shared model cache."""
    monkeypatch.setenv("ADULT_DATA_DIR", str(adult_workload.data_path.parent))
    monkeypatch.setenv("EXPLAINERS_CACHE_DIR", str(model_cache))
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    return dict(os.environ)


def _write_suite(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_scaling=SUITE.read_text())


def _ray_sessions_alive(session_name: str) -> list[str]:
    """Command lines of the processes of Ray session ``session_name`` that are still alive."""
    alive = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(proc.info["cmdline"] or [])
            if session_name in cmd and proc.info["status"] != psutil.STATUS_ZOMBIE:
                alive.append(f"{proc.pid}: {cmd[:120]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return alive


def _wait_gone(session_name: str, timeout: float = 30.0) -> list[str]:
    deadline = time.monotonic() + timeout
    alive = _ray_sessions_alive(session_name)
    while alive and time.monotonic() < deadline:
        time.sleep(0.5)
        alive = _ray_sessions_alive(session_name)
    return alive


# --------------------------------------------------------------------------- pure helpers
def test_ids_follow_the_contract():
    assert ScalingConfig("serial").id == "serial"
    assert ScalingConfig("pool", 2, 5).id == "pool-w2-b5"
    assert ScalingConfig("serve", 2, 10, "ray").id == "serve-ray-w2-b10"
    assert ScalingConfig("serve", 4, 1, "default").id == "serve-default-w4-b1"
    assert ScalingConfig("data", 1, 10).id == "data-w1-b10"
    assert ScalingConfig("serve", 2, 10, "ray").group == "serve-ray batch=10"


def test_grid_has_serial_first_and_every_combination():
    grid = scaling_grid(("pool", "serve"), ("ray", "default"), (1, 2), (5,))
    assert [c.id for c in grid] == [
        "serial", "pool-w1-b5", "pool-w2-b5",
        "serve-ray-w1-b5", "serve-ray-w2-b5", "serve-default-w1-b5", "serve-default-w2-b5",
    ]


@pytest.mark.parametrize("cpus, expected", [(1, [1]), (2, [1, 2]), (4, [1, 2, 4]), (6, [1, 2, 4, 6]), (8, [1, 2, 4, 8])])
def test_default_workers_are_powers_of_two_up_to_the_cpus(cpus, expected):
    assert default_workers(cpus) == expected


def test_paired_efficiency_is_the_median_paired_speedup_per_worker():
    # rounds 2 s, 2 s and one slow 8 s, each after a 3 s serial round: the slow one is ignored
    assert paired_efficiency([3.0, 3.0, 3.0], [2.0, 8.0, 2.0], workers=2) == pytest.approx(0.75)
    assert paired_efficiency([3.0, 4.0], [2.0, 2.0], workers=1) == pytest.approx(1.75)  # even: the mean of the middle two
    assert paired_efficiency([], [], workers=2) is None


# --------------------------------------------------------------------------- options and ini
def test_help_shows_all_options_in_one_group(pytester):
    result = pytester.runpytest("--help")
    out = result.stdout.str()
    start = out.index("distributed-kernelshap: Ray cluster, workload and benchmark grid:")
    end = out.index("\n\n", start)
    group = out[start:end]
    for opt in OPTIONS:
        assert opt.flag in group, opt.flag
        assert opt.ini in out, opt.ini  # the ini twin is listed in the ini section


PRINT_OPTIONS = """
def test_options(kernelshap_ray):
    o = kernelshap_ray.options
    print("\\nOPTIONS", o.ray_address, o.nodes, o.ray_cpus, list(o.workers or []), list(o.batch_sizes),
          list(o.backends), list(o.serve_modes), o.n_instances, o.nsamples, o.nruns, o.report_dir,
          o.k8s.namespace, o.k8s.cluster, o.k8s_scale, o.min_efficiency, o.max_overhead_share)
"""


def _options_line(result) -> str:
    line = next(x for x in result.outlines if x.startswith("OPTIONS"))
    return line.split(" ", 1)[1]


def test_defaults(pytester):
    pytester.makepyfile(PRINT_OPTIONS)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert _options_line(result) == (
        "local 1 None [] [1, 5, 10] ['pool', 'serve', 'data'] ['ray', 'default'] None auto 3 None "
        "default kernelshap False None None"
    )
    # None: the defaults, 240 and the engine suite's 40 (all with --study)
    assert "n_instances=240 (engine suite 40) " in result.stdout.str()


def test_ini_twins_and_command_line_precedence(pytester):
    pytester.makeini(
        """
        [pytest]
        kernelshap_ray_address = local
        kernelshap_nodes = 2
        kernelshap_ray_cpus = 4
        kernelshap_workers = 1, 3
        kernelshap_batch_sizes = 2 7
        kernelshap_backends = data pool
        kernelshap_serve_modes = default
        kernelshap_n_instances = 40
        kernelshap_nsamples = 100
        kernelshap_nruns = 2
        kernelshap_report_dir = rep
        kernelshap_k8s_namespace = ns
        kernelshap_k8s_cluster = rc
        kernelshap_k8s_scale = true
        kernelshap_min_efficiency = 0.5
        kernelshap_max_overhead_share = 0.3
        """
    )
    pytester.makepyfile(PRINT_OPTIONS)
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    # backends come out in canonical order
    assert _options_line(result) == (
        "local 2 4 [1, 3] [2, 7] ['pool', 'data'] ['default'] 40 100 2 rep ns rc True 0.5 0.3"
    )
    # the command line wins over the ini file; lists can be repeated or comma separated
    result = pytester.runpytest("-s", "--workers", "4", "--workers", "2,1", "--nruns", "5", "--backends", "serve",
                                "--min-efficiency", "0.75", "--max-overhead-share", "0.2")
    result.assert_outcomes(passed=1)
    assert _options_line(result) == (
        "local 2 4 [1, 2, 4] [2, 7] ['serve'] ['default'] 40 100 5 rep ns rc True 0.75 0.2"
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workers", "0"], "--workers: 0 is not allowed; use an integer >= 1"),
        (["--workers", "two"], "--workers: 'two' is not an integer"),
        (["--workers", ","], "--workers: empty list"),
        (["--batch-sizes", "-1"], "--batch-sizes: -1 is not allowed"),
        (["--backends", "pool,spark"], "--backends: unknown value(s) 'spark'; choose from pool, serve, data"),
        (["--serve-modes", "fast"], "--serve-modes: unknown value(s) 'fast'; choose from ray, default"),
        (["--ray-address", "tcp://h:1"], "use 'local', 'auto', 'ray://HOST:PORT' or 'k8s'"),
        (["--ray-address", "ray://host"], "use 'local', 'auto', 'ray://HOST:PORT' or 'k8s'"),
        (["--ray-address", "auto", "--nodes", "2"], "--nodes and --ray-cpus apply to --ray-address local only"),
        (["--nodes", "3", "--ray-cpus", "2"], "--ray-cpus 2 cannot be split over --nodes 3"),
        (["--nsamples", "1"], "--nsamples: 1 is not allowed; use 'auto' or an integer >= 2"),
        (["--nsamples", "many"], "--nsamples: 'many' is not allowed"),
        (["--nruns", "0"], "--nruns: 0 is not allowed"),
        (["--n-instances", "1.5"], "--n-instances: '1.5' is not an integer"),
        (["--n-instances", "99999"], "--n-instances: 99999 is not allowed; use an integer from 1 to 2560"),
        (["--min-efficiency", "0"], "--min-efficiency: 0 is not allowed; use a fraction in (0, 1]"),
        (["--min-efficiency", "1.5"], "--min-efficiency: 1.5 is not allowed; use a fraction in (0, 1]"),
        (["--min-efficiency", "high"], "--min-efficiency: 'high' is not a number"),
        (["--max-overhead-share", "-0.1"], "--max-overhead-share: -0.1 is not allowed; use a fraction in (0, 1]"),
        (["--max-overhead-share", "10%"], "--max-overhead-share: '10%' is not a number"),
        (["--placement-timeout", "0"], "--placement-timeout: 0 is not allowed; use seconds > 0"),
        (["--placement-timeout", "inf"], "--placement-timeout: inf is not allowed; use seconds > 0"),
        (["--placement-timeout", "soon"], "--placement-timeout: 'soon' is not a number"),
    ],
)
def test_bad_values_are_usage_errors(pytester, args, message):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nkernelshap_backends = pool gpu\n")
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--backends: unknown value(s) 'gpu'" in result.stderr.str()


def test_k8s_address_without_k8s_module_support_is_clear(pytester, monkeypatch):
    """``--ray-address k8s`` parses; the k8s options reach the session (no cluster is contacted)."""
    pytester.makepyfile(PRINT_OPTIONS)
    result = pytester.runpytest("-s", "--ray-address", "k8s", "--k8s-namespace", "bench", "--k8s-cluster", "ks",
                                "--k8s-transport", "client")
    result.assert_outcomes(passed=1)
    assert _options_line(result).startswith("k8s 1 None")
    assert "bench ks False" in _options_line(result)
    assert "address k8s (namespace bench, RayCluster ks, transport client)" in result.stdout.str()


@pytest.mark.parametrize("args, message", [
    (["--k8s-transport", "grpc"], "--k8s-transport: 'grpc' is not allowed; choose from jobs, client"),
    (["--k8s-timeout", "0"], "--k8s-timeout: 0 is not allowed; use seconds > 0"),
    (["--k8s-timeout", "soon"], "--k8s-timeout: 'soon' is not a number"),
])
def test_bad_k8s_transport_options_are_usage_errors(pytester, args, message):
    pytester.makepyfile(PRINT_OPTIONS)
    result = pytester.runpytest("--ray-address", "k8s", *args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert message in result.stderr.str()


def test_k8s_jobs_transport_collects_nothing_here_and_needs_a_kubeconfig(pytester, monkeypatch):
    """The default transport runs the selection as a Ray Job: nothing is collected or imported
    here, and a missing Kubernetes configuration is a clear error before anything is submitted."""
    monkeypatch.setenv("HOME", str(pytester.path / "home"))
    monkeypatch.delenv("KUBECONFIG", raising=False)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    pytester.makepyfile(test_never_imported="raise RuntimeError('imported locally')\n")
    result = pytester.runpytest("--ray-address", "k8s", "test_never_imported.py")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "kernelshap-ray: no Kubernetes configuration found" in result.stdout.str()
    assert "imported locally" not in result.stdout.str() + result.stderr.str()


# --------------------------------------------------------------------------- collection, ids, header
def test_generated_ids_and_no_ray_at_collection(pytester, inner_env):
    import ray

    _write_suite(pytester)
    result = pytester.runpytest(
        "--collect-only", "-q", "--workers", "2,1", "--batch-sizes", "10,5",
        "--backends", "serve,pool", "--serve-modes", "ray",
    )
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "test_scaling[" in line]
    assert ids == [
        "serial",
        "pool-w1-b5", "pool-w2-b5", "pool-w1-b10", "pool-w2-b10",
        "serve-ray-w1-b5", "serve-ray-w2-b5", "serve-ray-w1-b10", "serve-ray-w2-b10",
    ]
    assert not ray.is_initialized()


def test_default_workers_follow_the_local_cpus(pytester, inner_env):
    _write_suite(pytester)
    result = pytester.runpytest("--collect-only", "-q", "--ray-cpus", "4", "--backends", "data", "--batch-sizes", "1")
    ids = [line.split("[", 1)[1].rstrip("]") for line in result.outlines if "test_scaling[" in line]
    assert ids == ["serial", "data-w1-b1", "data-w2-b1", "data-w4-b1"]


def test_serial_baseline_is_moved_first(pytester):
    pytester.makepyfile(
        """
        import pytest
        from explainers.bench.grid import ScalingConfig

        def test_before():
            pass

        @pytest.mark.parametrize("scaling_config", [ScalingConfig("pool", 1, 5), ScalingConfig("serial")],
                                 ids=["pool-w1-b5", "serial"])
        def test_scaling(scaling_config):
            pass
        """
    )
    result = pytester.runpytest("--collect-only", "-q")
    names = [line for line in result.outlines if "::" in line]
    assert names[0].endswith("test_scaling[serial]")


def test_report_header_without_starting_ray(pytester):
    pytester.makepyfile("def test_x(): pass")
    result = pytester.runpytest("--nodes", "2", "--ray-cpus", "2", "--n-instances", "8")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([
        "kernelshap-ray: ray 2.*, python 3.*, address local (2 nodes, 2 CPUs); connected when a test needs the cluster",
        "kernelshap-ray: workload=explainers.workloads.adult:workload n_instances=8 nsamples=auto nruns=3 "
        "backends=pool,serve,data *",
    ])
    assert "min_efficiency" not in result.stdout.str() and "max_overhead_share" not in result.stdout.str()
    result = pytester.runpytest("--min-efficiency", "0.6", "--max-overhead-share", "0.25")
    result.stdout.fnmatch_lines(["kernelshap-ray: workload=* n_instances=* workers=* min_efficiency=0.6 "
                                 "max_overhead_share=0.25"])
    assert "kernelshap-ray: ran on" not in result.stdout.str()  # nothing connected
    result = pytester.runpytest("--ray-address", "ray://10.0.0.1:10001")
    result.stdout.fnmatch_lines(["kernelshap-ray: ray *, address ray://10.0.0.1:10001; connected when *"])


# --------------------------------------------------------------------------- serial-only runs (no Ray)
WRONG_EXPLAINER = """
import pytest

class Shifted:
    def __init__(self, inner):
        self.inner = inner
    def explain(self, X):
        return self.inner.explain(X) + 1e-9

@pytest.fixture(scope="session")
def explainer_factory(explainer_factory):
    return lambda config: Shifted(explainer_factory(config))
"""


def test_a_wrong_result_fails_and_records_no_time(pytester, inner_env):
    _write_suite(pytester)
    pytester.makeconftest(WRONG_EXPLAINER)
    out = pytester.path / "out.json"
    result = pytester.runpytest("-k", "serial", "--n-instances", "2", "--nruns", "2", f"--benchmark-json={out}")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*serial: values are not identical to the serial reference (max diff 1e-09)*"])
    saved = json.loads(out.read_text()) if out.exists() else {"benchmarks": []}
    assert saved["benchmarks"] == []
    assert "benchmark 'serial'" not in result.stdout.str()  # no table row for it either


def test_serial_benchmark_records_extra_and_machine_info(pytester, inner_env):
    _write_suite(pytester)
    out = pytester.path / "out.json"
    result = pytester.runpytest("-k", "serial", "--n-instances", "2", "--nruns", "2", f"--benchmark-json={out}")
    result.assert_outcomes(passed=1)
    saved = json.loads(out.read_text())
    (bench,) = saved["benchmarks"]
    assert bench["param"] == "serial" and bench["group"] == "serial"
    assert bench["stats"]["rounds"] == 2
    info = bench["extra_info"]
    assert info["backend"] == "serial" and info["serve_mode"] is None and info["batch_size"] is None
    assert info["workers"] == 1 and info["n_instances"] == 2 and info["nsamples"] == 2072
    assert info["exact"] is False and info["nodes_used"] is None
    assert info["speedup"] == pytest.approx(1.0) and info["efficiency"] == pytest.approx(1.0)
    assert info["explanations_per_s"] == pytest.approx(2 / bench["stats"]["mean"])
    machine = saved["machine_info"]
    assert machine["ray_address_mode"] == "local" and machine["ray_nodes"] == 1
    assert machine["ray_cpus"] == os.cpu_count()
    assert machine["ray_version"] == __import__("ray").__version__
    assert machine["workload"] == "adult" and info["workload"] == "adult" and info["suite"] == "scaling"


def test_report_dir_writes_the_report_at_the_end(pytester, inner_env):
    _write_suite(pytester)
    result = pytester.runpytest("-k", "serial", "--n-instances", "1", "--nruns", "1", "--report-dir", "rep",
                                "-W", "ignore::UserWarning")
    result.assert_outcomes(passed=1)
    summary = pytester.path / "rep" / "summary.md"
    assert summary.is_file()
    assert "| serial |" in summary.read_text()
    result.stdout.fnmatch_lines(["kernelshap-ray: report written: *summary.md*"])


SLOWDOWN = """
import os, time
import pytest

class Delayed:
    def __init__(self, inner):
        self.inner = inner
    def explain(self, X):
        time.sleep(float(os.environ["KS_TEST_DELAY"]))
        return self.inner.explain(X)

@pytest.fixture(scope="session")
def explainer_factory(explainer_factory):
    return lambda config: Delayed(explainer_factory(config))
"""


def test_compare_fail_gate_fails_on_a_slowdown_and_passes_without(pytester, inner_env, monkeypatch):
    """The CI gate: ``--benchmark-compare-fail=mean:50%`` against a saved baseline.

    The timed function sleeps ``KS_TEST_DELAY`` seconds before explaining (1 instance,
    well under the delay), so the baseline is about 1 s, the slowed run about 3 s.
    """
    _write_suite(pytester)
    pytester.makeconftest(SLOWDOWN)
    common = ["-k", "serial", "--n-instances", "1", "--nruns", "1",
              f"--benchmark-storage=file://{pytester.path / 'bench'}"]
    monkeypatch.setenv("KS_TEST_DELAY", "1.0")
    saved = pytester.runpytest(*common, "--benchmark-save=base")
    saved.assert_outcomes(passed=1)
    gate = [*common, "--benchmark-compare=0001", "--benchmark-compare-fail=mean:50%"]

    monkeypatch.setenv("KS_TEST_DELAY", "3.0")
    slow = pytester.runpytest(*gate)
    assert slow.ret != 0
    text = slow.stdout.str() + slow.stderr.str()
    assert "Performance has regressed" in text
    assert any(
        "test_scaling[serial]" in line and "Field 'mean' has failed PercentageRegressionCheck" in line
        for line in text.splitlines()
    ), text[-2000:]

    monkeypatch.setenv("KS_TEST_DELAY", "1.0")
    same = pytester.runpytest(*gate)
    assert same.ret == 0, same.stdout.str()[-2000:]
    assert "Performance has regressed" not in same.stdout.str() + same.stderr.str()


# --------------------------------------------------------------------------- real Ray clusters (subprocess)
@pytest.mark.slow
def test_two_nodes_are_both_used_and_unplaceable_configs_are_skipped(pytester, inner_env):
    """``--nodes 2`` on 2 CPUs: two one-CPU nodes; 2 pool workers run on both; 3 workers are skipped."""
    _write_suite(pytester)
    out = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "-rs", "--nodes", "2", "--ray-cpus", "2", "--backends", "pool", "--workers", "2,3",
        "--batch-sizes", "1", "--n-instances", "4", "--nruns", "1", "-k", "not serial",
        f"--benchmark-json={out}", timeout=300,
    )
    result.assert_outcomes(passed=1, skipped=1)
    result.stdout.fnmatch_lines([
        "kernelshap-ray: ran on local cluster *: 2 node(s), CPUs per node [[]1, 1[]], ray *",
        "SKIPPED * pool-w3-b1: 3 workers x 1 CPU need 3 CPUs, the cluster has 2 on 2 node(s); use --workers up to 2",
    ])
    saved = json.loads(out.read_text())
    (bench,) = saved["benchmarks"]
    assert bench["param"] == "pool-w2-b1"
    assert bench["extra_info"]["nodes_used"] == 2
    # no serial baseline benchmark ran, but each round was paired with a serial round
    info = bench["extra_info"]
    assert len(info["serial_rounds"]) == 1 and info["serial_seconds"] == info["serial_rounds"][0]
    assert info["speedup"] == pytest.approx(info["serial_seconds"] / bench["stats"]["mean"])
    assert saved["machine_info"]["ray_nodes"] == 2 and saved["machine_info"]["ray_cpus"] == 2


DRIVER_BUSY_AT_TWO_WORKERS = """
import time
import pytest

class DriverBusy:
    def __init__(self, inner):
        self.inner = inner
    def start(self):
        self.inner.start()
    def explain(self, X):
        end = time.process_time() + 4.0
        while time.process_time() < end:  # 4 CPU-s of the driver's, while the workers wait
            pass
        return self.inner.explain(X)
    def __getattr__(self, name):
        return getattr(self.inner, name)

@pytest.fixture(scope="session")
def explainer_factory(explainer_factory):
    def make(config):
        inner = explainer_factory(config)
        return DriverBusy(inner) if config.workers == 2 else inner
    return make
"""


@pytest.mark.slow
def test_gates_fail_the_configuration_that_misses_them(pytester, inner_env):
    """``--min-efficiency`` and ``--max-overhead-share`` on a real local cluster: pool at 1 worker
    passes both; pool at 2 workers, whose calls keep the driver busy for 4 CPU-s before
    explaining 8 instances (efficiency about 0.02, overhead share about 0.9), fails both with
    the figures in the message, and its figures are still saved."""
    _write_suite(pytester)
    pytester.makeconftest(DRIVER_BUSY_AT_TWO_WORKERS)
    out = pytester.path / "out.json"
    result = pytester.runpytest_subprocess(
        "--ray-cpus", "2", "--backends", "pool", "--workers", "1,2", "--batch-sizes", "1",
        "--n-instances", "8", "--nruns", "1", "--min-efficiency", "0.1", "--max-overhead-share", "0.8",
        "-k", "not serial", f"--benchmark-json={out}", timeout=300,
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([
        "*min_efficiency=0.1 max_overhead_share=0.8*",
        "*pool-w2-b1: paired efficiency 0.0? (median speedup 0.0?x at 2 workers) is below --min-efficiency 0.1; "
        "overhead CPU share 0.[89]? (per call: driver 4.* CPU-s, Ray's processes 0.* CPU-s, workers 0.* CPU-s) "
        "is above --max-overhead-share 0.8*",
    ])
    saved = {b["param"]: b["extra_info"] for b in json.loads(out.read_text())["benchmarks"]}
    assert saved["pool-w1-b1"]["paired_efficiency"] >= 0.1
    assert saved["pool-w1-b1"]["overhead_cpu_share"] <= 0.8
    assert saved["pool-w2-b1"]["paired_efficiency"] < 0.1
    assert saved["pool-w2-b1"]["overhead_cpu_share"] > 0.8


RECORD_SESSION = """
import os, time
import ray

def test_uses_the_cluster(ray_cluster):
    node = ray._private.worker.global_worker.node
    with open("session_name.txt", "w") as fh:
        fh.write(node.session_name if node is not None else "")
    assert ray.is_initialized()
    if os.environ.get("KS_TEST_HANG"):
        time.sleep(120)
    assert False, "this test fails on purpose"
"""


RECORD_INITIALIZED = """
import pytest

@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import ray
    with open("initialized_at_exit.txt", "w") as fh:
        fh.write(str(ray.is_initialized()))
"""


@pytest.mark.slow
def test_cluster_is_shut_down_after_a_failing_test(pytester, inner_env):
    """A two-node local cluster, a test that fails: Ray is disconnected and every process is gone."""
    pytester.makepyfile(RECORD_SESSION)
    pytester.makeconftest(RECORD_INITIALIZED)
    result = pytester.runpytest_subprocess("--nodes", "2", "--ray-cpus", "2", timeout=300)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*AssertionError: this test fails on purpose*"])
    session_name = (pytester.path / "session_name.txt").read_text()
    assert session_name.startswith("session_")
    assert (pytester.path / "initialized_at_exit.txt").read_text() == "False"
    assert _wait_gone(session_name) == []


@pytest.mark.slow
def test_cluster_is_shut_down_after_ctrl_c(pytester, inner_env):
    pytester.makepyfile(RECORD_SESSION)
    env = dict(inner_env, KS_TEST_HANG="1")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--ray-cpus", "1"],
        cwd=pytester.path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        # a run started in the background by a shell inherits SIGINT ignored: restore Ctrl-C
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    marker = pytester.path / "session_name.txt"
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the inner test never started"
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "KeyboardInterrupt" in output, output[-2000:]
    session_name = marker.read_text()
    assert session_name.startswith("session_")
    assert _wait_gone(session_name) == []


@pytest.mark.slow
def test_remote_address_runs_the_work_inside_the_cluster(pytester, inner_env):
    """``--ray-address ray://...``: the pool and Serve run in a task inside the cluster."""
    from ray.cluster_utils import Cluster

    from explainers.cluster.kuberay import free_port

    port = free_port()
    cluster = Cluster()
    try:
        cluster.add_node(num_cpus=2, object_store_memory=300 * 1024**2, include_dashboard=False,
                         ray_client_server_port=port)
        _write_suite(pytester)
        out = pytester.path / "out.json"
        result = pytester.runpytest_subprocess(
            "--ray-address", f"ray://127.0.0.1:{port}", "--backends", "serve", "--serve-modes", "default",
            "--workers", "1", "--batch-sizes", "2", "--n-instances", "2", "--nruns", "1",
            f"--benchmark-json={out}", timeout=300,
        )
        result.assert_outcomes(passed=2)
        saved = json.loads(out.read_text())
        assert saved["machine_info"]["ray_address_mode"] == "client"
        bench = next(b for b in saved["benchmarks"] if b["param"] == "serve-default-w1-b2")
        assert len(bench["extra_info"]["in_cluster_seconds"]) == 1
        assert bench["extra_info"]["nodes_used"] == 1
        assert bench["extra_info"]["speedup"] is not None
    finally:
        cluster.shutdown()


def test_placement_timeout_reaches_the_explainers(pytester, inner_env):
    """``--placement-timeout`` (and its ini twin) is passed to every distributed explainer."""
    pytester.makeini("[pytest]\nkernelshap_placement_timeout = 7.5\n")
    pytester.makepyfile(
        """
        from explainers.bench.factory import ExplainerFactory
        from explainers.bench.grid import ScalingConfig

        def test_x(kernelshap_ray):
            kwargs = ExplainerFactory(kernelshap_ray).kwargs(ScalingConfig("pool", workers=1, batch_size=5))
            print("TIMEOUT", kwargs["placement_timeout_s"])
        """
    )
    result = pytester.runpytest("-s")
    result.assert_outcomes(passed=1)
    assert "TIMEOUT 7.5" in result.stdout.str()
    result = pytester.runpytest("-s", "--placement-timeout", "3")
    assert "TIMEOUT 3.0" in result.stdout.str()


def test_a_configuration_that_cannot_be_placed_is_skipped_with_the_reason(pytester):
    """A PlacementError, raised directly or carried as the cause of a Ray task error, skips the
    test with its message; any other error still fails it."""
    pytester.makepyfile(
        """
        from explainers.kernelshap.backends import PlacementError

        class TaskError(RuntimeError):  # what Ray Client raises: the remote error as .cause
            def __init__(self, cause):
                super().__init__("task failed")
                self.cause = cause

        def test_direct():
            raise PlacementError("2 workers x 1 CPU could not be placed: held by CpuBlocker")

        def test_wrapped():
            raise TaskError(PlacementError("held by CpuBlocker"))

        def test_other():
            raise TimeoutError("not a placement")
        """
    )
    result = pytester.runpytest("-rs")
    result.assert_outcomes(skipped=2, failed=1)
    out = result.stdout.str()
    assert "cannot be placed: 2 workers x 1 CPU could not be placed: held by CpuBlocker" in out


# --------------------------------------------------------------------------- --compare-gate
NAP_BENCHMARK = """
import os, time

def test_scaling(benchmark):
    benchmark.extra_info.update(suite="scaling", workload="adult", backend="serial", workers=1, batch_size=10,
                                n_instances=8, nsamples=2072, exact=False)
    benchmark.pedantic(time.sleep, args=(float(os.environ.get("NAP", "0.02")),), rounds=5, iterations=1)
"""


def test_compare_gate_fails_a_slowdown_beyond_the_noise_and_passes_a_rerun(pytester, monkeypatch):
    """Saved runs keep their raw rounds by default; --compare-gate judges them (docs/compare.md)."""
    pytester.makepyfile(test_nap=NAP_BENCHMARK)
    monkeypatch.setenv("NAP", "0.02")
    pytester.runpytest_subprocess("--benchmark-save=base").assert_outcomes(passed=1)
    [saved] = (pytester.path / ".benchmarks").rglob("0001_base.json")
    assert len(json.loads(saved.read_text())["benchmarks"][0]["stats"]["data"]) == 5
    rerun = pytester.runpytest_subprocess("--compare-gate", "0001")
    assert rerun.ret == pytest.ExitCode.OK
    rerun.stdout.fnmatch_lines(["kernelshap-ray: --compare-gate against *0001_base.json: no regression(s)*"])
    monkeypatch.setenv("NAP", "0.04")
    slow = pytester.runpytest_subprocess("--compare-gate", "0001")
    assert slow.ret == pytest.ExitCode.TESTS_FAILED
    slow.stdout.fnmatch_lines(["*1 regression(s) beyond the noise*",
                               "*test_nap.py::test_scaling: time regressed x1.9*"])


def test_compare_gate_naming_no_saved_run_is_a_usage_error_before_anything_runs(pytester):
    pytester.makepyfile(test_nap=NAP_BENCHMARK)
    result = pytester.runpytest_subprocess("--compare-gate", "0042")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--compare-gate: run 0042: no 0042_*.json in" in result.stderr.str()
    assert "test_scaling" not in result.stdout.str()
