"""explainers.bench.history: the history per machine (families, steps, the page and its figures)
and one row per saved run of perf/test_backends.py with its targets."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from explainers.bench.figures import plot_history, steps_label
from explainers.bench.history import (
    STEP_FACTOR,
    TARGETS,
    Step,
    history_steps,
    load_history,
    machine_histories,
    main,
    read_runs,
    render_history,
    render_history_page,
)
from explainers.bench.report import build_history

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


def _run(speedups: dict[tuple[str, int], float], *, when: str, commit: str, headline: float | None = None,
         cpu: str = "AMD EPYC") -> dict:
    benches = [_bench("serial", SERIAL_S, backend="serial", workers=1, batch_size=None, speedup=1.0)]
    benches += [_row(label, w, s, vs_processes=0.9 if w == 2 and label != "processes" else None)
                for (label, w), s in speedups.items()]
    if headline is not None:
        benches.append(_bench("mission", headline, backend="pool", workers=2, n_instances=2560, nsamples=4094))
    return {"machine_info": {"cpu": {"brand_raw": cpu}, "ray_address_mode": "local"},
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
    text = out.read_text()
    assert text.startswith("# History per machine") and "## The backends, run by run" in text
    assert "![history of AMD EPYC](history_amd-epyc.png)" in text
    assert (out.parent / "history_amd-epyc.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_errors_say_what_is_wrong(tmp_path, capsys):
    assert main([str(tmp_path)]) == 1
    assert "no saved run of perf/ in" in capsys.readouterr().err
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


# ---------------------------------------------------------------- history per machine


def _timed(run: dict, factor: float, label: str = "pool") -> dict:
    """``run`` with every ``label`` benchmark ``factor`` times slower."""
    for bench in run["benchmarks"]:
        if bench["name"].startswith(f"{label}-"):
            bench["stats"] = {k: v * factor if k in ("min", "max", "mean") else v for k, v in bench["stats"].items()}
    return run


def _series(tmp_path: Path, factors: list[float], **kw) -> list:
    for i, factor in enumerate(factors, start=1):
        _save(tmp_path / "m", f"{i:04d}_c{i}.json",
              _timed(_run(ALL_MET, when=f"2026-12-0{i}T00:00:00", commit=f"c{i}abcdef", **kw), factor))
    return read_runs(tmp_path / "m")


def test_families_are_medians_per_run_and_cpu_model(tmp_path):
    _save(tmp_path, "0001_a.json", _run(ALL_MET, when="2026-12-01T00:00:00", commit="a", headline=30.0))
    _save(tmp_path, "0002_b.json", _run(ALL_MET, when="2026-12-02T00:00:00", commit="b", cpu="Intel Xeon"))
    _save(tmp_path, "0003_c.json", _run(ALL_MET, when="2026-12-03T00:00:00", commit="c"))
    histories = machine_histories(read_runs(tmp_path))
    assert [(h.cpu, [r.run for r in h.runs]) for h in histories] == [("AMD EPYC", ["0001", "0003"]),
                                                                     ("Intel Xeon", ["0002"])]
    amd = histories[0]
    assert amd.suites() == ["backends", "mission"]
    assert amd.families("backends") == ["backends serial", "backends processes", "backends pool", "backends data",
                                        "backends serve-ray", "backends serve-default"]  # as first measured
    (first, _) = amd.series("backends pool")
    pool = [SERIAL_S / ALL_MET[("pool", w)] for w in (1, 2)]
    assert first.median_s == pytest.approx(sum(pool) / 2)  # the median of two benchmarks
    assert first.ms_per_instance == pytest.approx(1000 * first.median_s / 256)
    assert first.work == ((256, 2072),) and first.benchmarks == 2
    assert amd.series("mission pool")[0].median_s == 30.0


def test_a_slowdown_beyond_the_factor_is_a_step_of_that_family_only(tmp_path):
    runs = _series(tmp_path, [1.0, 1.0, 2.0, 2.0, 2.0 / 1.3])
    steps = history_steps(runs)
    assert [(s.family, s.run, s.commit) for s in steps] == [("backends pool", "0003", "c3abcde")]
    assert steps[0].cpu == "AMD EPYC" and steps[0].ratio == pytest.approx(2.0) and steps[0].label == "slower x2.00"
    page = render_history_page(machine_histories(runs), steps, [])
    assert "- run 0003 (`c3abcde`), backends pool: slower x2.00" in page
    assert f"**{1000 * 2 * (SERIAL_S / 1.85 + SERIAL_S / 0.98) / 2 / 256:.3g}** (slower x2.00)" in page
    assert f"x{STEP_FACTOR:g}" in page


def test_a_speedup_is_a_step_too_and_a_change_of_work_or_cpu_is_not(tmp_path):
    assert [s.label for s in history_steps(_series(tmp_path / "a", [1.0, 0.5]))] == ["faster x2.00"]
    _save(tmp_path / "b", "0001_a.json", _run(ALL_MET, when="2026-12-01T00:00:00", commit="a"))
    other_work = _timed(_run(ALL_MET, when="2026-12-02T00:00:00", commit="b"), 3.0)
    for bench in other_work["benchmarks"]:
        bench["extra_info"]["n_instances"] = 40
    _save(tmp_path / "b", "0002_b.json", other_work)
    _save(tmp_path / "b", "0003_c.json", _timed(_run(ALL_MET, when="2026-12-03T00:00:00", commit="c",
                                                     cpu="Intel Xeon"), 3.0))
    assert history_steps(read_runs(tmp_path / "b")) == []


def test_the_history_figure_marks_steps_and_work_changes(tmp_path):
    runs = _series(tmp_path, [1.0, 1.0, 2.0])
    (history,) = machine_histories(runs)
    steps = history_steps(runs)
    fig = plot_history(history, steps)
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title(loc="left") for ax in axes] == history.suites()
    ax = axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0001\nc1abcde", "0002\nc2abcde", "0003\nc3abcde"]
    rings = [ln for ln in ax.get_lines() if ln.get_markeredgecolor() == "red"]
    assert len(rings) == 1 and list(rings[0].get_xdata()) == [2]
    assert any("slower x2.00" in t.get_text() for t in ax.texts)
    assert ax.get_yscale() == "log"
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert list(lines["pool"].get_xdata()) == [0, 1, 2]
    # no step marked where none is given: the chart takes the steps as an argument
    assert not [ln for ax in plot_history(history, []).axes for ln in ax.get_lines()
                if ln.get_markeredgecolor() == "red"]


def test_a_change_of_work_breaks_the_line_and_is_labelled(tmp_path):
    _save(tmp_path, "0001_a.json", _run(ALL_MET, when="2026-12-01T00:00:00", commit="a"))
    changed = _run(ALL_MET, when="2026-12-02T00:00:00", commit="b")
    for bench in changed["benchmarks"]:
        bench["extra_info"]["n_instances"] = 40
    _save(tmp_path, "0002_b.json", changed)
    (history,) = machine_histories(read_runs(tmp_path))
    ax = plot_history(history, []).axes[0]
    pool = [ln for ln in ax.get_lines() if ln.get_color() == ax.get_lines()[0].get_color()]
    assert all(len(ln.get_xdata()) == 1 for ln in pool)  # two segments, not joined
    assert any("work changed" in t.get_text() and "40 instances" in t.get_text() for t in ax.texts)


def test_the_report_writes_the_history_of_every_cpu_model(tmp_path):
    _save(tmp_path / "runs", "0001_a.json", _run(ALL_MET, when="2026-12-01T00:00:00", commit="a"))
    _save(tmp_path / "runs", "0002_b.json", _run(ALL_MET, when="2026-12-02T00:00:00", commit="b", cpu="Intel(R) Xeon(R)"))
    files = build_history([tmp_path / "runs"], tmp_path / "out")
    assert {p.name for p in files.values()} == {"history.md", "history_amd-epyc.png", "history_intel-r-xeon-r.png"}
    text = files["history"].read_text()
    assert "## AMD EPYC: 1 runs" in text and "## Intel(R) Xeon(R): 1 runs" in text
    assert "![history of Intel(R) Xeon(R)](history_intel-r-xeon-r.png)" in text


def test_the_committed_runs_have_the_known_steps():
    root = Path(__file__).resolve().parents[1] / ".benchmarks" / "Linux-CPython-3.11-64bit"
    runs = read_runs(root)
    steps = history_steps(runs)
    assert ("backends data", "0003") in {(s.family, s.run) for s in steps}  # Ray Data's fix
    assert all(s.cpu == "AMD EPYC" for s in steps)
    assert {h.cpu for h in machine_histories(runs)} == {"AMD EPYC", "Intel(R) Xeon(R) Processor"}


def test_many_steps_of_one_run_share_a_summed_up_label():
    """Past MAX_STEP_LINES steps at one run the label counts them per direction (the page lists each)."""
    def step(ratio: float) -> tuple[Step, str]:
        return Step("AMD EPYC", "backends pool", "0002", "c2", ratio, "unused"), "pool"

    assert steps_label([step(0.5), step(2.0)]).splitlines() == ["unused (pool)", "unused (pool)"]
    text = steps_label([step(1 / 3.0), step(0.5), step(1 / 2.5), step(1.6)])
    assert text.splitlines() == ["3 faster: x2.00-x3.00", "1 slower: x1.60-x1.60"]


def test_step_labels_of_neighbouring_runs_do_not_overlap(tmp_path):
    """Every run steps (two families x1.6 slower than the run before): the labels of neighbouring
    runs sit side by side, each a little above the last, and are moved apart."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    for i in range(1, 13):
        run = _run(ALL_MET, when=f"2026-12-{i:02d}T00:00:00", commit=f"c{i:02d}abcde")
        for label in ("pool", "data"):
            _timed(run, 1.6 ** i, label)
        _save(tmp_path / "m", f"{i:04d}_c{i}.json", run)
    runs = read_runs(tmp_path / "m")
    (history,) = machine_histories(runs)
    fig = plot_history(history, history_steps(runs))
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    for ax in fig.axes:
        boxes = [t.get_window_extent(renderer) for t in ax.texts if t.get_color() == "red"]
        assert len(boxes) >= 10
        overlapping = [(i, j) for i in range(len(boxes)) for j in range(i) if boxes[i].overlaps(boxes[j])]
        assert not overlapping, f"{ax.get_title(loc='left')}: labels {overlapping} overlap"
