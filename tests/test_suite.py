"""Every option governs every perf file (``perf/*.py``), through pytester.

Collection-only checks start no Ray; one test runs the whole of ``perf/`` on a tiny selection
of the second shipped workload (breast cancer), in a subprocess, and checks every record.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

# the modules the breast-cancer workload imports lazily, imported before any of pytester's
# snapshots of sys.modules: removed after one in-process run, they could not be imported again
import sklearn.datasets  # noqa: F401, E402
import sklearn.ensemble  # noqa: F401, E402

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
PERF_FILES = sorted((REPO / "perf").glob("test_*.py"))
BREAST_CANCER = "explainers.workloads.breast_cancer:workload"


@pytest.fixture
def perf_suite(pytester, monkeypatch) -> pytest.Pytester:
    """A pytester directory holding a copy of every perf file."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    for path in PERF_FILES:
        pytester.makepyfile(**{path.stem: path.read_text()})
    return pytester


def _collected(result) -> list[str]:
    return [line for line in result.outlines if "::" in line]


def test_a_selection_collects_only_what_was_selected_in_every_file(perf_suite):
    result = perf_suite.runpytest("--collect-only", "-q", "--workload", BREAST_CANCER,
                                  "--backends", "pool", "--workers", "1", "--batch-sizes", "5")
    items = _collected(result)
    by_file = {p.stem: [i for i in items if i.startswith(p.stem + ".py")] for p in PERF_FILES}
    assert all(by_file.values()), by_file  # each file is covered
    ids = [i.split("[", 1)[1].rstrip("]") for i in by_file["test_scaling"]]
    assert ids == ["serial", "pool-w1-b5"]
    ids = [i.split("[", 1)[1].rstrip("]") for i in by_file["test_backends"]]
    assert ids == ["serial", "processes-w1-b5", "pool-w1-b5"]
    assert len(by_file["test_mission"]) == 2 and all("pool-w1-b5" in i for i in by_file["test_mission"])
    for item in items:  # nothing that was not selected
        for unwanted in ("serve", "data", "-w2", "-b10", "-b1]", "-b1-"):
            assert unwanted not in item, item


def test_the_default_grid_in_every_file_follows_the_cpus(perf_suite):
    result = perf_suite.runpytest("--collect-only", "-q", "--workload", BREAST_CANCER, "--ray-cpus", "2",
                                  "--backends", "data", "--batch-sizes", "1,5")
    items = _collected(result)
    scaling = [i.split("[", 1)[1].rstrip("]") for i in items if i.startswith("test_scaling.py")]
    assert scaling == ["serial", "data-w1-b1", "data-w2-b1", "data-w1-b5", "data-w2-b5"]
    backends = [i.split("[", 1)[1].rstrip("]") for i in items if i.startswith("test_backends.py")]
    assert backends == ["serial", "processes-w1-b5", "data-w1-b5", "processes-w2-b5", "data-w2-b5"]
    mission = [i for i in items if i.startswith("test_mission.py")]
    assert len(mission) == 2 and all("data-w2-b5" in i for i in mission)


def test_reuse_coalitions_is_a_dimension_of_the_scaling_and_backends_grids(perf_suite):
    def ids(*args: str) -> dict[str, list[str]]:
        # in-process (0.1 s a run, 1.7 s in a subprocess): the workload's lazy modules are imported above
        result = perf_suite.runpytest("--collect-only", "-q", "--workload", BREAST_CANCER,
                                      "--backends", "pool", "--workers", "2", "--batch-sizes", "5", *args)
        items = _collected(result)
        return {f: [i.split("[", 1)[1].rstrip("]") for i in items if i.startswith(f + ".py")]
                for f in ("test_scaling", "test_backends")}

    assert ids() == {"test_scaling": ["serial", "pool-w2-b5"],
                     "test_backends": ["serial", "processes-w2-b5", "pool-w2-b5"]}
    assert ids("--reuse-coalitions", "on") == {"test_scaling": ["serial", "pool-w2-b5-reuse"],
                                               "test_backends": ["serial", "processes-w2-b5", "pool-w2-b5-reuse"]}
    assert ids("--reuse-coalitions", "both")["test_scaling"] == ["serial", "pool-w2-b5", "pool-w2-b5-reuse"]
    perf_suite.makeini("[pytest]\nkernelshap_reuse_coalitions = on\n")
    assert ids()["test_scaling"] == ["serial", "pool-w2-b5-reuse"]
    result = perf_suite.runpytest("--collect-only", "-q", "--reuse-coalitions", "yes")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    assert "--reuse-coalitions: 'yes' is not allowed; choose from off, on, both" in result.stderr.str()


PRINT = """
def test_options(kernelshap_ray):
    o = kernelshap_ray.options
    print("\\nOPTIONS", kernelshap_ray.n_instances(), list(o.batch_sizes), kernelshap_ray.workers(), o.nruns,
          o.progress, o.study)
"""


def _options(result) -> str:
    return next(x for x in result.outlines if x.startswith("OPTIONS")).split(" ", 1)[1]


def test_study_is_the_studys_protocol_and_explicit_options_win(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makepyfile(PRINT)
    result = pytester.runpytest("-s", "--study", "--ray-cpus", "3", "--workload", BREAST_CANCER)
    result.assert_outcomes(passed=1)
    from explainers.workloads.breast_cancer import workload

    assert _options(result) == f"{len(workload().X)} [1, 5, 10] [1, 2, 3] 5 True True"
    result = pytester.runpytest("-s", "--study", "--ray-cpus", "3", "--nruns", "2", "--n-instances", "7",
                                "--workers", "2", "--batch-sizes", "4", "--workload", BREAST_CANCER)
    assert _options(result) == "7 [4] [2] 2 True True"
    pytester.makeini("[pytest]\nkernelshap_study = true\nkernelshap_workload = " + BREAST_CANCER + "\n")
    result = pytester.runpytest("-s", "--ray-cpus", "2")
    assert _options(result).endswith("[1, 5, 10] [1, 2] 5 True True")
    result.stdout.fnmatch_lines(["kernelshap-ray: workload=explainers.workloads.breast_cancer:workload study *"])


def test_progress_has_an_ini_twin_and_is_off_by_default(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makepyfile(PRINT)
    assert _options(pytester.runpytest("-s", "--ray-cpus", "2")).endswith("3 False False")
    assert _options(pytester.runpytest("-s", "--ray-cpus", "2", "--progress")).endswith("3 True False")
    pytester.makeini("[pytest]\nkernelshap_progress = true\n")
    assert _options(pytester.runpytest("-s", "--ray-cpus", "2")).endswith("3 True False")


def test_every_perf_file_runs_on_another_workload(perf_suite):
    """The whole of ``perf/`` on the breast-cancer workload: every record names it and its suite."""
    out = perf_suite.path / "out.json"
    result = perf_suite.runpytest_subprocess(
        "-p", "no:cacheprovider", "--workload", BREAST_CANCER, "--backends", "pool", "--workers", "1",
        "--batch-sizes", "4", "--n-instances", "8", "--nruns", "1", "--reuse-coalitions", "both",
        f"--benchmark-json={out}",
        "-W", "ignore::UserWarning", timeout=600,
    )
    outcomes = result.parseoutcomes()
    assert result.ret == 0, result.stdout.str()[-3000:]
    assert outcomes.get("failed", 0) == 0 and outcomes.get("skipped", 0) == 0
    saved = json.loads(out.read_text())
    assert saved["machine_info"]["workload"] == "breast-cancer"
    suites = set()
    for bench in saved["benchmarks"]:
        info = bench["extra_info"]
        assert info["workload"] == "breast-cancer", bench["fullname"]
        assert info["n_instances"] == 8, bench["fullname"]
        assert bench["stats"]["rounds"] == 1, bench["fullname"]
        suites.add(info["suite"])
    assert suites == {"scaling", "backends", "engine", "mission"}
    reused = {b["name"] for b in saved["benchmarks"]
              if b["extra_info"]["suite"] in ("scaling", "backends") and b["extra_info"].get("reuse_coalitions")}
    assert reused == {"test_scaling[pool-w1-b4-reuse]", "test_backend[pool-w1-b4-reuse]"}
