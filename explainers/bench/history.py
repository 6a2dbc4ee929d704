"""History per machine: every benchmark family's median time run by run, its steps, and the
backends' ratios in every saved run with the targets each met.

**Families.** A benchmark family is a suite and what it runs (``scaling pool``, ``backends
processes``, ``engine shap``, ``mission pool reuse``): its value in a run is the median, over
the family's benchmarks in that run, of each benchmark's median round (:class:`FamilyPoint`).
:func:`machine_histories` groups the runs by CPU model (py-cpuinfo's ``brand_raw``), oldest
first; :func:`history_steps` flags the steps (:class:`Step`); :func:`render_history_page`
writes ``docs/report/history.md`` (the figures: :func:`explainers.bench.figures.plot_history`,
drawn by ``python -m explainers.bench.report --history DIR``).

Reads pytest-benchmark's saved runs (``.benchmarks/<machine id>/NNNN_*.json``, every run,
through :mod:`explainers.bench.saved_runs`) and, from each run of ``perf/test_backends.py``,
takes the speedups of the plain processes and of every backend at 1 and 2 workers, each
backend's share of the plain processes in the same minutes (``vs_processes``), and the
headline of ``perf/test_mission.py`` if the run has it. It writes one Markdown table row per
run, oldest first, and checks the backends' targets (:data:`TARGETS`) in each:

* A, B: at 2 workers the pool and Ray Data at least 1.8x faster than serial;
* C, D: at 2 workers each Serve mode's time at most 15% above the pool's (Serve's speedup at
  least the pool's / 1.15);
* E: at 1 worker every backend's time at most 10% above serial's (speedup at least 1 / 1.1).

A shared machine moves these from run to run; the table shows by how much. Command line::

    python -m explainers.bench.history                      # .benchmarks/ -> stdout
    python -m explainers.bench.history .benchmarks/Linux-CPython-3.11-64bit --out docs/report/history.md
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from explainers.bench.compare import DEFAULT_MIN_EFFECT
from explainers.bench.grid import PROCESSES
from explainers.bench.records import SUITES
from explainers.bench.saved_runs import (
    DEFAULT_RESULTS,
    ReportError,
    ReportWarning,
    Results,
    SavedBenchmark,
    SavedRun,
    collect_runs,
)
from explainers.kernelshap.backends import SERVE_MODES

__all__ = ["RunRatios", "Target", "TARGETS", "STEP_FACTOR", "RunId", "FamilyPoint", "MachineHistory", "Step",
           "family_of", "slug", "read_runs", "machine_histories", "history_steps", "backend_history",
           "load_history", "render_history", "render_machine_history", "render_history_page", "main"]

#: a family's median time changing by more than this factor between two consecutive runs of one
#: CPU model, on the same work, is a step: the comparison's minimum effect for time
#: (:data:`explainers.bench.compare.DEFAULT_MIN_EFFECT`, docs/compare.md). In runs 0001-0019 (AMD
#: EPYC, 2 cores, shared) 95% of the changes between consecutive runs were within 1.26x and 99%
#: within 1.55x; the two larger ones were code changes (Ray Data, runs 0003 and 0015).
STEP_FACTOR = 1 + DEFAULT_MIN_EFFECT
UNKNOWN_CPU = "unknown CPU"


@dataclass(frozen=True, order=True)
class RunId:
    """One saved run on the history's x axis: its datetime, autosave number and short commit."""

    datetime: str
    run: str
    commit: str

    @property
    def tick(self) -> str:
        """The axis label: ``0013`` over the commit."""
        return f"{self.run}\n{self.commit}"


@dataclass(frozen=True)
class FamilyPoint:
    """A benchmark family in one run. ``median_s``: median over the family's benchmarks of each
    one's median round (seconds per call); ``ms_per_instance``: the same per instance; ``work``:
    the distinct (instances, nsamples) of those benchmarks (steps are judged on equal work)."""

    family: str
    suite: str
    run: RunId
    median_s: float
    ms_per_instance: float
    work: tuple[tuple[int, int | None], ...]
    benchmarks: int

    @property
    def instances(self) -> str:
        """The instance counts of the work, e.g. ``40`` or ``64 / 2560``."""
        return " / ".join(str(n) for n in sorted({n for n, _ in self.work}))


@dataclass(frozen=True)
class MachineHistory:
    """Every family of the runs of one CPU model, the runs oldest first."""

    cpu: str
    runs: tuple[RunId, ...]
    points: tuple[FamilyPoint, ...]

    def families(self, suite: str | None = None) -> list[str]:
        """The families (of ``suite``), in the order they first appear."""
        return list(dict.fromkeys(p.family for p in self.points if suite is None or p.suite == suite))

    def suites(self) -> list[str]:
        """The suites measured, in :data:`explainers.bench.records.SUITES` order."""
        return [s for s in SUITES if any(p.suite == s for p in self.points)]

    def series(self, family: str) -> list[FamilyPoint]:
        """The family's points, oldest run first."""
        return sorted((p for p in self.points if p.family == family), key=lambda p: p.run)


@dataclass(frozen=True)
class Step:
    """A step of one family between a run and the one before it on the same CPU model.
    ``ratio``: this run's median time / the previous run's; ``label``: e.g. ``slower x1.62``."""

    cpu: str
    family: str
    run: str
    commit: str
    ratio: float
    label: str


def family_of(bench: SavedBenchmark) -> str:
    """The benchmark's family: its suite and what it runs (``scaling pool``, ``engine shap``,
    ``mission serve-ray reuse``)."""
    rec = bench.record
    what = rec.label + (" reuse" if rec.reuse_coalitions and rec.suite != "engine" else "")
    return f"{rec.suite} {what}"


def slug(text: str) -> str:
    """A file-name part for a CPU model or a cluster: ``AMD EPYC`` -> ``amd-epyc``."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "unknown"


def read_runs(paths: Results = None) -> list[SavedRun]:
    """Every saved run under ``paths`` (default ``.benchmarks``), oldest first; benchmarks that
    are not of ``perf/`` are left out quietly. Raises :class:`ReportError`."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)
        runs = collect_runs(paths)
    return sorted(runs, key=lambda r: (r.datetime, r.source))


def _run_id(run: SavedRun) -> RunId:
    return RunId(datetime=run.datetime[:16].replace("T", " "), run=run.number, commit=(run.commit or "?")[:7])


def machine_histories(runs: Sequence[SavedRun]) -> list[MachineHistory]:
    """The runs grouped by CPU model (by name), each run's families (:class:`FamilyPoint`)."""
    by_cpu: dict[str, list[SavedRun]] = {}
    for run in sorted(runs, key=lambda r: (r.datetime, r.source)):
        by_cpu.setdefault(run.cpu or UNKNOWN_CPU, []).append(run)
    out = []
    for cpu, cpu_runs in sorted(by_cpu.items()):
        points = []
        for run in cpu_runs:
            families: dict[str, list[SavedBenchmark]] = {}
            for bench in run.benchmarks:
                families.setdefault(family_of(bench), []).append(bench)
            for family, benches in families.items():
                times = [b.stats.median if b.stats.median is not None else b.stats.mean for b in benches]
                points.append(FamilyPoint(
                    family=family, suite=benches[0].record.suite, run=_run_id(run),
                    median_s=statistics.median(times),
                    ms_per_instance=statistics.median(1000 * t / b.record.n_instances for t, b in zip(times, benches)),
                    work=tuple(sorted({(b.record.n_instances, b.record.nsamples) for b in benches},
                                      key=lambda w: (w[0], w[1] or 0))),
                    benchmarks=len(benches)))
        out.append(MachineHistory(cpu=cpu, runs=tuple(_run_id(r) for r in cpu_runs), points=tuple(points)))
    return out


def history_steps(runs: Sequence[SavedRun]) -> list[Step]:
    """The steps in ``runs``: for each CPU model and benchmark family, every pair of consecutive
    runs (oldest first) measuring the family on the same work whose median times differ by more
    than :data:`STEP_FACTOR` either way. Oldest first, by CPU model and family.

    This is the placeholder judgement: the noise-aware comparison of two runs
    (``explainers.bench.compare``) is to replace this body, keeping the signature.
    """
    steps = []
    for history in machine_histories(runs):
        for family in history.families():
            series = history.series(family)
            for old, new in zip(series, series[1:]):
                ratio = new.median_s / old.median_s
                if old.work == new.work and max(ratio, 1 / ratio) > STEP_FACTOR:
                    word = "slower" if ratio > 1 else "faster"
                    steps.append(Step(cpu=history.cpu, family=family, run=new.run.run, commit=new.run.commit,
                                      ratio=ratio, label=f"{word} x{max(ratio, 1 / ratio):.2f}"))
    return steps

#: the rows of a run, in the table's order; ``processes`` is the plain-process ceiling
PANELS = (PROCESSES, "pool", "data", "serve-ray", "serve-default")
PANEL_LABELS = {"processes": "plain processes", "pool": "pool", "data": "Ray Data",
                "serve-ray": "Serve `ray`", "serve-default": "Serve `default`"}


@dataclass
class RunRatios:
    """What one saved run of ``perf/test_backends.py`` measured.

    ``speedup[(panel, workers)]`` is serial time / time (fastest rounds, paired with serial
    rounds); ``vs_processes[(panel, workers)]`` the backend's share of the plain processes
    timed in the same minutes (runs before ``0013`` did not record it).
    """

    source: str
    run: str
    datetime: str
    commit: str
    cpu: str
    n_instances: int
    speedup: dict[tuple[str, int], float] = field(default_factory=dict)
    vs_processes: dict[tuple[str, int], float] = field(default_factory=dict)
    headline_s: float | None = None

    def serve_time_vs_pool(self, mode: str, workers: int = 2) -> float | None:
        """Serve's time / the pool's at ``workers`` (pool speedup / Serve speedup)."""
        pool, serve = self.speedup.get(("pool", workers)), self.speedup.get((f"serve-{mode}", workers))
        return None if pool is None or serve is None else pool / serve


@dataclass(frozen=True)
class Target:
    """One target: ``check(run)`` is True (met), False (missed) or None (not measured)."""

    key: str
    label: str
    check: Callable[[RunRatios], bool | None]


def _at_least(panel: str, workers: int, minimum: float) -> Callable[[RunRatios], bool | None]:
    def check(run: RunRatios) -> bool | None:
        value = run.speedup.get((panel, workers))
        return None if value is None else value >= minimum
    return check


def _serve_within(mode: str, slower: float) -> Callable[[RunRatios], bool | None]:
    def check(run: RunRatios) -> bool | None:
        ratio = run.serve_time_vs_pool(mode)
        return None if ratio is None else ratio <= 1 + slower
    return check


def _one_worker_within(slower: float) -> Callable[[RunRatios], bool | None]:
    def check(run: RunRatios) -> bool | None:
        values = [run.speedup.get((p, 1)) for p in PANELS if p != "processes"]
        return None if None in values else min(values) >= 1 / (1 + slower)
    return check


TARGETS: tuple[Target, ...] = (
    Target("A", "pool at 2 workers >= 1.8x", _at_least("pool", 2, 1.8)),
    Target("B", "Ray Data at 2 workers >= 1.8x", _at_least("data", 2, 1.8)),
    Target("C", "Serve `ray` at 2 workers: time <= 1.15x the pool's", _serve_within("ray", 0.15)),
    Target("D", "Serve `default` at 2 workers: time <= 1.15x the pool's", _serve_within("default", 0.15)),
    Target("E", "every backend at 1 worker: time <= 1.1x serial's (speedup >= 0.91x)",
           _one_worker_within(0.10)),
)


def _ratios(run: SavedRun) -> RunRatios | None:
    """The run's backend ratios; None if it has no ``perf/test_backends.py`` results."""
    rows = [b.record for b in run.benchmarks if b.record.suite == "backends" and b.record.label in PANELS]
    if not rows:
        return None
    out = RunRatios(source=run.source, run=run.number, datetime=run.datetime[:16].replace("T", " "),
                    commit=(run.commit or "?")[:7], cpu=run.cpu or "?", n_instances=rows[0].n_instances)
    for rec in rows:
        if rec.workers is None:
            continue
        if rec.speedup is not None:
            out.speedup[(rec.label, rec.workers)] = rec.speedup
        if rec.vs_processes is not None:
            out.vs_processes[(rec.label, rec.workers)] = rec.vs_processes
    mission = [b for b in run.benchmarks if b.record.suite == "mission"]
    mission = [b for b in mission if not b.record.reuse_coalitions] or mission  # the default engine's
    if mission:
        out.headline_s = min(b.stats.min for b in mission)
    return out


def backend_history(runs: Sequence[SavedRun]) -> list[RunRatios]:
    """The runs of ``perf/test_backends.py`` among ``runs``, oldest first."""
    history = [r for r in (_ratios(run) for run in runs) if r is not None]
    return sorted(history, key=lambda r: (r.datetime, r.source))


def load_history(paths: Iterable[str | Path] | str | Path | None = None) -> list[RunRatios]:
    """Every saved run of ``perf/test_backends.py`` under ``paths`` (default ``.benchmarks``),
    oldest first. Raises :class:`ReportError` on a file that is not pytest-benchmark output."""
    return backend_history(read_runs(paths))


def _cell(run: RunRatios, panel: str, workers: int) -> str:
    value = run.speedup.get((panel, workers))
    if value is None:
        return "—"
    share = run.vs_processes.get((panel, workers))
    return f"{value:.2f}x" + (f" ({share:.0%})" if share is not None and workers == 2 else "")


def render_history(history: Sequence[RunRatios]) -> str:
    """The Markdown table: one row per run, then which targets it met."""
    lines = ["# The backends, run by run", "",
             "`perf/test_backends.py` in every saved run (`python -m explainers.bench.history`): speedup = "
             "serial time on one core / time, each the fastest of its rounds, the serial rounds timed "
             "between the backend's. In brackets at 2 workers, the share of the plain processes (no "
             "Ray) timed in the same minutes. Serve / pool = Serve's time / the pool's at 2 workers. "
             "Compare ratios, not runs: a shared machine moves them from minute to minute.", ""]
    header = ["run", "date (UTC)", "commit", "CPU", "instances"]
    for panel in PANELS:
        header += [f"{PANEL_LABELS[panel]} 1 w", f"{PANEL_LABELS[panel]} 2 w"]
    header += ["Serve `ray` / pool", "Serve `default` / pool", "headline (exact, 2560)", "targets met"]
    lines += ["| " + " | ".join(header) + " |", "|---|---|---|---|" + "---:|" * (len(header) - 4)]
    for run in history:
        met = [t.check(run) for t in TARGETS]
        known = [m for m in met if m is not None]
        cells = [run.run, run.datetime, f"`{run.commit}`", run.cpu, str(run.n_instances)]
        for panel in PANELS:
            cells += [_cell(run, panel, 1), _cell(run, panel, 2)]
        for mode in SERVE_MODES:
            ratio = run.serve_time_vs_pool(mode)
            cells.append("—" if ratio is None else f"{ratio:.2f}")
        cells.append("—" if run.headline_s is None else f"{run.headline_s:.1f} s")
        missed = [t.key for t, m in zip(TARGETS, met) if m is False]
        cells.append(f"{sum(known)} of {len(known)}" + (f" (missed {', '.join(missed)})" if missed else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Targets:", ""] + [f"- {t.key}: {t.label}" for t in TARGETS] + [""]
    return "\n".join(lines)


def _cell_ms(point: FamilyPoint | None, step: Step | None) -> str:
    if point is None:
        return "—"
    value = f"{point.ms_per_instance:.3g}"
    return f"**{value}** ({step.label})" if step is not None else value


def render_machine_history(history: MachineHistory, steps: Sequence[Step], figure: str | None = None) -> str:
    """One CPU model's section: the figure (if given), the steps, one table per suite (one row
    per run, one column per family, median ms per instance; a step in bold with its factor)."""
    mine = [s for s in steps if s.cpu == history.cpu]
    at = {(s.family, s.run): s for s in mine}
    out = [f"## {history.cpu}: {len(history.runs)} runs", ""]
    if figure:
        out += [f"![history of {history.cpu}]({figure})", ""]
    if mine:
        out += [f"Steps (median time x{STEP_FACTOR:g} or more either way from the run before, same work):", ""]
        out += [f"- run {s.run} (`{s.commit}`), {s.family}: {s.label}" for s in mine]
    else:
        out.append(f"No steps (median time x{STEP_FACTOR:g} or more from the run before, same work).")
    out.append("")
    for suite in history.suites():
        families = history.families(suite)
        points = {(p.family, p.run.run): p for p in history.points if p.suite == suite}
        names = [f.removeprefix(f"{suite} ") for f in families]
        out += [f"### {suite}", "", "| run | date (UTC) | commit | instances | " + " | ".join(names) + " |",
                "|---|---|---|---:|" + "---:|" * len(names)]
        for run in history.runs:
            row = [points.get((f, run.run)) for f in families]
            present = [p for p in row if p is not None]
            if not present:
                continue
            instances = " / ".join(dict.fromkeys(p.instances for p in present))
            cells = [_cell_ms(p, at.get((f, run.run))) for f, p in zip(families, row)]
            out.append(f"| {run.run} | {run.datetime} | `{run.commit}` | {instances} | " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def render_history_page(histories: Sequence[MachineHistory], steps: Sequence[Step],
                        backends: Sequence[RunRatios], figures: Mapping[str, str] | None = None) -> str:
    """``docs/report/history.md``: per CPU model its figure (``figures``: CPU -> file name), steps
    and family tables, then the backends' ratios run by run (:func:`render_history`)."""
    figures = figures or {}
    out = ["# History per machine", "",
           "Every saved run of each CPU model, oldest first (`python -m explainers.bench.report --history "
           "DIR`). A benchmark family is a suite and what it runs; its value in a run is the median over "
           "the family's benchmarks of each one's median round, in milliseconds per instance explained, "
           "so runs of other instance counts stay on one scale. A step is a family's median time changing "
           f"by more than x{STEP_FACTOR:g} from the run before on the same CPU model and the same work "
           "(instances and nsamples); a change of work is marked, never a step. Runs of different CPU "
           "models are never compared.", ""]
    for history in histories:
        out.append(render_machine_history(history, steps, figures.get(history.cpu)))
    if backends:
        out.append(render_history(backends).replace("# The backends, run by run", "## The backends, run by run", 1))
    return "\n".join(out)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m explainers.bench.history",
        description="The history per machine of saved pytest-benchmark runs: every benchmark family's "
                    "median time run by run with its steps, per CPU model, and the backends' ratios "
                    "with the targets each run met. With --out also the figures (history_<cpu>.png).")
    p.add_argument("results", nargs="*", metavar="RESULTS",
                   help=f"pytest-benchmark JSON files or directories (default: {DEFAULT_RESULTS}/)")
    p.add_argument("--out", metavar="FILE",
                   help="write the page there and the figures beside it (default: the page to standard output)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1: unreadable results or none)."""
    args = _parser().parse_args(argv)
    try:
        runs = [r for r in read_runs(args.results or None) if r.benchmarks]
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not runs:
        where = " ".join(args.results) or DEFAULT_RESULTS
        print(f"error: no saved run of perf/ in {where} "
              "(run `pytest perf/ --benchmark-autosave` first)", file=sys.stderr)
        return 1
    if args.out:
        # the report draws the figures, and its module imports this one
        from explainers.bench.report import write_history

        out = Path(args.out)
        files = write_history(runs, out.parent, markdown=out.name)
        print(f"{len(runs)} runs; wrote " + ", ".join(str(p) for p in files.values()))
    else:
        print(render_history_page(machine_histories(runs), history_steps(runs), backend_history(runs)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
