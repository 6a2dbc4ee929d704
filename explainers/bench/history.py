"""The backends' ratios in every saved run, one row per run, with the targets each met.

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
    python -m explainers.bench.history .benchmarks --out docs/report/history.md
"""
from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from explainers.bench.grid import PROCESSES
from explainers.bench.saved_runs import DEFAULT_RESULTS, ReportError, ReportWarning, SavedRun, collect_runs
from explainers.kernelshap.backends import SERVE_MODES

__all__ = ["RunRatios", "Target", "TARGETS", "load_history", "render_history", "main"]

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


def load_history(paths: Iterable[str | Path] | str | Path | None = None) -> list[RunRatios]:
    """Every saved run of ``perf/test_backends.py`` under ``paths`` (default ``.benchmarks``),
    oldest first. Raises :class:`ReportError` on a file that is not pytest-benchmark output."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ReportWarning)  # the other suites' benchmarks: not read here
        runs = collect_runs(paths)
    history = [r for r in (_ratios(run) for run in runs) if r is not None]
    return sorted(history, key=lambda r: (r.datetime, r.source))


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m explainers.bench.history",
        description="One Markdown table row per saved run of perf/test_backends.py: the backends' "
                    "speedups, their share of the plain processes, Serve against the pool, the "
                    "headline, and which targets each run met.")
    p.add_argument("results", nargs="*", metavar="RESULTS",
                   help=f"pytest-benchmark JSON files or directories (default: {DEFAULT_RESULTS}/)")
    p.add_argument("--out", metavar="FILE", help="write the table there (default: standard output)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (1: unreadable results or none)."""
    args = _parser().parse_args(argv)
    try:
        history = load_history(args.results or None)
    except ReportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if not history:
        where = " ".join(args.results) or DEFAULT_RESULTS
        print(f"error: no saved run of perf/test_backends.py in {where} "
              "(run `pytest perf/test_backends.py --benchmark-autosave` first)", file=sys.stderr)
        return 1
    text = render_history(history)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        print(f"{len(history)} runs; wrote {args.out}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
