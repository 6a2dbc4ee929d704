"""The report's Markdown: the runs it read, one table per setting, the figures, the study.

One table per setting (Ray cluster, instances, nsamples), one row per configuration
(:class:`explainers.bench.results.Record`), in the study's order.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from explainers.bench.reference import (
    REFERENCE_INSTANCES,
    REFERENCE_LABELS,
    REFERENCE_SETTINGS,
    ReferenceRow,
    reference_serial,
    reference_speedups,
)
from explainers.bench.results import DEFAULT_TITLE, Record, settings_of
from explainers.bench.saved_runs import SavedRun

__all__ = ["TABLE_COLUMNS", "CEILING_COLUMNS", "REUSE_COLUMN", "OVERHEAD_COLUMN", "render_markdown"]

TABLE_COLUMNS = ("backend", "serve mode", "workers", "batch size", "instances", "nsamples", "rounds",
                 "mean s", "stddev s", "min s", "max s", "explanations/s", "speedup", "efficiency",
                 "nodes used")
_DASH = "—"


def _fmt_s(x: float) -> str:
    return f"{x:.4g}" if abs(x) < 1000 else f"{x:.0f}"


def _fmt(x: Any, spec: str = "") -> str:
    if x is None:
        return _DASH
    return format(x, spec)


#: shown when a table's records measured the plain-process ceiling (``perf/test_backends.py``)
CEILING_COLUMNS = ("plain processes speedup", "share of plain processes")
#: shown when some of a table's records reused coalition values (``perf/test_mission.py`` times both)
REUSE_COLUMN = "reuse coalitions"
#: shown when a table's records accounted the machine's CPU per call (``explainers.bench.machine_cpu``)
OVERHEAD_COLUMN = "driver + Ray CPU share"


def _table(records: Sequence[Record]) -> list[str]:
    ceiling = any(r.vs_processes is not None for r in records)
    overhead = any(r.overhead_cpu_share is not None for r in records)
    reuse = any(r.reuse_coalitions for r in records)
    columns = (TABLE_COLUMNS + ((REUSE_COLUMN,) if reuse else ()) + (CEILING_COLUMNS if ceiling else ())
               + ((OVERHEAD_COLUMN,) if overhead else ()))
    right = {c for c in columns if c not in ("backend", "serve mode", REUSE_COLUMN)}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"]
    for r in sorted(records, key=Record.sort_key):
        cells = (r.backend, _fmt(r.serve_mode), _fmt(r.workers), _fmt(r.batch_size), str(r.n_instances),
                 str(r.nsamples), str(r.rounds), _fmt_s(r.mean), _fmt_s(r.stddev), _fmt_s(r.min),
                 _fmt_s(r.max), f"{r.explanations_per_s:.4g}", _fmt(r.speedup, ".3f"),
                 _fmt(r.efficiency, ".3f"), _fmt(r.nodes_used))
        if reuse:
            cells += ("yes" if r.reuse_coalitions else "no",)
        if ceiling:
            cells += (_fmt(r.processes_speedup, ".3f"), _fmt(r.vs_processes, ".0%"))
        if overhead:
            cells += (_fmt(r.overhead_cpu_share, ".1%"),)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _run_line(run: SavedRun) -> str:
    m, cluster = run.machine_info, run.cluster
    parts = [f"`{run.source}`", f"run {run.datetime or '?'}", f"pytest-benchmark {run.version}",
             f"Python {m.get('python_version', '?')} on {m.get('system', '?')} {m.get('machine', '')}".rstrip()]
    if run.cpu:
        parts.append(run.cpu)
    parts.append(f"Ray {cluster.ray_version or '?'} ({cluster.label()})")
    if run.commit:
        parts.append(f"commit {run.commit[:10]}" + (" (dirty)" if run.commit_info.get("dirty") else ""))
    return "- " + ", ".join(parts)


def render_markdown(records: Sequence[Record], runs: Sequence[SavedRun], figures: Sequence[str], *,
                    title: str = DEFAULT_TITLE, reference: Sequence[ReferenceRow] | None = None) -> str:
    """The Markdown summary: sources, one table per setting, links to the figures."""
    used = {r.source for r in records}
    out = [f"# {title}", "", "Results from:", ""]
    out += [_run_line(run) for run in runs if run.source in used]
    out += ["", "Times are seconds to explain all the instances of one request: mean, standard "
            "deviation, fastest and slowest of the rounds. Speedup = serial time / time, as each "
            "benchmark recorded it (current suites: against serial rounds timed between the "
            "benchmark's own rounds; `perf/test_scaling.py` uses means, `perf/test_backends.py` "
            "fastest rounds); efficiency = speedup / workers. Workers "
            "(actors, Serve replicas, Ray Data's pipeline) start before the clock. "
            f"{_DASH} = not applicable or not recorded.", ""]
    if any(r.vs_processes is not None for r in records):
        out += ["`perf/test_backends.py` also times the same minibatches on plain processes "
                "without Ray: a backend's share of plain processes = its speedup / theirs at the "
                "same workers, measured in the same minutes (older runs: in the same run), the "
                "share of what the machine allowed.", ""]
    if any(r.overhead_cpu_share is not None for r in records):
        out += [f"{OVERHEAD_COLUMN}: of the CPU time this machine spent on a call (workers, "
                "driver, Ray's own processes), the share that was not the workers': on a machine "
                "the workers fill, that much was taken from them.", ""]
    if any(r.suite == "engine" for r in records):
        out += ["A serial row of a setting whose suites timed no serial run of their own (the headline's "
                "exact setting) is `perf/test_engine_speed.py`'s default engine on the same instances and "
                "nsamples, in the same run.", ""]
    for setting in settings_of(records):
        cluster, n, ns = setting
        out += [f"## {cluster}; {n} instances, nsamples {ns}", ""]
        out += _table([r for r in records if r.setting == setting])
        out.append("")
    if figures:
        out += ["## Figures", ""]
        out += [f"![{name}]({name})" for name in figures]
        out.append("")
    if reference:
        base = reference_serial(reference)
        ws = sorted({r.workers for r in reference if r.setting != "serial"})
        out += ["## Reference study (published)", "",
                f"Speedup = serial time ({base:.2f} s for {REFERENCE_INSTANCES} instances) / time, "
                "mean over batch sizes 1, 5 and 10; times read off the study's charts.", "",
                "| setting | " + " | ".join(f"{w} w" for w in ws) + " |",
                "|---|" + "---:|" * len(ws)]
        for setting in REFERENCE_SETTINGS:
            sp = dict(reference_speedups(reference, setting))
            out.append(f"| {REFERENCE_LABELS[setting].removeprefix('study ')} | "
                       + " | ".join(_fmt(sp.get(w), ".2f") for w in ws) + " |")
        out.append("")
    return "\n".join(out)
