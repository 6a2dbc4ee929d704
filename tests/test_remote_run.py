"""The pieces of the Ray Jobs transport that need no cluster: the job's arguments, its
working_dir, the results block of its log, and benchmarks rebuilt for pytest-benchmark."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from explainers.bench.job_entry import (RESULTS_BEGIN, RESULTS_END, ResultsError, ResultsFilter,
                                        encode_results, parse_results)
from explainers.bench.remote_run import benchmarks_from_json, remote_pytest_args

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("args, expected", [
    (["perf/", "--ray-address", "k8s", "--workers", "1,2"], ["perf/", "--workers", "1,2"]),
    (["perf/", "--ray-address=k8s", "--k8s-scale", "--k8s-timeout", "60", "--kubeconfig=/k"], ["perf/"]),
    (["--benchmark-autosave", "--benchmark-save", "x", "--benchmark-json", "out.json", "perf/"], ["perf/"]),
    (["--benchmark-compare", "--benchmark-compare-fail=min:5%", "perf/"], ["perf/"]),  # "?": perf/ is taken
    (["--benchmark-compare", "0001", "-k", "pool", "perf/"], ["-k", "pool", "perf/"]),
    (["--benchmark-compare", "-v", "perf/"], ["-v", "perf/"]),
    (["--report-dir", "report", "--benchmark-storage=file://s", "-x", "perf/"], ["-x", "perf/"]),
])
def test_remote_args_drop_what_only_this_side_uses(args, expected):
    assert remote_pytest_args(args) == [*expected, "--ray-address", "auto", "--benchmark-quiet"]


def test_results_block_round_trips_and_is_hidden_from_the_log():
    results = {"exit_status": 1, "counts": {"failed": 1}, "benchmark_json": {"benchmarks": []}}
    log = "line one\nline two\n" + encode_results(results) + "tail\n"
    assert parse_results(log) == results
    shown, log_filter = [], ResultsFilter()
    for i in range(0, len(log), 7):  # in pieces that split lines, as a polled log comes
        shown.append(log_filter.feed(log[i:i + 7]))
    shown.append(log_filter.flush())
    assert "".join(shown) == "line one\nline two\ntail\n"


def test_a_log_without_results_or_with_damaged_ones_is_a_clear_error():
    with pytest.raises(ResultsError, match="holds no results block"):
        parse_results("Traceback (most recent call last):\n  ...\n")
    with pytest.raises(ResultsError, match="damaged"):
        parse_results(f"{RESULTS_BEGIN}\nnot base64 at all!\n{RESULTS_END}\n")


def test_benchmarks_rebuilt_from_a_saved_run_have_its_stats():
    saved = json.loads(sorted((ROOT / ".benchmarks" / "ci-smoke").rglob("0001_*.json"))[0].read_text())
    rounds = [0.31, 0.12, 0.25, 0.19, 0.22]  # what --benchmark-json (include_data) holds
    with_data = {**saved, "benchmarks": [{**b, "stats": {**b["stats"], "data": rounds, "iterations": 1}}
                                         for b in saved["benchmarks"]]}
    rebuilt = benchmarks_from_json(with_data)
    assert len(rebuilt) == len(saved["benchmarks"])
    for meta, bench in zip(rebuilt, with_data["benchmarks"]):
        assert meta.fullname == bench["fullname"] and meta.extra_info == bench["extra_info"]
        assert meta.stats.min == 0.12 and meta.stats.max == 0.31 and meta.stats.median == 0.22
        assert meta.stats.rounds == 5 and meta["min"] == 0.12 and not meta.has_error
        assert meta.as_dict(include_data=True)["stats"]["data"] == rounds
    first = saved["benchmarks"][0]
    without = {"benchmarks": [{**first, "stats": {k: v for k, v in first["stats"].items() if k != "data"}}]}
    with pytest.raises(ResultsError, match="without its rounds"):
        benchmarks_from_json(without)
