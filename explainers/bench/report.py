"""Scaling report (figures and a Markdown table) from saved pytest-benchmark JSON, and the
history per machine.

Reads the JSON written by ``pytest perf --benchmark-autosave`` (``.benchmarks/<machine
id>/NNNN_*.json``) or ``--benchmark-json FILE`` (:mod:`explainers.bench.saved_runs`), parses
the ``extra_info`` of every benchmark with the record schema (:mod:`explainers.bench.records`)
and writes, with matplotlib (:mod:`explainers.bench.figures`, Agg canvas, no display needed),
one set of figures per setting (Ray cluster, instances, nsamples; ``<setting>`` is e.g.
``40x2072``, the cluster's name in front when the report holds several clusters):

* ``time_vs_workers_<setting>.png``: the study's experiment, mean time to explain against
  workers, one line per batch size, one panel per backend (``pool``, ``serve-ray``,
  ``serve-default``, ``data``), error bars spanning the fastest to the slowest round, the
  setting's serial baseline as a dashed line;
* ``headline_<setting>.png``: the headline (``perf/test_mission.py``, exact values of every
  instance), one group of bars per backend, the default engine beside coalition reuse;
* ``speedup_<setting>.png``: speedup (top row) and parallel efficiency (bottom row) against
  workers, with the ideal lines;
* ``summary.md`` (:mod:`explainers.bench.tables`): one table per setting, one row per
  configuration, with the figures linked (the study's experiment first);
* with ``reference=True`` also ``reference.png`` (the reference study's published times,
  2560 instances, from the packaged ``explainers/data/reference_results.csv``) and
  ``speedup_vs_reference_<setting>.png`` (our speedups beside the study's: compare shapes, not
  times, since the instance counts and machines differ).

Figures of an earlier report in the same folder that this one did not write again are removed.
The history per machine (:func:`build_history`, ``--history DIR``): ``history_<cpu>.png`` per
CPU model (:func:`explainers.bench.figures.plot_history`) and ``history.md``
(:func:`explainers.bench.history.render_history_page`), the steps from
:func:`explainers.bench.history.history_steps`.

Python API: :func:`load_results`, :func:`build_report`, :func:`write_report` (for the
pytest plugin: takes the in-memory ``output_json`` of pytest-benchmark),
:func:`load_reference`, :func:`build_history` and :func:`write_history`. Command line:
``python -m explainers.bench.report --help``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from explainers.bench.figures import (
    PANEL_TITLES,
    plot_headline,
    plot_history,
    plot_reference,
    plot_speedup,
    plot_speedup_vs_reference,
    plot_time_vs_workers,
)
from explainers.bench.grid import SERIAL
from explainers.bench.history import (
    backend_history,
    history_steps,
    machine_histories,
    read_runs,
    render_history_page,
    slug,
)
from explainers.bench.reference import ReferenceRow, load_reference
from explainers.bench.results import (
    DEFAULT_TITLE,
    PANELS,
    ChartRun,
    Record,
    Setting,
    chart_runs,
    load_results,
    merge,
    settings_of,
)
from explainers.bench.saved_runs import (
    DEFAULT_RESULTS,
    Cluster,
    ReportError,
    ReportWarning,
    Results,
    SavedRun,
    parse_run,
    read_json,
)
from explainers.bench.tables import render_markdown

__all__ = [
    "ReportError",
    "ReportWarning",
    "Cluster",
    "Record",
    "ReportResult",
    "ReferenceRow",
    "PANELS",
    "PANEL_TITLES",
    "DEFAULT_TITLE",
    "FIGURE_KINDS",
    "HISTORY_MARKDOWN",
    "figure_name",
    "load_results",
    "load_reference",
    "build_report",
    "write_report",
    "build_history",
    "write_history",
    "main",
]

#: the report's figures per setting, in the order the summary shows them (the study's experiment first)
FIGURE_KINDS = ("time_vs_workers", "headline", "speedup", "speedup_vs_reference")
#: the history page's file name
HISTORY_MARKDOWN = "history.md"
DPI = 110


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    ``files`` maps each figure's name (``time_vs_workers_40x2072``, ``headline_40x4094``,
    ``speedup_40x2072``, ``reference``, ...; see :func:`figure_name`) and ``summary`` to paths;
    ``figures`` maps the figure names to their :class:`matplotlib.figure.Figure` (not attached to
    pyplot: nothing to close); ``removed``: figures of an earlier report in the folder, deleted.
    """

    out_dir: Path
    files: dict[str, Path]
    figures: dict[str, Figure]
    records: list[Record]
    markdown: str
    removed: list[Path] = field(default_factory=list)


def figure_name(kind: str, setting: Setting, settings: Sequence[Setting]) -> str:
    """The file stem of a setting's figure: ``<kind>_<instances>x<nsamples>``, the cluster's slug
    in front when ``settings`` (all of the report's) span several clusters."""
    cluster, n, nsamples = setting
    clusters = {s[0] for s in settings}
    return f"{kind}_" + (f"{slug(cluster)}_" if len(clusters) > 1 else "") + f"{n}x{nsamples}"


def _figures(records: Sequence[Record], ref: Sequence[ReferenceRow] | None, title: str) -> dict[str, Figure | None]:
    """Every figure of the report, named (:func:`figure_name`), in :data:`FIGURE_KINDS` order."""
    settings = settings_of(records)
    by_kind: dict[str, dict[str, Figure | None]] = {kind: {} for kind in FIGURE_KINDS}
    for setting in settings:
        recs = [r for r in records if r.setting == setting]
        grid = [r for r in recs if not r.headline and not r.reuse_coalitions]  # the study's engine
        heads = [r for r in recs if r.headline or r.panel == SERIAL]
        drawn: dict[str, Figure | None] = {}
        if any(r.panel != SERIAL for r in grid):
            drawn["time_vs_workers"] = plot_time_vs_workers(grid, title=title)
            drawn["speedup"] = plot_speedup(grid, title=title)
            if ref is not None:
                drawn["speedup_vs_reference"] = plot_speedup_vs_reference(grid, ref, title=title)
        if any(r.headline for r in heads):
            drawn["headline"] = plot_headline(heads, title=title, reference=ref)
        for kind, fig in drawn.items():
            by_kind[kind][figure_name(kind, setting, settings)] = fig
    out = {name: fig for kind in FIGURE_KINDS for name, fig in by_kind[kind].items()}
    if ref is not None:
        out["reference"] = plot_reference(ref)
    return out


def _stale(out: Path, written: Sequence[Path]) -> list[Path]:
    """The figures of an earlier report in ``out`` that this one did not write."""
    keep = set(written)
    found = {p for kind in (*FIGURE_KINDS, "reference") for p in out.glob(f"{kind}*.png")}
    return sorted(p for p in found if p not in keep)


def _build(runs: list[ChartRun], out_dir: str | Path, *, reference: bool, title: str,
           where: str) -> ReportResult:
    records = merge(runs)
    if not records:
        raise ReportError(f"no distributed-kernelshap benchmark results in {where} "
                          "(run e.g. `pytest perf --benchmark-autosave` first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ref = load_reference() if reference else None
    figures = _figures(records, ref, title)
    drawn = [n for n, f in figures.items() if f is not None and n != "reference"]
    if not drawn:
        warnings.warn("only serial results: no figures drawn", ReportWarning, stacklevel=3)
    elif not any(n.startswith("speedup_") for n in drawn) and any(n.startswith("time_vs_workers_") for n in drawn):
        warnings.warn("no speedups (no serial baseline in the runs): no speedup figure drawn",
                      ReportWarning, stacklevel=3)
    figs = {k: f for k, f in figures.items() if f is not None}
    files: dict[str, Path] = {}
    for name, fig in figs.items():
        files[name] = out / f"{name}.png"
        fig.savefig(files[name], dpi=DPI)
    removed = _stale(out, list(files.values()))
    for path in removed:
        path.unlink()
    markdown = render_markdown(records, [cr.run for cr in runs], [p.name for p in files.values()],
                               title=title, reference=ref)
    files["summary"] = out / "summary.md"
    files["summary"].write_text(markdown, encoding="utf-8")
    return ReportResult(out, files, figs, records, markdown, removed)


def build_report(paths: Results, out_dir: str | Path, *, reference: bool = False, all_runs: bool = False,
                 title: str = DEFAULT_TITLE) -> ReportResult:
    """Read results (see :func:`load_results` for ``paths``/``all_runs``) and write the report.

    Writes the figures of every setting (see the module's docstring), ``summary.md`` and, with
    ``reference``, ``reference.png`` and ``speedup_vs_reference_<setting>.png`` into ``out_dir``
    (created if needed). Raises :class:`ReportError` on invalid input or no results.
    """
    where = "the given results" if paths is not None else DEFAULT_RESULTS
    return _build(chart_runs(paths, all_runs=all_runs), out_dir, reference=reference, title=title,
                  where=where)


def write_report(session: Mapping[str, Any] | str | Path, out_dir: str | Path, *,
                 reference: bool = False, title: str = DEFAULT_TITLE) -> ReportResult:
    """Report of one session: pytest-benchmark's in-memory ``output_json`` dict or a JSON path.

    Meant for the pytest plugin (e.g. from ``pytest_benchmark_update_json``, after the
    speedups were filled in).
    """
    if isinstance(session, Mapping):
        run = ChartRun.of(parse_run(session, "<session>"))
    else:
        run = ChartRun.of(parse_run(read_json(Path(session)), str(session)))
    return _build([run], out_dir, reference=reference, title=title, where=run.run.source)


def write_history(runs: Sequence[SavedRun], out_dir: str | Path, *, markdown: str = HISTORY_MARKDOWN) -> dict[str, Path]:
    """The history per machine of ``runs``: ``history_<cpu>.png`` per CPU model and the page
    ``markdown`` (default ``history.md``) in ``out_dir``; returns name -> path (the page under
    ``history``, each figure under its file stem)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    histories = machine_histories(runs)
    steps = history_steps(runs)
    files: dict[str, Path] = {}
    names: dict[str, str] = {}
    for history in histories:
        fig = plot_history(history, steps)
        if fig is None:
            continue
        stem = f"history_{slug(history.cpu)}"
        files[stem] = out / f"{stem}.png"
        fig.savefig(files[stem], dpi=DPI)
        names[history.cpu] = files[stem].name
    files["history"] = out / markdown
    files["history"].write_text(render_history_page(histories, steps, backend_history(runs), names),
                                encoding="utf-8")
    return files


def build_history(paths: Results, out_dir: str | Path, *, markdown: str = HISTORY_MARKDOWN) -> dict[str, Path]:
    """Read every saved run under ``paths`` (every run, not only the newest) and write the history
    per machine (:func:`write_history`). Raises :class:`ReportError` on unreadable results or none."""
    runs = [r for r in read_runs(paths) if r.benchmarks]
    if not runs:
        raise ReportError(f"no saved run of perf/ in {paths or DEFAULT_RESULTS} for the history")
    return write_history(runs, out_dir, markdown=markdown)


# --------------------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m explainers.bench.report",
        description="Figures (PNG) and a Markdown table from saved pytest-benchmark results of the "
                    "distributed-kernelshap scaling suite (perf/test_scaling.py).",
        epilog="RESULTS: JSON files are always used. Directories are searched recursively for *.json "
               "(pytest-benchmark's .benchmarks/<machine id>/NNNN_*.json); from each machine-id folder "
               "only the newest run (by the run's datetime) per Ray cluster setting is used, unless "
               "--all. A configuration found in several runs is taken from the newest. Benchmarks "
               "that are not of perf/ are skipped with a warning, rows without a backend (plain "
               "processes, the engine suite) quietly; a record that breaks the schema "
               "(explainers.bench.records) is an error (exit status 1). Output per setting (cluster, instances, "
               "nsamples): time_vs_workers_<setting>.png, headline_<setting>.png, speedup_<setting>.png "
               "(+ speedup_vs_reference_<setting>.png and reference.png with --reference), and summary.md; "
               "figures of an earlier report in --out that were not written again are removed. "
               "--history DIR adds history_<cpu>.png per CPU model and history.md from every run in DIR.",
    )
    p.add_argument("results", nargs="*", metavar="RESULTS",
                   help=f"JSON files or directories (default: {DEFAULT_RESULTS}/)")
    p.add_argument("--out", default="report", metavar="DIR",
                   help="directory to write the report into (created; default: report/)")
    p.add_argument("--all", dest="all_runs", action="store_true",
                   help="use every run found in directories, not only the newest per machine id "
                        "and cluster")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=False,
                   help="also draw the reference study's published results (2560 instances) and "
                        "compare speedups (default: no)")
    p.add_argument("--history", action="append", metavar="DIR",
                   help="also write the history per machine of every saved run in DIR (repeatable; "
                        f"e.g. {DEFAULT_RESULTS}/Linux-CPython-3.11-64bit): history_<cpu>.png and "
                        f"{HISTORY_MARKDOWN} in --out")
    p.add_argument("--title", default=DEFAULT_TITLE,
                   help=f"report title, used in the figures and summary.md (default: {DEFAULT_TITLE!r})")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (argparse errors exit with 2)."""
    args = _parser().parse_args(argv)
    paths = args.results or None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ReportWarning)
        try:
            result = build_report(paths, args.out, reference=args.reference,
                                  all_runs=args.all_runs, title=args.title)
            history = build_history(args.history, args.out) if args.history else {}
        except ReportError as exc:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"{len(result.records)} configurations from "
          f"{len({r.source for r in result.records})} run(s)")
    for path in result.removed:
        print(f"removed {path} (not written by this report)")
    for path in [*result.files.values(), *history.values()]:
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
