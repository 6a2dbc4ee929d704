"""The noise-aware comparison (``explainers.bench.compare`` and ``kernelshap-compare``).

The noise is this machine's, measured: the log residuals of repeated rounds of the same work in
the saved main-job runs of the CPU model "AMD EPYC" (their paired serial rounds and plain-process
rounds; :func:`noise_residuals`). The synthetic runs are copies of the committed CI-smoke
baselines re-measured with that noise (:func:`synthetic_run`).
"""
from __future__ import annotations

import collections
import copy
import json
import re
from pathlib import Path

import numpy as np
import pytest

from explainers.bench.compare import (
    IMPROVED,
    REGRESSED,
    ROUNDS,
    SINGLE_VALUE,
    SUMMARIES,
    UNCHANGED,
    Sample,
    Thresholds,
    compare_runs,
    gate_against,
    judge,
    noise_residuals,
    ratio_interval,
    samples_of,
    simulate,
    synthetic_run,
)
from explainers.bench.compare_cli import EXIT_ERROR, EXIT_OK, EXIT_REGRESSION, main
from explainers.bench.saved_runs import collect_runs, parse_run, read_json

ROOT = Path(__file__).resolve().parents[1]
MAIN_RUNS = ROOT / ".benchmarks" / "Linux-CPython-3.11-64bit"
CI_SMOKE = ROOT / ".benchmarks" / "ci-smoke"
THIS_CPU = "AMD EPYC"
SMOKE_AMD = CI_SMOKE / "AMD-EPYC" / "Linux-CPython-3.11-64bit" / "0001_baseline.json"
SMOKE_INTEL = CI_SMOKE / "Intel-R-Xeon-R-Processor" / "Linux-CPython-3.11-64bit" / "0001_baseline.json"
POOL_W2 = "perf/test_scaling.py::test_scaling[pool-w2-b10]"
TRIALS = 200
FAST = Thresholds(resamples=0)


@pytest.fixture(scope="module")
def amd_runs():
    return [run for run in collect_runs(MAIN_RUNS) if run.cpu == THIS_CPU]


@pytest.fixture(scope="module")
def noise(amd_runs):
    return noise_residuals(amd_runs)


def _run(path: Path) -> dict:
    return read_json(path)


# --------------------------------------------------------------------------- the noise and the power


def test_the_noise_is_measured_from_saved_rounds(noise):
    assert noise.size > 1000
    assert 0.04 < float(np.std(noise)) < 0.15, "round noise (log sd) out of the range docs/compare.md describes"


def test_a_remeasurement_raises_no_alarm(noise):
    power = simulate(_run(SMOKE_AMD), noise, rounds=5, target=POOL_W2, slowdown=1.0, trials=TRIALS)
    assert power.clean >= 0.95, power


def test_a_remeasurement_with_paired_speedups_raises_no_alarm(noise):
    """The current smoke's shape: pool records with paired serial rounds (time and speedup judged)."""
    template = _run(SMOKE_INTEL)
    assert any(b["extra_info"].get("serial_rounds") for b in template["benchmarks"])
    power = simulate(template, noise, rounds=5, target=POOL_W2, slowdown=1.0, trials=TRIALS, seed=1)
    assert power.clean >= 0.95, power


def _slowdowns_it_can_see() -> list[tuple[str, float]]:
    """docs/compare.md, 5 rounds: 60% for a benchmark with paired serial rounds (its speedup is
    judged), 80% for one judged on time alone (the serial baseline)."""
    return [(b["fullname"], 1.6 if b["extra_info"].get("serial_rounds") and "[serial]" not in b["fullname"] else 1.8)
            for b in json.loads(SMOKE_AMD.read_text())["benchmarks"]]


@pytest.mark.parametrize("target, slowdown", _slowdowns_it_can_see())
def test_a_slowdown_it_can_see_is_flagged_as_that_benchmark_and_no_other(noise, target, slowdown):
    power = simulate(_run(SMOKE_AMD), noise, rounds=5, target=target, slowdown=slowdown, trials=TRIALS, seed=2)
    assert power.only_target >= 0.95, power


def test_with_three_rounds_it_sees_an_80_percent_slowdown(noise):
    power = simulate(_run(SMOKE_AMD), noise, rounds=3, target=POOL_W2, slowdown=1.8, trials=TRIALS, seed=3)
    assert power.only_target >= 0.95 and power.clean >= 0.95, power


@pytest.mark.xfail(strict=True, reason="issue 24's target is not met on this machine's measured noise "
                   "(log sd ~0.1) and drift (x1.40 between two runs): with 5 rounds a 20% slowdown is flagged in ~49% "
                   "(docs/compare.md); strict, so this fails once it is met")
def test_issue_target_twenty_percent_at_five_rounds(noise):
    power = simulate(_run(SMOKE_AMD), noise, rounds=5, target=POOL_W2, slowdown=1.2, trials=TRIALS, seed=4)
    assert power.only_target >= 0.95, power


def test_the_power_check_can_fail(noise):
    """Without a minimum effect and at a loose level the same re-measurements do raise alarms."""
    loose = Thresholds(alpha=0.2, min_effect=0.0, speedup_min_effect=0.0, resamples=0)
    power = simulate(_run(SMOKE_AMD), noise, rounds=5, target=POOL_W2, slowdown=1.0, trials=TRIALS, thresholds=loose)
    assert power.clean < 0.95, power


def test_real_remeasurements_of_the_same_code_raise_no_alarm(amd_runs):
    """The serial rounds of one run are the same serial work on the same commit, re-measured before
    each benchmark minutes apart (drift included): consecutive ones compared raise <= 5% alarms."""
    alarms = pairs = 0
    for run in amd_runs:
        same_work = collections.defaultdict(list)
        for bench in run.benchmarks:
            rounds, r = bench.record.serial_rounds, bench.record
            if rounds and len(rounds) >= 3:
                same_work[(r.suite, r.workload, r.n_instances, r.nsamples)].append(rounds)
        for series in same_work.values():
            for before, after in zip(series, series[1:]):
                verdict = judge("serial", "time", Sample.of_rounds(before), Sample.of_rounds(after),
                                lower_is_better=True, thresholds=FAST).verdict
                pairs += 1
                alarms += verdict == REGRESSED
    assert pairs > 300
    assert alarms / pairs <= 0.05, (alarms, pairs)


def _smoke_runs_by_machine_and_commit() -> list[list[Path]]:
    groups = collections.defaultdict(list)
    for path in sorted(CI_SMOKE.rglob("*.json")):
        data = json.loads(path.read_text())
        groups[(path.parent, data["commit_info"].get("id"))].append(path)
    return [paths for paths in groups.values() if len(paths) >= 2]


def test_two_real_ci_smoke_runs_of_one_commit_raise_no_alarm():
    groups = _smoke_runs_by_machine_and_commit()
    if not groups:
        pytest.skip("no machine in .benchmarks/ci-smoke has two runs of one commit yet (record a second one)")
    for paths in groups:
        for base, new in zip(paths, paths[1:]):
            assert gate_against(_run(base), _run(new)) == [], (base, new)


# --------------------------------------------------------------------------- the statistics


def test_the_bootstrap_interval_is_deterministic_and_holds_the_ratio():
    base, new = [1.0, 1.1, 0.9, 1.05, 0.95], [1.3, 1.2, 1.25, 1.4, 1.22]
    low, high = ratio_interval(base, new)
    assert (low, high) == ratio_interval(base, new)
    assert low < np.median(new) / np.median(base) < high


def test_a_clear_slowdown_regresses_and_a_small_one_does_not():
    base = Sample.of_rounds([1.0, 1.01, 0.99, 1.02, 0.98])
    slow = Sample.of_rounds([1.6, 1.61, 1.59, 1.62, 1.58])
    j = judge("b", "time", base, slow, lower_is_better=True)
    assert (j.verdict, j.basis) == (REGRESSED, ROUNDS) and j.ratio == pytest.approx(1.6)
    assert j.p_value < 0.01 and j.low > 1.5
    small = Sample.of_rounds([1.3, 1.31, 1.29, 1.32, 1.28])
    assert judge("b", "time", base, small, lower_is_better=True).verdict == UNCHANGED, "30% < the minimum effect"
    assert judge("b", "speedup", base, slow, lower_is_better=False).verdict == IMPROVED


def test_overlapping_rounds_are_unchanged_whatever_the_ratio():
    base = Sample.of_rounds([1.0, 2.0, 1.2])
    new = Sample.of_rounds([1.9, 1.1, 2.1])
    assert judge("b", "time", base, new, lower_is_better=True).verdict == UNCHANGED


def test_a_run_without_raw_rounds_is_compared_on_summaries():
    old = parse_run(_run(SMOKE_INTEL), "old")
    samples = samples_of(old.benchmarks[0])
    assert samples["time"][0].basis == SUMMARIES
    comparison = compare_runs(old, old)
    assert SUMMARIES in comparison.bases and ROUNDS not in comparison.bases and not comparison.regressions
    assert "compared on their summaries" in comparison.report()


def test_paired_speedups_and_cpu_by_role_are_judged(noise):
    run = parse_run(synthetic_run(_run(SMOKE_INTEL), noise, 5, np.random.default_rng(0)), "new")
    pool = next(b for b in run.benchmarks if b.fullname == POOL_W2)
    samples = samples_of(pool)
    assert samples["speedup"][0].basis == ROUNDS and samples["speedup"][1] is False
    assert {m for m in samples if m.startswith("cpu:")} == {"cpu:workers", "cpu:driver", "cpu:ray"}
    assert samples["cpu:workers"][0].basis == SINGLE_VALUE


def test_cpu_needs_both_the_relative_and_the_absolute_change():
    one, more = Sample(basis=SINGLE_VALUE, center=0.02, n=1), Sample(basis=SINGLE_VALUE, center=0.04, n=1)
    assert judge("b", "cpu:driver", one, more, lower_is_better=True).verdict == UNCHANGED, "below 0.05 CPU-s"
    big, bigger = Sample(basis=SINGLE_VALUE, center=1.0, n=1), Sample(basis=SINGLE_VALUE, center=1.6, n=1)
    assert judge("b", "cpu:workers", big, bigger, lower_is_better=True).verdict == REGRESSED
    some = Sample(basis=SINGLE_VALUE, center=1.3, n=1)
    assert judge("b", "cpu:workers", big, some, lower_is_better=True).verdict == UNCHANGED, "30% < 50%"


def test_bad_thresholds_are_errors():
    with pytest.raises(ValueError, match="alpha"):
        Thresholds(alpha=1.5)
    with pytest.raises(ValueError, match="min_effect"):
        Thresholds(min_effect=-0.1)


# --------------------------------------------------------------------------- the gate


def _slowed(run: dict, fullname: str, factor: float) -> dict:
    out = copy.deepcopy(run)
    for bench in out["benchmarks"]:
        if bench["fullname"] == fullname:
            for key in ("min", "max", "mean", "median", "stddev"):
                bench["stats"][key] *= factor
            if bench["stats"].get("data"):
                bench["stats"]["data"] = [x * factor for x in bench["stats"]["data"]]
    return out


def test_the_gate_names_the_regressed_benchmark(noise):
    base = synthetic_run(_run(SMOKE_AMD), noise, 5, np.random.default_rng(5))
    assert gate_against(base, base) == []
    failures = gate_against(base, _slowed(base, POOL_W2, 2.0))
    assert failures and all(f.startswith(POOL_W2 + ": ") for f in failures), failures
    assert any(f.startswith(POOL_W2 + ": time regressed x2.000") for f in failures), failures


# --------------------------------------------------------------------------- the CLI


def _write(tmp_path: Path, name: str, data: dict, machine: str = "Linux-CPython-3.11-64bit") -> Path:
    path = tmp_path / machine / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@pytest.fixture
def storage(tmp_path, noise):
    rng = np.random.default_rng(6)
    base = synthetic_run(_run(SMOKE_AMD), noise, 5, rng)
    base["datetime"] = "2026-12-01T00:00:00+00:00"
    same = synthetic_run(_run(SMOKE_AMD), noise, 5, rng)
    same["datetime"] = "2026-12-02T00:00:00+00:00"
    slow = _slowed(same, POOL_W2, 2.0)
    slow["datetime"] = "2026-12-03T00:00:00+00:00"
    _write(tmp_path, "0001_base.json", base)
    _write(tmp_path, "0002_same.json", same)
    _write(tmp_path, "0003_slow.json", slow)
    intel = _run(SMOKE_INTEL)
    intel["datetime"] = "2026-12-09T00:00:00+00:00"
    _write(tmp_path, "0001_intel.json", intel, machine="other")
    return tmp_path


def test_cli_exit_codes_and_id_lookup(storage, capsys):
    machine = ["--machine", THIS_CPU, "--storage", str(storage)]
    assert main([*machine, "0001", "0002"]) == EXIT_OK
    out = capsys.readouterr().out
    assert "0 regressions" in out and "raw rounds compared" in out
    assert main([*machine, "1", "3"]) == EXIT_REGRESSION
    out = capsys.readouterr().out
    regressed = [line for line in out.splitlines() if line.startswith("REGRESSED")]
    assert regressed and all(POOL_W2 in line for line in regressed), out
    assert re.search(r"REGRESSED +" + re.escape(POOL_W2) + r" +(time|speedup) .*: x(2|0\.5)\d*", out), out


def test_cli_an_ambiguous_or_missing_id_is_an_error(storage, capsys):
    assert main(["--storage", str(storage), "0001", "0002"]) == EXIT_ERROR
    assert "ambiguous" in capsys.readouterr().err
    assert main(["--storage", str(storage), "0002", "0042"]) == EXIT_ERROR
    assert "run 0042: no 0042_*.json" in capsys.readouterr().err


def test_cli_machine_picks_the_newest_run_of_that_cpu_model(storage, capsys):
    new = storage / "Linux-CPython-3.11-64bit" / "0002_same.json"
    assert main(["--machine", THIS_CPU, "--storage", str(storage), str(new)]) == EXIT_OK
    out = capsys.readouterr().out
    assert "IMPROVED" in out, "BASE is the newest run, the slowed one"
    assert out.splitlines()[0].startswith(f"BASE {storage / 'Linux-CPython-3.11-64bit' / '0003_slow.json'}")
    assert main(["--machine", "No Such CPU", "--storage", str(storage), str(new)]) == EXIT_ERROR
    assert "No Such CPU" in capsys.readouterr().err


def test_cli_an_old_run_says_it_compared_summaries(capsys):
    assert main([str(SMOKE_INTEL), str(SMOKE_INTEL)]) == EXIT_OK
    assert "compared on their summaries" in capsys.readouterr().out


def test_cli_real_saved_runs_by_id(capsys):
    assert main(["--storage", str(MAIN_RUNS), "0018", "0019"]) in (EXIT_OK, EXIT_REGRESSION)
    out = capsys.readouterr().out
    assert "0018_" in out.splitlines()[0] and "summaries" in out


@pytest.mark.parametrize("content, message", [
    ("{not json", "not a JSON file"),
    ('{"machine_info": {}}', "no 'benchmarks' list"),
    ('[1, 2]', "top level is list"),
])
def test_cli_a_bad_file_is_a_clear_error(tmp_path, capsys, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    assert main([str(SMOKE_AMD), str(bad)]) == EXIT_ERROR
    err = capsys.readouterr().err
    assert err.startswith("kernelshap-compare: error: ") and message in err and str(bad) in err


def test_cli_a_missing_file_is_an_error(tmp_path, capsys):
    assert main([str(SMOKE_AMD), str(tmp_path / "nope.json")]) == EXIT_ERROR
    assert "no such file" in capsys.readouterr().err
