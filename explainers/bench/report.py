"""Scaling report (figures and a Markdown table) from saved pytest-benchmark JSON.

Reads the JSON written by ``pytest perf --benchmark-autosave`` (``.benchmarks/<machine
id>/NNNN_*.json``) or ``--benchmark-json FILE`` (:mod:`explainers.bench.saved_runs`), parses
the ``extra_info`` of every benchmark with the record schema (:mod:`explainers.bench.records`)
and writes, with matplotlib (:mod:`explainers.bench.figures`, Agg canvas, no display needed):

* ``time_vs_workers.png``: mean time to explain against workers, one line per batch size,
  one panel per backend (``pool``, ``serve-ray``, ``serve-default``, ``data``), error bars
  spanning the fastest to the slowest round, the serial baseline as a dashed line;
* ``speedup.png``: speedup (top row) and parallel efficiency (bottom row) against workers,
  with the ideal lines;
* ``summary.md`` (:mod:`explainers.bench.tables`): one table row per configuration, with the
  figures linked;
* with ``reference=True`` also ``reference.png`` (the reference study's published times,
  2560 instances, from the packaged ``explainers/data/reference_results.csv``) and
  ``speedup_vs_reference.png`` (our speedups beside the study's: compare shapes, not times,
  since the instance counts and machines differ).

Python API: :func:`load_results`, :func:`build_report`, :func:`write_report` (for the
pytest plugin: takes the in-memory ``output_json`` of pytest-benchmark) and
:func:`load_reference`. Command line: ``python -m explainers.bench.report --help``.
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from explainers.bench.figures import (
    PANEL_TITLES,
    plot_reference,
    plot_speedup,
    plot_speedup_vs_reference,
    plot_time_vs_workers,
)
from explainers.bench.reference import ReferenceRow, load_reference
from explainers.bench.results import DEFAULT_TITLE, PANELS, ChartRun, Record, chart_runs, load_results, merge
from explainers.bench.saved_runs import (
    DEFAULT_RESULTS,
    Cluster,
    ReportError,
    ReportWarning,
    Results,
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
    "load_results",
    "load_reference",
    "build_report",
    "write_report",
    "main",
]


@dataclass
class ReportResult:
    """What :func:`build_report` wrote.

    ``files`` maps ``summary``, ``time_vs_workers``, ``speedup``, ``reference`` and
    ``speedup_vs_reference`` (those written) to paths; ``figures`` maps the figure names to
    their :class:`matplotlib.figure.Figure` (not attached to pyplot: nothing to close).
    """

    out_dir: Path
    files: dict[str, Path]
    figures: dict[str, Figure]
    records: list[Record]
    markdown: str


def _build(runs: list[ChartRun], out_dir: str | Path, *, reference: bool, title: str,
           where: str) -> ReportResult:
    records = merge(runs)
    if not records:
        raise ReportError(f"no distributed-kernelshap benchmark results in {where} "
                          "(run e.g. `pytest perf --benchmark-autosave` first)")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[str, Figure | None] = {
        "time_vs_workers": plot_time_vs_workers(records, title=title),
        "speedup": plot_speedup(records, title=title),
    }
    if figures["time_vs_workers"] is None:
        warnings.warn("only serial results: no figures drawn", ReportWarning, stacklevel=3)
    elif figures["speedup"] is None:
        warnings.warn("no speedups (no serial baseline in the runs): speedup.png not drawn",
                      ReportWarning, stacklevel=3)
    ref = load_reference() if reference else None
    if ref is not None:
        figures["reference"] = plot_reference(ref)
        figures["speedup_vs_reference"] = plot_speedup_vs_reference(records, ref, title=title)
    figs = {k: f for k, f in figures.items() if f is not None}
    files: dict[str, Path] = {}
    for name, fig in figs.items():
        files[name] = out / f"{name}.png"
        fig.savefig(files[name], dpi=110)
    markdown = render_markdown(records, [cr.run for cr in runs], [p.name for p in files.values()],
                               title=title, reference=ref)
    files["summary"] = out / "summary.md"
    files["summary"].write_text(markdown, encoding="utf-8")
    return ReportResult(out, files, figs, records, markdown)


def build_report(paths: Results, out_dir: str | Path, *, reference: bool = False, all_runs: bool = False,
                 title: str = DEFAULT_TITLE) -> ReportResult:
    """Read results (see :func:`load_results` for ``paths``/``all_runs``) and write the report.

    Writes ``time_vs_workers.png``, ``speedup.png`` (when speedups exist), ``summary.md`` and,
    with ``reference``, ``reference.png`` and ``speedup_vs_reference.png`` into ``out_dir``
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
               "(explainers.bench.records) is an error (exit status 1). Output: time_vs_workers.png, speedup.png, summary.md "
               "(+ reference.png, speedup_vs_reference.png with --reference).",
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
        except ReportError as exc:
            for w in caught:
                print(f"warning: {w.message}", file=sys.stderr)
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    print(f"{len(result.records)} configurations from "
          f"{len({r.source for r in result.records})} run(s)")
    for path in result.files.values():
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
