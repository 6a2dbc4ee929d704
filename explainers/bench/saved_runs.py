"""Saved pytest-benchmark runs: the files, each benchmark's stats and record, machine and commit.

Reads the JSON written by ``pytest perf --benchmark-autosave`` (``.benchmarks/<machine
id>/NNNN_*.json``) or ``--benchmark-json FILE``, or pytest-benchmark's in-memory
``output_json``. Every benchmark of a suite of ``perf/`` is parsed with
:meth:`explainers.bench.records.BenchmarkRecord.from_extra_info`; other benchmarks are skipped
with a :class:`ReportWarning`. A record without a speedup gets it from the run's serial
benchmark of the same work, as the plugin does when it saves a run
(:func:`explainers.bench.records.fill_speedups`). Both the report and the history read runs
through :func:`collect_runs`.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from explainers.bench.records import BenchmarkRecord, RecordError, infer_suite, missing_speedups

__all__ = ["DEFAULT_RESULTS", "STATS_FIELDS", "ReportError", "ReportWarning", "Cluster", "RunStats",
           "SavedBenchmark", "SavedRun", "Results", "where_of", "read_json", "parse_run", "runs_in_dir",
           "result_items", "collect_runs"]

DEFAULT_RESULTS = ".benchmarks"
#: pytest-benchmark's stats every benchmark must have, as numbers
STATS_FIELDS = ("min", "max", "mean", "stddev", "rounds")

#: what :func:`collect_runs` takes: files, directories, in-memory outputs, one or several
Results = Iterable[str | Path | Mapping[str, Any]] | str | Path | Mapping[str, Any] | None


class ReportError(ValueError):
    """A results file cannot be read, or a benchmark in it breaks the record schema."""


class ReportWarning(UserWarning):
    """Something was skipped or replaced while collecting results."""


@dataclass(frozen=True)
class Cluster:
    """The Ray cluster a run used (from the run's ``machine_info``; fields may be unknown)."""

    address_mode: str | None = None
    nodes: int | None = None
    cpus: float | None = None
    ray_version: str | None = None
    k8s_cluster: str | None = None

    @classmethod
    def from_machine_info(cls, info: Mapping[str, Any]) -> Cluster:
        """Read the ``ray_*`` keys the project's plugin adds to pytest-benchmark's machine info."""
        return cls(address_mode=info.get("ray_address_mode"), nodes=info.get("ray_nodes"),
                   cpus=info.get("ray_cpus"), ray_version=info.get("ray_version"),
                   k8s_cluster=info.get("k8s_cluster"))

    def label(self) -> str:
        """Short description, e.g. ``"local, 1 node, 2 CPUs"``."""
        parts = [self.address_mode or "cluster ?"]
        if self.k8s_cluster:
            parts[0] = f"{parts[0]} ({self.k8s_cluster})"
        if self.nodes is not None:
            parts.append(f"{self.nodes} node" + ("" if self.nodes == 1 else "s"))
        if self.cpus is not None:
            parts.append(f"{self.cpus:g} CPUs")
        return ", ".join(parts)


@dataclass(frozen=True)
class RunStats:
    """pytest-benchmark's stats of one benchmark, seconds per round. ``data``: every timed round
    in order (saved with ``--benchmark-save-data`` or ``--benchmark-json``), else None."""

    min: float
    max: float
    mean: float
    stddev: float
    rounds: int
    median: float | None = None
    data: tuple[float, ...] | None = None

    @classmethod
    def from_stats(cls, stats: Any, where: str) -> RunStats:
        """Check a benchmark's ``stats``; raises :class:`ReportError` naming ``where`` and the field."""
        if not isinstance(stats, Mapping):
            raise ReportError(f"{where}: 'stats' is missing (not a pytest-benchmark result?)")
        for key in STATS_FIELDS:
            value = stats.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ReportError(f"{where}: stats field {key!r} is {value!r}; expected a number")
        if stats["mean"] <= 0:
            raise ReportError(f"{where}: stats field 'mean' is {stats['mean']!r}; expected > 0 seconds")
        median, data = stats.get("median"), stats.get("data")
        return cls(min=float(stats["min"]), max=float(stats["max"]), mean=float(stats["mean"]),
                   stddev=float(stats["stddev"]), rounds=int(stats["rounds"]),
                   median=float(median) if isinstance(median, (int, float)) else None,
                   data=tuple(float(x) for x in data) if isinstance(data, list) and data else None)


@dataclass(frozen=True)
class SavedBenchmark:
    """One benchmark of a saved run: its names, stats and record."""

    name: str
    fullname: str
    group: str | None
    stats: RunStats
    record: BenchmarkRecord


@dataclass(frozen=True)
class SavedRun:
    """One saved run: where it came from, its raw JSON and its benchmarks of ``perf/``."""

    source: str
    machine_id: str | None
    data: Mapping[str, Any]
    benchmarks: tuple[SavedBenchmark, ...]

    @property
    def datetime(self) -> str:
        """When pytest-benchmark saved it (ISO 8601), or ''."""
        return str(self.data.get("datetime") or "")

    @property
    def version(self) -> str:
        """The pytest-benchmark version that wrote it, or '?'."""
        return str(self.data.get("version") or "?")

    @property
    def machine_info(self) -> Mapping[str, Any]:
        return self.data.get("machine_info") or {}

    @property
    def commit_info(self) -> Mapping[str, Any]:
        return self.data.get("commit_info") or {}

    @property
    def cluster(self) -> Cluster:
        return Cluster.from_machine_info(self.machine_info)

    @property
    def cpu(self) -> str | None:
        """The CPU's brand (py-cpuinfo's ``brand_raw``), if recorded."""
        cpu = self.machine_info.get("cpu")
        return cpu.get("brand_raw") if isinstance(cpu, Mapping) else None

    @property
    def commit(self) -> str | None:
        """The commit id, None if unknown or ``unversioned``."""
        commit = self.commit_info.get("id")
        return str(commit) if commit and commit != "unversioned" else None

    @property
    def number(self) -> str:
        """The autosave counter (``0013`` of ``0013_<commit>_<date>.json``), else the file's stem."""
        name = Path(self.source).name
        counter = re.match(r"(\d+)_", name)
        return counter.group(1) if counter else Path(self.source).stem


def where_of(source: str, name: str | None = None) -> str:
    """``"<file>: benchmark '<name>'"``, the prefix of every message about a benchmark."""
    return f"{source}: benchmark {name!r}" if name is not None else source


def _parse_benchmark(bench: Any, index: int, source: str) -> SavedBenchmark | None:
    if not isinstance(bench, Mapping):
        raise ReportError(f"{source}: benchmarks[{index}] is {type(bench).__name__}, expected an object")
    name = str(bench.get("name") or bench.get("fullname") or f"benchmarks[{index}]")
    fullname = str(bench.get("fullname") or name)
    where = where_of(source, name)
    info = bench.get("extra_info")
    info = {} if info is None else info
    if not (isinstance(info, Mapping) and info.get("suite") is not None) and infer_suite(fullname) is None:
        warnings.warn(f"{where}: skipped, it is not a benchmark of perf/ (its fullname {fullname!r} names "
                      "no suite and its extra_info has no 'suite')", ReportWarning, stacklevel=4)
        return None
    try:
        record = BenchmarkRecord.from_extra_info(info, fullname=fullname, where=where)
    except RecordError as exc:
        raise ReportError(str(exc)) from exc
    stats = RunStats.from_stats(bench.get("stats"), where)
    group = bench.get("group")
    return SavedBenchmark(name=name, fullname=fullname, group=str(group) if group is not None else None,
                          stats=stats, record=record)


def parse_run(data: Any, source: str, machine_id: str | None = None) -> SavedRun:
    """Check one pytest-benchmark output (a file's content or the in-memory dict) and parse it."""
    if not isinstance(data, Mapping):
        raise ReportError(f"{source}: top level is {type(data).__name__}, expected a pytest-benchmark "
                          "JSON object with 'machine_info' and 'benchmarks'")
    if "benchmarks" not in data:
        raise ReportError(f"{source}: no 'benchmarks' list (not a pytest-benchmark results file?)")
    benches = data["benchmarks"]
    if not isinstance(benches, list):
        raise ReportError(f"{source}: 'benchmarks' is {type(benches).__name__}, expected a list")
    machine = data.get("machine_info") or {}
    if not isinstance(machine, Mapping):
        raise ReportError(f"{source}: 'machine_info' is {type(machine).__name__}, expected an object")
    parsed = [b for b in (_parse_benchmark(bench, i, source) for i, bench in enumerate(benches)) if b is not None]
    filled = missing_speedups([(b.record.to_extra_info(), b.stats.mean) for b in parsed])
    for i, speedup in filled.items():
        parsed[i] = replace(parsed[i], record=replace(parsed[i].record, speedup=speedup))
    return SavedRun(source=source, machine_id=machine_id, data=data, benchmarks=tuple(parsed))


def read_json(path: Path) -> Any:
    """The JSON in ``path``; raises :class:`ReportError` saying why it cannot be read."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ReportError(f"{path}: not a JSON file (not UTF-8 text: {exc.reason})") from exc
    except OSError as exc:
        raise ReportError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not a JSON file ({exc.msg} at line {exc.lineno}, "
                          f"column {exc.colno})") from exc


def runs_in_dir(directory: Path) -> list[SavedRun]:
    """Every ``*.json`` under ``directory`` (recursively), by path; the machine id is the folder
    relative to ``directory`` (``Linux-CPython-3.11-64bit``), None for files directly in it."""
    runs = []
    for path in sorted(directory.rglob("*.json")):
        if path.is_file():
            rel = str(path.parent.relative_to(directory))
            runs.append(parse_run(read_json(path), str(path), rel if rel != "." else None))
    return runs


def result_items(paths: Results = None) -> list[str | Path | Mapping[str, Any]]:
    """``paths`` as a list (one path or output becomes a list of one); None: :data:`DEFAULT_RESULTS`."""
    if paths is None:
        return [DEFAULT_RESULTS]
    if isinstance(paths, (str, Path, Mapping)):
        return [paths]
    return list(paths)


def collect_runs(paths: Results = None) -> list[SavedRun]:
    """The runs in ``paths``: JSON files, directories (:func:`runs_in_dir`) and/or in-memory
    outputs (source ``<session>``); default :data:`DEFAULT_RESULTS`. Raises :class:`ReportError`."""
    runs: list[SavedRun] = []
    for item in result_items(paths):
        if isinstance(item, Mapping):
            runs.append(parse_run(item, "<session>"))
            continue
        path = Path(item)
        if path.is_dir():
            runs.extend(runs_in_dir(path))
        elif path.is_file():
            runs.append(parse_run(read_json(path), str(path)))
        else:
            raise ReportError(f"{path}: no such file or directory")
    return runs
