"""The report's rows: one :class:`Record` per configuration with a backend, from saved runs.

The charted records are those with a ``backend`` (``perf/test_scaling.py``, the backends of
``perf/test_backends.py``, ``perf/test_mission.py``); the plain processes' rows and the engine
suite are in the saved runs but not in the figures. From directories only the newest run per
machine id and Ray cluster is used unless ``all_runs``; a configuration found in several runs
is taken from the newest; within a run the scaling grid's is kept over ``perf/test_backends.py``'s
(:data:`BACKENDS_SUITE`). A setting without a serial record of its own (e.g. the mission's exact
setting) gets the run's serial engine of the same work from ``perf/test_engine_speed.py``
(the default engine, ``suite`` ``engine``) as its serial baseline.
"""
from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from explainers.bench.grid import SERIAL
from explainers.bench.saved_runs import (
    Cluster,
    ReportWarning,
    Results,
    SavedBenchmark,
    SavedRun,
    collect_runs,
    result_items,
    where_of,
)
from explainers.kernelshap.backends import backend_label

__all__ = ["PANELS", "DEFAULT_TITLE", "HEADLINE_SUITE", "Setting", "Record", "ChartRun", "chart_runs", "merge",
           "load_results", "settings_of"]

#: Panels of the figures, in the study's order (serial is the baseline, not a panel).
PANELS = ("pool", "serve-ray", "serve-default", "data")
DEFAULT_TITLE = "KernelSHAP scaling report"
#: the suite whose records are the headline (``perf/test_mission.py``: exact values of every instance)
HEADLINE_SUITE = "mission"
#: ``perf/test_backends.py``: where it measured a configuration the scaling grid measured too (same
#: run, same work), the report quietly keeps the grid's, timed against the grid's serial baseline
BACKENDS_SUITE = "backends"
#: what one figure shows and one table lists: (Ray cluster label, instances, nsamples)
Setting = tuple[str, int, int]
_ORDER = {"serial": 0, **{p: i + 1 for i, p in enumerate(PANELS)}}


@dataclass(frozen=True)
class Record:
    """One benchmark (one configuration of one run), times in seconds per whole request."""

    source: str
    run_datetime: str
    machine_id: str | None
    name: str
    fullname: str
    backend: str
    serve_mode: str | None
    workers: int | None
    batch_size: int | None
    n_instances: int
    nsamples: int
    exact: bool | None
    mean: float
    stddev: float
    min: float
    max: float
    median: float | None
    rounds: int
    data: tuple[float, ...] | None
    explanations_per_s: float
    speedup: float | None
    efficiency: float | None
    nodes_used: int | None
    cluster: Cluster = field(default_factory=Cluster)
    #: ``perf/test_backends.py``: the plain processes' speedup at these workers, from rounds
    #: paired with this record's, and this record's share of it (``speedup / processes_speedup``)
    processes_speedup: float | None = None
    vs_processes: float | None = None
    #: on a local cluster: the share of the driver and Ray's own processes in the machine's CPU
    #: per call (``explainers.bench.machine_cpu``)
    overhead_cpu_share: float | None = None
    #: the suite that measured it (``scaling``, ``backends``, ``mission``; ``engine`` for a serial
    #: baseline taken from ``perf/test_engine_speed.py``)
    suite: str = "scaling"
    #: the engine reused coalition values across instances (``perf/test_mission.py`` times both)
    reuse_coalitions: bool | None = None

    @classmethod
    def of(cls, run: SavedRun, bench: SavedBenchmark, *, backend: str | None = None) -> Record:
        """The row of one benchmark with a backend (or given one: ``backend``); ``explanations_per_s``
        from the stats' mean where the record has none."""
        rec, stats = bench.record, bench.stats
        backend = backend or rec.backend
        assert backend is not None and rec.nsamples is not None
        return cls(
            source=run.source, run_datetime=run.datetime, machine_id=run.machine_id,
            name=bench.name, fullname=bench.fullname, backend=backend, serve_mode=rec.serve_mode,
            workers=rec.workers, batch_size=rec.batch_size, n_instances=rec.n_instances,
            nsamples=rec.nsamples, exact=rec.exact, mean=stats.mean, stddev=stats.stddev, min=stats.min,
            max=stats.max, median=stats.median, rounds=stats.rounds, data=stats.data,
            explanations_per_s=(rec.explanations_per_s if rec.explanations_per_s is not None
                                else rec.n_instances / stats.mean),
            speedup=rec.speedup, efficiency=rec.efficiency, nodes_used=rec.nodes_used, cluster=run.cluster,
            processes_speedup=rec.processes_speedup, vs_processes=rec.vs_processes,
            overhead_cpu_share=rec.overhead_cpu_share, suite=rec.suite, reuse_coalitions=rec.reuse_coalitions,
        )

    @property
    def panel(self) -> str:
        """``serial``, ``pool``, ``serve-ray``, ``serve-default`` or ``data``."""
        return backend_label(self.backend, self.serve_mode)

    @property
    def setting(self) -> Setting:
        """What must agree for two records to share a figure line: cluster, instances, nsamples."""
        return (self.cluster.label(), self.n_instances, self.nsamples)

    @property
    def config(self) -> tuple[Any, ...]:
        """Identity of the configuration (a later run of the same one replaces it)."""
        return (self.setting, self.panel, self.workers, self.batch_size, bool(self.reuse_coalitions))

    @property
    def headline(self) -> bool:
        """Whether it is one of the headline's records (:data:`HEADLINE_SUITE`)."""
        return self.suite == HEADLINE_SUITE

    def sort_key(self) -> tuple[Any, ...]:
        """The study's chart order: backend, serve mode, batch size, workers."""
        return (_ORDER[self.panel], self.batch_size or 0, self.workers or 0, self.name)


@dataclass(frozen=True)
class ChartRun:
    """A saved run and its charted records (a configuration measured twice: the later one)."""

    run: SavedRun
    records: tuple[Record, ...]

    @classmethod
    def of(cls, run: SavedRun) -> ChartRun:
        """The run's charted records, and serial baselines from its engine suite where a setting has none."""
        seen: dict[tuple[Any, ...], Record] = {}
        for bench in run.benchmarks:
            if bench.record.backend is None:
                continue
            rec = Record.of(run, bench)
            old = seen.get(rec.config)
            if old is not None and BACKENDS_SUITE in (old.suite, rec.suite) and old.suite != rec.suite:
                if rec.suite == BACKENDS_SUITE:
                    continue
            elif old is not None:
                warnings.warn(f"{where_of(run.source, rec.name)}: same configuration as "
                              f"{seen[rec.config].name!r}; the later one is used", ReportWarning, stacklevel=3)
                del seen[rec.config]
            seen[rec.config] = rec
        with_serial = {r.setting for r in seen.values() if r.panel == SERIAL}
        for bench in run.benchmarks:
            rec = bench.record
            if rec.suite != "engine" or rec.engine_role != "engine" or rec.reuse_coalitions or rec.nsamples is None:
                continue
            serial = Record.of(run, bench, backend=SERIAL)
            if serial.setting not in with_serial and any(r.setting == serial.setting for r in seen.values()):
                seen[serial.config] = serial
                with_serial.add(serial.setting)
        return cls(run, tuple(seen.values()))


def _newest(runs: Sequence[ChartRun]) -> list[ChartRun]:
    """The newest run (by its datetime, then its path) per machine id and Ray cluster."""
    newest: dict[tuple[Any, ...], ChartRun] = {}
    for cr in runs:
        key = (cr.run.machine_id, cr.run.cluster.label())
        old = newest.get(key)
        if old is None or (cr.run.datetime, cr.run.source) > (old.run.datetime, old.run.source):
            newest[key] = cr
    return sorted(newest.values(), key=lambda cr: (cr.run.datetime, cr.run.source))


def chart_runs(paths: Results = None, *, all_runs: bool = False) -> list[ChartRun]:
    """The runs in ``paths`` (see :func:`explainers.bench.saved_runs.collect_runs`) that have
    charted records. Of the runs in a directory only the newest per machine id and Ray cluster,
    unless ``all_runs``; files and in-memory outputs given are always used."""
    out: list[ChartRun] = []
    for item in result_items(paths):
        runs = [cr for cr in map(ChartRun.of, collect_runs(item)) if cr.records]
        newest_only = not all_runs and not isinstance(item, Mapping) and Path(item).is_dir()
        out.extend(_newest(runs) if newest_only else runs)
    return out


def merge(runs: Sequence[ChartRun]) -> list[Record]:
    """All records, a configuration measured in several runs taken from the newest run; sorted
    by setting, then backend, serve mode, batch size and workers."""
    chosen: dict[tuple[Any, ...], Record] = {}
    for cr in sorted(runs, key=lambda cr: cr.run.datetime):
        for rec in cr.records:
            old = chosen.get(rec.config)
            if old is not None and old.source != rec.source:
                warnings.warn(f"{rec.name}: measured in {old.source} and {rec.source}; "
                              "the newer run is used", ReportWarning, stacklevel=3)
            chosen[rec.config] = rec
    return sorted(chosen.values(), key=lambda r: (r.setting, r.sort_key()))


def settings_of(records: Sequence[Record]) -> list[Setting]:
    """The settings of ``records``, the study's experiment (settings without headline records) first,
    then by cluster, instances and nsamples."""
    return sorted({r.setting for r in records},
                  key=lambda s: (any(r.headline for r in records if r.setting == s), s))


def load_results(paths: Results = None, *, all_runs: bool = False) -> list[Record]:
    """Read and check benchmark results; one :class:`Record` per configuration with a backend.

    ``paths`` holds JSON files (always used), directories (searched recursively for
    ``*.json``; unless ``all_runs``, only the newest run per machine-id folder and Ray
    cluster is used, "newest" by the run's ``datetime``) and/or in-memory pytest-benchmark
    output dicts; default ``.benchmarks``. A configuration found in several runs is taken
    from the newest. Benchmarks that are not of ``perf/`` are skipped with a
    :class:`~explainers.bench.saved_runs.ReportWarning`; a record that breaks the schema raises
    :class:`~explainers.bench.saved_runs.ReportError` naming the file, the benchmark and the field.
    """
    return merge(chart_runs(paths, all_runs=all_runs))
