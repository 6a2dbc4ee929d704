"""Tests of the scaling report (explainers/bench/report.py) on a small committed results file.

``tests/data/benchmark_results_small.json`` is real pytest-benchmark output (see
``tests/data/make_benchmark_results_small.py``); every expectation below is computed from
that JSON, not hard-coded.
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import io
import json
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from matplotlib.figure import Figure

from explainers.bench import report
from explainers.bench.figures import axes_settings, mixed_axes, setting_gid
from explainers.bench.report import ReportError, ReportWarning, build_report, load_results, write_report

SMALL = Path(__file__).parent / "data" / "benchmark_results_small.json"
NEWEST = sorted((Path(__file__).resolve().parents[1] / ".benchmarks" / "Linux-CPython-3.11-64bit").glob("0020_*.json"))
PANEL_ORDER = ["pool", "serve-ray", "serve-default", "data"]


def _raw() -> dict:
    return json.loads(SMALL.read_text())


def _setting_part() -> str:
    info = _raw()["benchmarks"][0]["extra_info"]
    return f"{info['n_instances']}x{info['nsamples']}"


TIME = f"time_vs_workers_{_setting_part()}"
SPEEDUP = f"speedup_{_setting_part()}"
VS_REFERENCE = f"speedup_vs_reference_{_setting_part()}"


def _panel(info: dict) -> str:
    return f"serve-{info['serve_mode']}" if info["backend"] == "serve" else info["backend"]


def _benches(raw: dict, panel: str | None = None) -> list[dict]:
    return [b for b in raw["benchmarks"] if panel is None or _panel(b["extra_info"]) == panel]


def _write(tmp_path: Path, data: dict, name: str = "results.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return path


def _table_rows(markdown: str) -> list[dict[str, str]]:
    """Rows of the first Markdown table after a '## ' heading, as dicts by column name."""
    lines = markdown.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| backend |"))
    header = [c.strip() for c in lines[start].strip("|").split("|")]
    rows = []
    for ln in lines[start + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(header, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def _num(cell: str) -> float | None:
    return None if cell == "—" else float(cell)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("report")
    return build_report([SMALL], out, reference=True)


# ---------------------------------------------------------------- files and table


def test_files_exist(built):
    names = {p.name for p in built.files.values()}
    assert names == {"summary.md", f"{TIME}.png", f"{SPEEDUP}.png", "reference.png", f"{VS_REFERENCE}.png"}
    for path in built.files.values():
        assert path.parent == built.out_dir and path.stat().st_size > 0
        if path.suffix == ".png":
            assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert built.files["summary"].read_text() == built.markdown


def test_table_numbers_match_json(built):
    raw = _raw()
    rows = _table_rows(built.files["summary"].read_text())
    assert len(rows) == len(raw["benchmarks"])
    by_key = {(r["backend"], r["serve mode"], r["workers"], r["batch size"]): r for r in rows}
    for bench in raw["benchmarks"]:
        info, stats = bench["extra_info"], bench["stats"]
        key = tuple("—" if v is None else str(v) for v in
                    (info["backend"], info["serve_mode"], info["workers"], info["batch_size"]))
        row = by_key[key]
        assert int(row["instances"]) == info["n_instances"]
        assert int(row["nsamples"]) == info["nsamples"]
        assert int(row["rounds"]) == stats["rounds"]
        for col, value in [("mean s", stats["mean"]), ("stddev s", stats["stddev"]),
                           ("min s", stats["min"]), ("max s", stats["max"]),
                           ("explanations/s", info["explanations_per_s"])]:
            assert _num(row[col]) == pytest.approx(value, rel=1e-3), (key, col)
        for col, value in [("speedup", info["speedup"]), ("efficiency", info["efficiency"])]:
            assert _num(row[col]) == pytest.approx(value, abs=6e-4), (key, col)
        assert _num(row["nodes used"]) == info["nodes_used"]


def test_table_sorted_like_the_study(built):
    rows = _table_rows(built.markdown)
    order = ["serial"] + PANEL_ORDER
    keys = [(order.index(r["backend"] if r["serve mode"] == "—" else f"serve-{r['serve mode']}"),
             _num(r["batch size"]) or 0, _num(r["workers"]) or 0) for r in rows]
    assert keys == sorted(keys)
    assert rows[0]["backend"] == "serial"


def test_summary_names_the_run_and_links_figures(built):
    text = built.markdown
    raw = _raw()
    assert raw["datetime"] in text and raw["machine_info"]["ray_version"] in text
    for name in (TIME, SPEEDUP, "reference"):
        assert f"]({name}.png)" in text
    assert "## Reference study (published)" in text


# ---------------------------------------------------------------- figures


def _visible_axes(fig):
    return [ax for ax in fig.axes if ax.get_visible() and ax.axison]


def test_time_figure_panels_and_lines(built):
    raw = _raw()
    fig = built.figures[TIME]
    axes = _visible_axes(fig)
    panels = [p for p in PANEL_ORDER if _benches(raw, p)]
    assert [ax.get_title() for ax in axes] == [report.PANEL_TITLES[p] for p in panels]
    n = raw["benchmarks"][0]["extra_info"]["n_instances"]
    assert f"{n} instances" in fig.get_suptitle()
    serial = _benches(raw, "serial")[0]["stats"]["mean"]
    for ax, panel in zip(axes, panels):
        assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
        assert "(s)" in ax.get_ylabel() and "workers" in ax.get_xlabel()
        batches = sorted({b["extra_info"]["batch_size"] for b in _benches(raw, panel)})
        containers = [c for c in ax.containers if c.get_label().startswith("batch size")]
        assert [c.get_label() for c in containers] == [f"batch size {b}" for b in batches]
        for batch, cont in zip(batches, containers):
            pts = sorted((b for b in _benches(raw, panel) if b["extra_info"]["batch_size"] == batch),
                         key=lambda b: b["extra_info"]["workers"])
            line = cont.lines[0]
            assert list(line.get_xdata()) == [b["extra_info"]["workers"] for b in pts]
            assert list(line.get_ydata()) == pytest.approx([b["stats"]["mean"] for b in pts])
            assert cont.has_yerr
            low, high = cont.lines[1]  # error bar caps: fastest and slowest round
            assert list(low.get_ydata()) == pytest.approx([b["stats"]["min"] for b in pts])
            assert list(high.get_ydata()) == pytest.approx([b["stats"]["max"] for b in pts])
        baseline = [ln for ln in ax.get_lines() if ln.get_label().startswith("serial baseline")]
        assert len(baseline) == 1 and baseline[0].get_linestyle() == "--"
        assert list(baseline[0].get_ydata()) == pytest.approx([serial, serial])
        ticks = [t for t in ax.get_xticks()]
        assert ticks == sorted({b["extra_info"]["workers"] for b in raw["benchmarks"]
                                if b["extra_info"]["backend"] != "serial"})
        assert ax.get_ylim()[1] >= max(b["stats"]["max"] for b in raw["benchmarks"])
    legend = fig.legends[0]
    assert "fastest to slowest round" in legend.get_title().get_text()
    texts = {t.get_text() for t in legend.get_texts()}
    assert "batch size 1" in texts and f"serial baseline, no Ray: {serial:.3g} s" in texts


def test_speedup_figure_has_ideal_lines(built):
    raw = _raw()
    fig = built.figures[SPEEDUP]
    axes = _visible_axes(fig)
    panels = [p for p in PANEL_ORDER if _benches(raw, p)]
    assert len(axes) == 2 * len(panels)
    top, bottom = axes[: len(panels)], axes[len(panels):]
    assert [ax.get_title() for ax in top] == [report.PANEL_TITLES[p] for p in panels]
    for ax_s, ax_e, panel in zip(top, bottom, panels):
        ideal_s = [ln for ln in ax_s.get_lines() if ln.get_label() == "ideal"]
        ideal_e = [ln for ln in ax_e.get_lines() if ln.get_label() == "ideal"]
        assert len(ideal_s) == 1 and len(ideal_e) == 1
        assert list(ideal_s[0].get_xdata()) == list(ideal_s[0].get_ydata())
        assert set(ideal_e[0].get_ydata()) == {1.0}
        assert "speedup" in ax_s.get_ylabel() and "efficiency" in ax_e.get_ylabel()
        for ax, key in ((ax_s, "speedup"), (ax_e, "efficiency")):
            lines = {ln.get_label(): ln for ln in ax.get_lines() if ln.get_label().startswith("batch")}
            batches = sorted({b["extra_info"]["batch_size"] for b in _benches(raw, panel)})
            assert sorted(lines) == sorted(f"batch size {b}" for b in batches)
            for batch in batches:
                pts = sorted((b for b in _benches(raw, panel) if b["extra_info"]["batch_size"] == batch),
                             key=lambda b: b["extra_info"]["workers"])
                assert list(lines[f"batch size {batch}"].get_ydata()) == pytest.approx(
                    [b["extra_info"][key] for b in pts])


def _packaged_reference_speedups(setting: str) -> dict[int, float]:
    text = (Path(report.__file__).parents[1] / "data" / "reference_results.csv").read_text()
    rows = list(csv.DictReader(io.StringIO("\n".join(
        ln for ln in text.splitlines() if not ln.startswith("#")))))
    serial = float(next(r for r in rows if r["setting"] == "serial")["batch_1"])
    out = {}
    for r in rows:
        if r["setting"] == setting:
            times = [float(r[k]) for k in ("batch_1", "batch_5", "batch_10")]
            out[int(r["workers"])] = sum(serial / t for t in times) / 3
    return out


def test_reference_figures(built):
    ref = built.figures["reference"]
    titles = {ax.get_title() for ax in _visible_axes(ref)}
    assert titles == {"pool, 1 node", "serve, 1 node", "pool, 2 nodes (k8s)",
                      "serve ray, 2 nodes (k8s)", "serve default, 2 nodes (k8s)"}
    assert "2560" in ref.get_suptitle()
    cmp_fig = built.figures[VS_REFERENCE]
    pool_ax = next(ax for ax in cmp_fig.axes if ax.get_title() == report.PANEL_TITLES["pool"])
    lines = {ln.get_label(): ln for ln in pool_ax.get_lines()}
    for label, setting in (("study pool, 1 node", "pool"), ("study pool, 2 nodes (k8s)", "k8s_pool")):
        expected = _packaged_reference_speedups(setting)
        assert list(lines[label].get_xdata()) == sorted(expected)
        assert list(lines[label].get_ydata()) == pytest.approx([expected[w] for w in sorted(expected)])
    assert "ideal" in lines and "this run, batch size 1" in lines
    assert "compare the shapes" in cmp_fig.get_suptitle()


def test_no_reference_by_default(tmp_path):
    result = build_report(SMALL, tmp_path)
    assert set(result.files) == {"summary", TIME, SPEEDUP}
    assert not (tmp_path / "reference.png").exists()
    assert "Reference study" not in result.markdown


# ---------------------------------------------------------------- one setting per axis


@pytest.fixture(scope="module")
def newest(tmp_path_factory):
    """The report of the newest saved main-job run (several suites, two settings, the headline)."""
    assert NEWEST, "no saved run 0020"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        return build_report(NEWEST, tmp_path_factory.mktemp("newest"), reference=True)


def test_every_figure_holds_one_setting_per_axis(built, newest):
    for result in (built, newest):
        for name, fig in result.figures.items():
            assert mixed_axes(fig) == [], name
            drawn = [ax for ax in _visible_axes(fig) if ax.get_lines() or ax.patches]
            if name != "reference":  # the study's own figure: published values only
                assert all(len(axes_settings(ax)) == 1 for ax in drawn), name


def test_the_check_fails_for_a_figure_mixing_two_settings():
    records = load_results([SMALL])
    one = records[0].setting
    two = (one[0], one[1] * 40, one[2] * 2)
    fig = Figure()
    ax = fig.subplots()
    ax.plot([1, 2], [3.0, 2.0], gid=setting_gid(one), label="batch size 1")
    ax.axhline(59.0, gid=setting_gid(two), label="the headline")
    problems = mixed_axes(fig)
    assert len(problems) == 1 and "2 settings" in problems[0] and f"{two[1]} instances" in problems[0]
    mixed = [*records, *(dataclasses.replace(r, n_instances=two[1]) for r in records)]
    with pytest.raises(ValueError, match="one setting; got 2"):
        report.plot_time_vs_workers(mixed)


def test_the_newest_run_has_a_figure_per_setting_and_the_headline_its_own(newest):
    recs = newest.records
    grid = [r for r in recs if not r.headline]
    heads = [r for r in recs if r.headline]
    (grid_setting,) = {r.setting for r in grid if r.panel != "serial"}
    (head_setting,) = {r.setting for r in heads}
    assert grid_setting != head_setting
    part = lambda s: f"{s[1]}x{s[2]}"  # noqa: E731
    names = list(newest.figures)
    assert names[0] == f"time_vs_workers_{part(grid_setting)}"  # the study's experiment first
    assert f"headline_{part(head_setting)}" in names and f"speedup_{part(grid_setting)}" in names
    assert f"![time_vs_workers_{part(grid_setting)}.png]" in newest.markdown
    # each figure's y axis is scaled to its own setting, not to the other's
    time_fig = newest.figures[f"time_vs_workers_{part(grid_setting)}"]
    top = max(r.max for r in recs if r.setting == grid_setting)
    for ax in _visible_axes(time_fig):
        assert top <= ax.get_ylim()[1] <= 1.2 * top
    head_fig = newest.figures[f"headline_{part(head_setting)}"]
    (ax,) = _visible_axes(head_fig)
    assert sorted(p.get_height() for p in ax.patches) == pytest.approx(sorted(r.mean for r in heads))
    serial = [ln for ln in ax.get_lines() if ln.get_label().startswith("serial baseline")]
    engine = next(r for r in recs if r.setting == head_setting and r.panel == "serial")
    assert engine.suite == "engine" and engine.n_instances == head_setting[1] and engine.nsamples == head_setting[2]
    assert len(serial) == 1 and list(serial[0].get_ydata()) == pytest.approx([engine.mean] * 2)
    assert max(r.max for r in heads) <= ax.get_ylim()[1] <= 1.2 * max(r.max for r in heads + [engine])
    # the serial baseline of each setting, in every panel of its time figure
    for ax in _visible_axes(time_fig):
        assert len([ln for ln in ax.get_lines() if ln.get_label().startswith("serial baseline")]) == 1


def test_figures_of_an_earlier_report_are_removed(tmp_path):
    (tmp_path / "time_vs_workers.png").write_bytes(b"old")
    (tmp_path / "history_amd-epyc.png").write_bytes(b"not the report's")
    result = build_report(SMALL, tmp_path)
    assert result.removed == [tmp_path / "time_vs_workers.png"]
    assert not (tmp_path / "time_vs_workers.png").exists() and (tmp_path / "history_amd-epyc.png").exists()


# ---------------------------------------------------------------- loading rules


def test_load_results_records_match_json():
    raw = _raw()
    records = load_results([SMALL])
    assert len(records) == len(raw["benchmarks"])
    by_name = {r.name: r for r in records}
    for bench in raw["benchmarks"]:
        rec = by_name[bench["name"]]
        assert rec.mean == bench["stats"]["mean"] and rec.rounds == bench["stats"]["rounds"]
        assert rec.data == tuple(bench["stats"]["data"])
        assert rec.workers == bench["extra_info"]["workers"]
        assert rec.cluster.nodes == raw["machine_info"]["ray_nodes"]


def test_write_report_takes_the_in_memory_session_json(tmp_path):
    result = write_report(_raw(), tmp_path / "out")
    assert result.files["summary"].exists() and result.files[TIME].exists()
    assert {r.source for r in result.records} == {"<session>"}


def test_missing_speedups_are_derived_from_the_serial_baseline(tmp_path):
    raw = _raw()
    for bench in raw["benchmarks"]:
        for key in ("speedup", "efficiency", "explanations_per_s"):
            del bench["extra_info"][key]
    serial = _benches(raw, "serial")[0]["stats"]["mean"]
    for rec in load_results(_write(tmp_path, raw)):
        assert rec.speedup == pytest.approx(serial / rec.mean)
        assert rec.explanations_per_s == pytest.approx(rec.n_instances / rec.mean)
        if rec.workers:
            assert rec.efficiency == pytest.approx(rec.speedup / rec.workers)


def test_directory_uses_newest_run_per_machine_unless_all(tmp_path):
    machine = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    old, new = _raw(), _raw()
    old["datetime"], new["datetime"] = "2025-01-01T00:00:00+00:00", "2025-02-01T00:00:00+00:00"
    for bench in old["benchmarks"]:
        bench["stats"]["mean"] *= 2
    dropped = new["benchmarks"].pop()  # a configuration only the old run measured
    _write(machine, old, "0001_old.json")
    _write(machine, new, "0002_new.json")
    newest = load_results([tmp_path / ".benchmarks"])
    assert len(newest) == len(new["benchmarks"])
    assert {r.source for r in newest} == {str(machine / "0002_new.json")}
    assert {r.machine_id for r in newest} == {"Linux-CPython-3.11-64bit"}
    with pytest.warns(ReportWarning, match="newer run is used"):
        merged = load_results([tmp_path / ".benchmarks"], all_runs=True)
    assert len(merged) == len(new["benchmarks"]) + 1
    by_name = {r.name: r for r in merged}
    assert by_name[dropped["name"]].source.endswith("0001_old.json")
    kept = new["benchmarks"][0]
    assert by_name[kept["name"]].mean == kept["stats"]["mean"]


def test_foreign_benchmarks_are_skipped_with_a_warning(tmp_path):
    raw = _raw()
    foreign = copy.deepcopy(raw["benchmarks"][0])
    foreign["name"] = "test_someone_elses_code"
    foreign["fullname"] = "tests/test_other.py::test_someone_elses_code"
    foreign["extra_info"] = {"backend": "gpu"}
    raw["benchmarks"].append(foreign)
    with pytest.warns(ReportWarning, match="test_someone_elses_code.*skipped, it is not a benchmark of perf/"):
        records = load_results(_write(tmp_path, raw))
    assert len(records) == len(raw["benchmarks"]) - 1


def test_the_plain_process_ceiling_rows_are_left_out_quietly(tmp_path):
    raw = _raw()
    ceiling = copy.deepcopy(raw["benchmarks"][0])
    ceiling["name"] = "test_backend[processes-w2-b10]"
    ceiling["fullname"] = "perf/test_backends.py::test_backend[processes-w2-b10]"
    ceiling["extra_info"] = {"baseline": "processes", "workers": 2, "batch_size": 10, "n_instances": 64,
                             "nsamples": 2072, "speedup": 1.8}
    raw["benchmarks"].append(ceiling)
    with warnings.catch_warnings():
        warnings.simplefilter("error", ReportWarning)
        records = load_results(_write(tmp_path, raw))
    assert len(records) == len(raw["benchmarks"]) - 1
    assert all("processes" not in r.name for r in records)


def test_share_of_the_plain_processes_is_a_column_where_it_was_measured(tmp_path, built):
    assert "share of plain processes" not in built.markdown  # perf/test_scaling.py records none
    raw = _raw()
    bench = next(b for b in _benches(raw, "pool") if b["extra_info"]["workers"] == 2)
    bench["extra_info"].update(processes_speedup=1.875, vs_processes=bench["extra_info"]["speedup"] / 1.875)
    markdown = build_report([_write(tmp_path, raw)], tmp_path / "out").markdown
    rows = _table_rows(markdown)
    measured = [r for r in rows if r["share of plain processes"] != "—"]
    assert len(measured) == 1 and measured[0]["backend"] == "pool" and measured[0]["workers"] == "2"
    assert measured[0]["plain processes speedup"] == "1.875"
    share = float(measured[0]["share of plain processes"].rstrip("%")) / 100
    assert share == pytest.approx(_num(measured[0]["speedup"]) / 1.875, abs=0.006)
    assert all(r["plain processes speedup"] == "—" for r in rows if r is not measured[0])


def test_overhead_cpu_share_is_a_column_where_it_was_accounted(tmp_path, built):
    assert "driver + Ray CPU share" not in built.markdown
    raw = _raw()
    bench = next(b for b in _benches(raw, "data") if b["extra_info"]["workers"] == 2)
    bench["extra_info"].update(machine_cpu_seconds={"workers": 3.8, "driver": 0.14, "ray": 0.16, "other": 0.02},
                               overhead_cpu_share=0.3 / 4.1)
    markdown = build_report([_write(tmp_path, raw)], tmp_path / "out").markdown
    rows = _table_rows(markdown)
    accounted = [r for r in rows if r["driver + Ray CPU share"] != "—"]
    assert [(r["backend"], r["workers"], r["driver + Ray CPU share"]) for r in accounted] == [("data", "2", "7.3%")]


def _break(mutate):
    raw = _raw()
    bench = raw["benchmarks"][3]
    mutate(raw, bench)
    return raw, bench["name"]


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda raw, b: b["extra_info"].pop("workers"), r"extra_info field 'workers' is missing"),
        (lambda raw, b: b["extra_info"].pop("n_instances"), r"'n_instances' is missing"),
        (lambda raw, b: b["extra_info"].update(backend="gpu"),
         r"'backend' is 'gpu'; allowed: 'serial', 'pool', 'serve', 'data'"),
        (lambda raw, b: b["extra_info"].update(backend="serve", serve_mode="turbo"),
         r"'serve_mode' is 'turbo' for backend 'serve'; allowed: 'ray', 'default'"),
        (lambda raw, b: b["extra_info"].update(workers="four"), r"'workers' is 'four'; expected a positive"),
        (lambda raw, b: b["extra_info"].update(speedup="fast"), r"'speedup' is 'fast'; expected a number"),
        (lambda raw, b: b.pop("stats"), r"'stats' is missing"),
    ],
    ids=["missing-workers", "missing-n_instances", "unknown-backend", "unknown-serve-mode",
         "bad-workers", "bad-speedup", "no-stats"],
)
def test_contract_violations_name_file_benchmark_and_field(tmp_path, mutate, expected):
    raw, name = _break(mutate)
    path = _write(tmp_path, raw)
    with pytest.raises(ReportError, match=expected) as info:
        load_results(path)
    assert str(path) in str(info.value) and repr(name) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_not_json_and_not_benchmark_files(tmp_path):
    bad = tmp_path / "broken.json"
    bad.write_text('{"benchmarks": [')
    with pytest.raises(ReportError, match=r"broken\.json: not a JSON file"):
        load_results(bad)
    other = _write(tmp_path, {"hello": 1}, "other.json")
    with pytest.raises(ReportError, match=r"other\.json: no 'benchmarks' list"):
        load_results(other)
    with pytest.raises(ReportError, match="no such file or directory"):
        load_results(tmp_path / "nope.json")
    empty = _write(tmp_path, {**_raw(), "benchmarks": []}, "empty.json")
    with pytest.raises(ReportError, match="no distributed-kernelshap benchmark results"):
        build_report(empty, tmp_path / "out")


def test_two_clusters_get_separate_lines_and_tables(tmp_path):
    one, two = _raw(), _raw()
    two["machine_info"].update(ray_nodes=2, ray_cpus=4)
    two["datetime"] = "2099-01-01T00:00:00+00:00"
    result = build_report([_write(tmp_path, one, "a.json"), _write(tmp_path, two, "b.json")],
                          tmp_path / "out")
    assert len(result.records) == 2 * len(one["benchmarks"])
    assert result.markdown.count("| backend |") == 2
    part = _setting_part()
    times = {name: fig for name, fig in result.figures.items() if name.startswith("time_vs_workers_")}
    assert set(times) == {f"time_vs_workers_local-1-node-2-cpus_{part}", f"time_vs_workers_local-2-nodes-4-cpus_{part}"}
    for name, fig in times.items():
        assert not mixed_axes(fig)
        assert ("2 nodes, 4 CPUs" if "2-nodes" in name else "1 node, 2 CPUs") in fig.get_suptitle()
        ax = _visible_axes(fig)[0]
        assert "batch size 1" in [c.get_label() for c in ax.containers]


def test_without_serial_baseline_there_is_no_speedup_figure(tmp_path):
    raw = _raw()
    raw["benchmarks"] = [b for b in raw["benchmarks"] if b["extra_info"]["backend"] != "serial"]
    for bench in raw["benchmarks"]:
        bench["extra_info"].update(speedup=None, efficiency=None)
    with pytest.warns(ReportWarning, match="no speedups"):
        result = build_report(_write(tmp_path, raw), tmp_path / "out")
    assert set(result.files) == {"summary", TIME}
    assert not any(ln.get_label().startswith("serial") for ax in result.figures[TIME].axes
                   for ln in ax.get_lines())
    rows = _table_rows(result.markdown)
    assert len(rows) == len(raw["benchmarks"]) and {r["speedup"] for r in rows} == {"—"}


# ---------------------------------------------------------------- command line


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "explainers.bench.report", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_writes_the_report(tmp_path):
    out = tmp_path / "out"
    proc = _cli(str(SMALL), "--out", str(out), "--reference", "--title", "Dev box")
    assert proc.returncode == 0, proc.stderr
    for name in ("summary.md", f"{TIME}.png", f"{SPEEDUP}.png", "reference.png"):
        assert (out / name).stat().st_size > 0
    assert (out / "summary.md").read_text().startswith("# Dev box")
    assert f"wrote {out / 'summary.md'}" in proc.stdout


def test_cli_defaults_to_dot_benchmarks(tmp_path):
    machine = tmp_path / ".benchmarks" / "Linux-CPython-3.11-64bit"
    machine.mkdir(parents=True)
    _write(machine, _raw(), "0001_run.json")
    proc = _cli("--out", "rep", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "rep" / "summary.md").exists()


def test_cli_bad_arguments_exit_2(tmp_path):
    proc = _cli("--bogus")
    assert proc.returncode == 2 and "unrecognized arguments: --bogus" in proc.stderr
    proc = _cli(str(SMALL), "--out")
    assert proc.returncode == 2 and "expected one argument" in proc.stderr


def test_cli_bad_results_exit_1_with_the_reason(tmp_path):
    raw, name = _break(lambda raw, b: b["extra_info"].update(backend="gpu"))
    proc = _cli(str(_write(tmp_path, raw)), "--out", str(tmp_path / "out"))
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: ") and "'gpu'" in proc.stderr and name in proc.stderr
