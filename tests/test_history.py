"""explainers.bench.history: one row per saved run of perf/test_backends.py, and its targets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from explainers.bench.history import TARGETS, load_history, main, render_history

SERIAL_S = 4.0


def _bench(name: str, seconds: float, **info) -> dict:
    suite = "test_mission.py::test_exact_all_instances" if name == "mission" else f"test_backends.py::test_backend[{name}]"
    return {"name": name, "fullname": f"perf/{suite}",
            "stats": {"min": seconds, "max": seconds, "mean": seconds, "stddev": 0.0, "rounds": 1},
            "extra_info": {"serve_mode": None, "batch_size": 10, "n_instances": 256, "nsamples": 2072, **info}}


def _row(label: str, workers: int, speedup: float, vs_processes: float | None = None) -> dict:
    info = {"workers": workers, "speedup": speedup, "efficiency": speedup / workers}
    if label == "processes":
        info["baseline"] = "processes"
    elif label.startswith("serve-"):
        info.update(backend="serve", serve_mode=label.removeprefix("serve-"))
    else:
        info["backend"] = label
    if vs_processes is not None:
        info["vs_processes"] = vs_processes
    return _bench(f"{label}-w{workers}-b10", SERIAL_S / speedup, **info)


def _run(speedups: dict[tuple[str, int], float], *, when: str, commit: str, headline: float | None = None) -> dict:
    benches = [_bench("serial", SERIAL_S, backend="serial", workers=1, batch_size=None, speedup=1.0)]
    benches += [_row(label, w, s, vs_processes=0.9 if w == 2 and label != "processes" else None)
                for (label, w), s in speedups.items()]
    if headline is not None:
        benches.append(_bench("mission", headline, backend="pool", workers=2, n_instances=2560, nsamples=4094))
    return {"machine_info": {"cpu": {"brand_raw": "AMD EPYC"}, "ray_address_mode": "local"},
            "commit_info": {"id": commit}, "datetime": when, "version": "5.3.1", "benchmarks": benches}


ALL_MET = {("processes", 1): 1.0, ("processes", 2): 1.95, ("pool", 1): 0.98, ("pool", 2): 1.85,
           ("data", 1): 0.97, ("data", 2): 1.81, ("serve-ray", 1): 0.95, ("serve-ray", 2): 1.70,
           ("serve-default", 1): 0.99, ("serve-default", 2): 1.80}


def _save(directory: Path, name: str, run: dict) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text(json.dumps(run))


def test_every_target_met(tmp_path):
    _save(tmp_path / "Linux", "0001_abc.json", _run(ALL_MET, when="2026-12-01T10:00:00", commit="abcdef12", headline=33.0))
    (run,) = load_history(tmp_path)
    assert run.run == "0001" and run.commit == "abcdef1" and run.headline_s == 33.0
    assert run.speedup[("data", 2)] == pytest.approx(1.81)
    assert run.serve_time_vs_pool("ray") == pytest.approx(1.85 / 1.70)
    assert [t.check(run) for t in TARGETS] == [True] * len(TARGETS)
    table = render_history([run])
    assert "| 0001 | 2026-12-01 10:00 | `abcdef1` | AMD EPYC | 256 |" in table
    assert "1.81x (90%)" in table and "| 33.0 s | 5 of 5 |" in table


def test_each_target_can_be_missed(tmp_path):
    speedups = dict(ALL_MET)
    speedups.update({("pool", 2): 1.79, ("data", 2): 1.70, ("serve-ray", 2): 1.79 / 1.16,
                     ("serve-default", 2): 1.79 / 1.14, ("serve-ray", 1): 0.90})
    _save(tmp_path, "0002_def.json", _run(speedups, when="2026-12-01T11:00:00", commit="def"))
    (run,) = load_history(tmp_path)
    assert [t.check(run) for t in TARGETS] == [False, False, False, True, False]
    assert "| — | 1 of 5 (missed A, B, C, E) |" in render_history([run])


def test_runs_are_oldest_first_and_other_suites_are_left_out(tmp_path):
    _save(tmp_path / "m", "0002_b.json", _run(ALL_MET, when="2026-12-02T00:00:00", commit="b"))
    _save(tmp_path / "m", "0001_a.json", _run(ALL_MET, when="2026-12-01T00:00:00", commit="a"))
    scaling_only = _run({}, when="2026-12-03T00:00:00", commit="c")
    scaling_only["benchmarks"] = [dict(b, fullname="perf/test_scaling.py::test_scaling[serial]")
                                  for b in scaling_only["benchmarks"]]
    _save(tmp_path / "m", "0003_c.json", scaling_only)
    assert [r.run for r in load_history(tmp_path)] == ["0001", "0002"]


def test_a_run_without_one_worker_rows_does_not_judge_them(tmp_path):
    speedups = {k: v for k, v in ALL_MET.items() if k[1] == 2}
    _save(tmp_path, "0001_a.json", _run(speedups, when="2026-12-01T00:00:00", commit="a"))
    (run,) = load_history(tmp_path)
    assert TARGETS[-1].check(run) is None
    assert "4 of 4" in render_history([run])


def test_cli_writes_the_table(tmp_path, capsys):
    _save(tmp_path / "runs", "0001_a.json", _run(ALL_MET, when="2026-12-01T00:00:00", commit="a"))
    out = tmp_path / "docs" / "history.md"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert "1 runs; wrote" in capsys.readouterr().out
    assert out.read_text().startswith("# The backends, run by run")


def test_cli_errors_say_what_is_wrong(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no saved run of perf/test_backends.py in" in capsys.readouterr().err
    (tmp_path / "0001_bad.json").write_text("{not json")
    assert main([str(tmp_path)]) == 1
    assert "not a JSON file" in capsys.readouterr().err
    assert main([str(tmp_path / "missing")]) == 1
    assert "no such file or directory" in capsys.readouterr().err


def test_the_committed_baselines_are_readable():
    root = Path(__file__).resolve().parents[1] / ".benchmarks"
    history = load_history(root)
    assert len(history) >= 17
    assert all(r.speedup.get(("pool", 2)) for r in history)
