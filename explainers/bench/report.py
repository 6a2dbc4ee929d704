"""Scaling report (figures and a Markdown table) from saved pytest-benchmark JSON.

Reads the JSON written by ``pytest perf --benchmark-autosave`` (``.benchmarks/<machine
id>/NNNN_*.json``) or ``--benchmark-json FILE``, validates the ``extra_info`` of every
benchmark against the "Benchmark records" contract of ARCHITECTURE.md and writes, with
matplotlib (Agg canvas, no display needed, pyplot never imported):

* ``time_vs_workers.png``: mean time to explain against workers, one line per batch size,
  one panel per backend (``pool``, ``serve-ray``, ``serve-default``, ``data``), error bars
  spanning the fastest to the slowest round, the serial baseline as a dashed line;
* ``speedup.png``: speedup (top row) and parallel efficiency (bottom row) against workers,
  with the ideal lines;
* ``summary.md``: one table row per configuration, with the figures linked;
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
import csv
import io
import json
import math
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

# Plain Figure objects, never pyplot: savefig renders them with the Agg canvas, no display is
# needed and the global matplotlib backend of the caller (e.g. a notebook) is left alone.
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

__all__ = [
    "ReportError",
    "ReportWarning",
    "Cluster",
    "Record",
    "ReportResult",
    "ReferenceRow",
    "load_results",
    "load_reference",
    "build_report",
    "write_report",
    "main",
]

BACKENDS = ("serial", "pool", "serve", "data")
SERVE_MODES = ("ray", "default")
#: Panels of the figures, in the study's order (serial is the baseline, not a panel).
PANELS = ("pool", "serve-ray", "serve-default", "data")
PANEL_TITLES = {
    "pool": "pool (actor pool)",
    "serve-ray": "serve, mode ray",
    "serve-default": "serve, mode default",
    "data": "data (Ray Data)",
}
_ORDER = {"serial": 0, **{p: i + 1 for i, p in enumerate(PANELS)}}
#: extra_info keys every benchmark of ours must carry (values may be null where noted).
REQUIRED_FIELDS = ("backend", "serve_mode", "workers", "batch_size", "n_instances", "nsamples")
#: extra_info keys that are read when present and derived from the stats when missing/null.
DERIVED_FIELDS = ("exact", "explanations_per_s", "speedup", "efficiency", "nodes_used")
STATS_FIELDS = ("min", "max", "mean", "stddev", "rounds")
DEFAULT_TITLE = "KernelSHAP scaling report"
DEFAULT_RESULTS = ".benchmarks"

# the reference study (see explainers/data/reference_results.csv)
REFERENCE_INSTANCES = 2560
REFERENCE_SETTINGS = ("pool", "serve", "k8s_pool", "k8s_serve_ray", "k8s_serve_default")
REFERENCE_LABELS = {
    "pool": "study pool, 1 node",
    "serve": "study serve, 1 node",
    "k8s_pool": "study pool, 2 nodes (k8s)",
    "k8s_serve_ray": "study serve ray, 2 nodes (k8s)",
    "k8s_serve_default": "study serve default, 2 nodes (k8s)",
}
REFERENCE_FOR_PANEL = {
    "pool": ("pool", "k8s_pool"),
    "serve-ray": ("serve", "k8s_serve_ray"),
    "serve-default": ("serve", "k8s_serve_default"),
    "data": (),
}

_BATCH_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_BATCH_MARKERS = ("o", "s", "^", "D", "v", "P")
_SETTING_STYLES = ("-", ":", "-.", (0, (5, 1)))


def _series(records: Sequence[Record], panel: str, setting: Any, batch: int | None) -> list[Record]:
    """The points of one line: a panel's records of one setting and batch size, by workers."""
    return sorted((r for r in records if r.panel == panel and r.setting == setting
                   and r.batch_size == batch), key=lambda r: r.workers)
_REF_STYLES = {
    "pool": ("0.35", "--"),
    "serve": ("0.35", "--"),
    "k8s_pool": ("0.55", ":"),
    "k8s_serve_ray": ("0.55", ":"),
    "k8s_serve_default": ("0.55", ":"),
}


class ReportError(ValueError):
    """A results file cannot be read or does not follow the benchmark-record contract."""


class ReportWarning(UserWarning):
    """Something was skipped or replaced while collecting results."""


# --------------------------------------------------------------------------- records


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
        return cls(
            address_mode=info.get("ray_address_mode"),
            nodes=info.get("ray_nodes"),
            cpus=info.get("ray_cpus"),
            ray_version=info.get("ray_version"),
            k8s_cluster=info.get("k8s_cluster"),
        )

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
    #: ``perf/test_backends.py`` on a local cluster: the share of the driver and Ray's own
    #: processes in the machine's CPU per call (``explainers.bench.machine_cpu``)
    overhead_cpu_share: float | None = None

    @property
    def panel(self) -> str:
        """``serial``, ``pool``, ``serve-ray``, ``serve-default`` or ``data``."""
        return f"serve-{self.serve_mode}" if self.backend == "serve" else self.backend

    @property
    def setting(self) -> tuple[str, int, int]:
        """What must agree for two records to share a figure line: cluster, instances, nsamples."""
        return (self.cluster.label(), self.n_instances, self.nsamples)

    @property
    def config(self) -> tuple[Any, ...]:
        """Identity of the configuration (a later run of the same one replaces it)."""
        return (self.setting, self.panel, self.workers, self.batch_size)

    def sort_key(self) -> tuple[Any, ...]:
        """The study's chart order: backend, serve mode, batch size, workers."""
        return (_ORDER[self.panel], self.batch_size or 0, self.workers or 0, self.name)


@dataclass
class _Run:
    source: str
    machine_id: str | None
    data: Mapping[str, Any]
    records: list[Record]

    @property
    def datetime(self) -> str:
        return str(self.data.get("datetime") or "")


def _where(source: str, name: str | None = None) -> str:
    return f"{source}: benchmark {name!r}" if name is not None else source


def _int_field(info: Mapping[str, Any], key: str, where: str, *, nullable: bool,
               minimum: int = 1) -> int | None:
    value = info[key]
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        allowed = ("a positive integer" if minimum == 1 else f"an integer >= {minimum}")
        allowed += " or null" if nullable else ""
        raise ReportError(f"{where}: extra_info field {key!r} is {value!r}; expected {allowed}")
    return value


def _float_or_none(info: Mapping[str, Any], key: str, where: str) -> float | None:
    value = info.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ReportError(f"{where}: extra_info field {key!r} is {value!r}; expected a number or null")
    return float(value)


def _parse_benchmark(bench: Any, index: int, source: str, run_dt: str, machine_id: str | None,
                     cluster: Cluster) -> Record | None:
    """Validate one entry of ``benchmarks``; ``None`` (with a warning) if it is not ours."""
    if not isinstance(bench, Mapping):
        raise ReportError(f"{source}: benchmarks[{index}] is {type(bench).__name__}, expected an object")
    name = str(bench.get("name") or bench.get("fullname") or f"benchmarks[{index}]")
    where = _where(source, name)
    info = bench.get("extra_info")
    if info is None:
        info = {}
    if not isinstance(info, Mapping):
        raise ReportError(f"{where}: extra_info is {type(info).__name__}, expected an object")
    if "baseline" in info and "backend" not in info:
        return None  # a reference row of perf/test_backends.py (plain processes, no Ray), not charted
    if "backend" not in info:
        warnings.warn(f"{where}: skipped, it has no extra_info 'backend' (not a "
                      "distributed-kernelshap benchmark)", ReportWarning, stacklevel=4)
        return None
    missing = [k for k in REQUIRED_FIELDS if k not in info]
    if missing:
        raise ReportError(f"{where}: extra_info field {missing[0]!r} is missing "
                          f"(missing: {', '.join(missing)}; required: {', '.join(REQUIRED_FIELDS)})")
    backend = info["backend"]
    if backend not in BACKENDS:
        raise ReportError(f"{where}: extra_info field 'backend' is {backend!r}; "
                          f"allowed: {', '.join(map(repr, BACKENDS))}")
    mode = info["serve_mode"]
    if backend == "serve" and mode not in SERVE_MODES:
        raise ReportError(f"{where}: extra_info field 'serve_mode' is {mode!r} for backend 'serve'; "
                          f"allowed: {', '.join(map(repr, SERVE_MODES))}")
    if backend != "serve" and mode is not None:
        raise ReportError(f"{where}: extra_info field 'serve_mode' is {mode!r}; it must be null "
                          f"for backend {backend!r}")
    serial = backend == "serial"
    workers = _int_field(info, "workers", where, nullable=serial, minimum=0 if serial else 1)
    batch = _int_field(info, "batch_size", where, nullable=serial)
    n_instances = _int_field(info, "n_instances", where, nullable=False)
    nsamples = _int_field(info, "nsamples", where, nullable=False)
    nodes = info.get("nodes_used")
    if nodes is not None:
        nodes = _int_field(info, "nodes_used", where, nullable=True)
    exact = info.get("exact")
    if exact is not None and not isinstance(exact, bool):
        raise ReportError(f"{where}: extra_info field 'exact' is {exact!r}; expected true, false or null")

    stats = bench.get("stats")
    if not isinstance(stats, Mapping):
        raise ReportError(f"{where}: 'stats' is missing (not a pytest-benchmark result?)")
    for key in STATS_FIELDS:
        value = stats.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ReportError(f"{where}: stats field {key!r} is {value!r}; expected a number")
    if stats["mean"] <= 0:
        raise ReportError(f"{where}: stats field 'mean' is {stats['mean']!r}; expected > 0 seconds")
    data = stats.get("data")
    data = tuple(float(x) for x in data) if isinstance(data, list) and data else None

    rate = _float_or_none(info, "explanations_per_s", where)
    return Record(
        source=source, run_datetime=run_dt, machine_id=machine_id,
        name=name, fullname=str(bench.get("fullname") or name),
        backend=backend, serve_mode=mode, workers=workers, batch_size=batch,
        n_instances=n_instances, nsamples=nsamples, exact=exact,
        mean=float(stats["mean"]), stddev=float(stats["stddev"]),
        min=float(stats["min"]), max=float(stats["max"]),
        median=float(stats["median"]) if isinstance(stats.get("median"), (int, float)) else None,
        rounds=int(stats["rounds"]), data=data,
        explanations_per_s=rate if rate is not None else n_instances / float(stats["mean"]),
        speedup=_float_or_none(info, "speedup", where),
        efficiency=_float_or_none(info, "efficiency", where),
        nodes_used=nodes, cluster=cluster,
        processes_speedup=_float_or_none(info, "processes_speedup", where),
        vs_processes=_float_or_none(info, "vs_processes", where),
        overhead_cpu_share=_float_or_none(info, "overhead_cpu_share", where),
    )


def _fill_speedups(records: list[Record]) -> list[Record]:
    """Derive missing speedup/efficiency from a serial record of the same run and setting."""
    serial = {r.setting: r.mean for r in records if r.backend == "serial"}
    out = []
    for r in records:
        base = serial.get(r.setting)
        if r.speedup is None and base is not None:
            r = replace(r, speedup=base / r.mean)
        if r.efficiency is None and r.speedup is not None and r.workers:
            r = replace(r, efficiency=r.speedup / r.workers)
        out.append(r)
    return out


def _parse_run(data: Any, source: str, machine_id: str | None = None) -> _Run:
    """Validate one pytest-benchmark output (a file's content or the in-memory dict)."""
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
    cluster = Cluster.from_machine_info(machine)
    run_dt = str(data.get("datetime") or "")
    records = []
    seen: dict[tuple[Any, ...], Record] = {}
    for i, bench in enumerate(benches):
        rec = _parse_benchmark(bench, i, source, run_dt, machine_id, cluster)
        if rec is None:
            continue
        if rec.config in seen:
            warnings.warn(f"{_where(source, rec.name)}: same configuration as "
                          f"{seen[rec.config].name!r}; the later one is used", ReportWarning, stacklevel=3)
            records.remove(seen[rec.config])
        seen[rec.config] = rec
        records.append(rec)
    return _Run(source, machine_id, data, _fill_speedups(records))


def _read_json(path: Path) -> Any:
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


def _runs_in_dir(directory: Path, all_runs: bool) -> list[_Run]:
    runs = []
    for path in sorted(directory.rglob("*.json")):
        if not path.is_file():
            continue
        rel = path.parent.relative_to(directory)
        machine_id = str(rel) if str(rel) != "." else None
        run = _parse_run(_read_json(path), str(path), machine_id)
        if run.records:
            runs.append(run)
    if all_runs:
        return runs
    newest: dict[tuple[Any, ...], _Run] = {}
    for run in runs:  # newest run per machine id and Ray cluster
        key = (run.machine_id, run.records[0].cluster.label())
        if key not in newest or (run.datetime, run.source) > (newest[key].datetime, newest[key].source):
            newest[key] = run
    return sorted(newest.values(), key=lambda r: (r.datetime, r.source))


def _collect_runs(paths: Iterable[str | Path | Mapping[str, Any]] | str | Path | Mapping[str, Any] | None,
                  all_runs: bool) -> list[_Run]:
    if paths is None:
        paths = [DEFAULT_RESULTS]
    elif isinstance(paths, (str, Path, Mapping)):
        paths = [paths]
    runs: list[_Run] = []
    for item in paths:
        if isinstance(item, Mapping):
            runs.append(_parse_run(item, "<session>"))
            continue
        path = Path(item)
        if path.is_dir():
            runs.extend(_runs_in_dir(path, all_runs))
        elif path.is_file():
            runs.append(_parse_run(_read_json(path), str(path)))
        else:
            raise ReportError(f"{path}: no such file or directory")
    return runs


def _merge(runs: list[_Run]) -> list[Record]:
    """All records, a configuration measured in several runs taken from the newest run."""
    chosen: dict[tuple[Any, ...], Record] = {}
    for run in sorted(runs, key=lambda r: r.datetime):
        for rec in run.records:
            old = chosen.get(rec.config)
            if old is not None and old.source != rec.source:
                warnings.warn(f"{rec.name}: measured in {old.source} and {rec.source}; "
                              "the newer run is used", ReportWarning, stacklevel=3)
            chosen[rec.config] = rec
    return sorted(chosen.values(), key=lambda r: (r.setting, r.sort_key()))


def load_results(paths: Iterable[str | Path | Mapping[str, Any]] | str | Path | Mapping[str, Any] | None = None,
                 *, all_runs: bool = False) -> list[Record]:
    """Read and validate benchmark results; one :class:`Record` per configuration.

    ``paths`` holds JSON files (always used), directories (searched recursively for
    ``*.json``; unless ``all_runs``, only the newest run per machine-id folder and Ray
    cluster is used, "newest" by the run's ``datetime``) and/or in-memory pytest-benchmark
    output dicts; default ``.benchmarks``. A configuration found in several runs is taken
    from the newest. Benchmarks without an ``extra_info['backend']`` are skipped with a
    :class:`ReportWarning`; anything else that breaks the contract raises :class:`ReportError`
    naming the file, the benchmark and the field. Records are sorted by setting, then
    backend, serve mode, batch size and workers.
    """
    return _merge(_collect_runs(paths, all_runs))


# --------------------------------------------------------------------------- reference


@dataclass(frozen=True)
class ReferenceRow:
    """One published number of the reference study: seconds for 2560 instances."""

    setting: str
    workers: int
    batch_size: int
    seconds: float


def load_reference(path: str | Path | None = None) -> list[ReferenceRow]:
    """The study's published times (packaged ``explainers/data/reference_results.csv`` by default)."""
    if path is None:
        text = resources.files("explainers").joinpath("data/reference_results.csv").read_text("utf-8")
        source = "explainers/data/reference_results.csv"
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = []
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        try:
            for key in row:
                if key.startswith("batch_"):
                    rows.append(ReferenceRow(row["setting"], int(row["workers"]),
                                             int(key.removeprefix("batch_")), float(row[key])))
        except (TypeError, ValueError) as exc:
            raise ReportError(f"{source}: bad row {row!r} ({exc})") from exc
    return rows


def _reference_serial(ref: Sequence[ReferenceRow]) -> float:
    return next(r.seconds for r in ref if r.setting == "serial")


def _reference_speedups(ref: Sequence[ReferenceRow], setting: str) -> list[tuple[int, float]]:
    """(workers, serial / time averaged over the batch sizes) for one study setting."""
    base = _reference_serial(ref)
    by_w: dict[int, list[float]] = {}
    for r in ref:
        if r.setting == setting:
            by_w.setdefault(r.workers, []).append(base / r.seconds)
    return [(w, sum(v) / len(v)) for w, v in sorted(by_w.items())]


# --------------------------------------------------------------------------- figures


def _ticks(values: Iterable[float], min_octaves: float = 0.45) -> list[float]:
    """Tick positions among ``values`` at least ``min_octaves`` apart (keeps the largest)."""
    vals = sorted(set(values))
    if not vals:
        return []
    keep = [vals[-1]]
    for v in reversed(vals[:-1]):
        if math.log2(keep[-1] / v) >= min_octaves:
            keep.append(v)
    return sorted(keep)


def _log2_axis(ax: Any, workers: Iterable[float]) -> None:
    ws = sorted(set(workers))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(_ticks(ws)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ws[0] / 1.35, ws[-1] * 1.35)
    ax.grid(True, which="major", alpha=0.3)


def _figure_legend(fig: Figure, axes: Sequence[Any], ncols: int = 6, title: str | None = None,
                   into: Any = None) -> None:
    """One legend for all panels (labels deduplicated): below the panels, or in axes ``into``."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    if into is not None:
        into.axis("off")
        into.legend(handles, labels, loc="center", title=title, frameon=False)
    else:
        # as many columns as fit the figure's width (about 11 characters per inch at 10 pt)
        fit = int(fig.get_figwidth() * 11 // (max(map(len, labels)) + 6))
        fig.legend(handles, labels, loc="outside lower center",
                   ncols=max(1, min(ncols, fit, len(labels))), frameon=False, title=title)


def _spread_note(records: Sequence[Record]) -> str:
    rounds = sorted({r.rounds for r in records})
    n = f"{rounds[0]} rounds" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]} rounds"
    return f"points: mean of {n}; error bars: fastest to slowest round"


def _batch_styles(records: Sequence[Record]) -> dict[int, tuple[str, str]]:
    batches = sorted({r.batch_size for r in records if r.batch_size is not None})
    return {b: (_BATCH_COLORS[i % len(_BATCH_COLORS)], _BATCH_MARKERS[i % len(_BATCH_MARKERS)])
            for i, b in enumerate(batches)}


def _setting_labels(settings: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], str]:
    """Label each setting by the parts that differ between the settings ('' if only one)."""
    if len(settings) < 2:
        return {s: "" for s in settings}
    varying = [i for i in range(3) if len({s[i] for s in settings}) > 1]
    fmt = (lambda v: v, lambda v: f"{v} instances", lambda v: f"nsamples {v}")
    return {s: ", ".join(fmt[i](s[i]) for i in varying) for s in settings}


def _describe(records: Sequence[Record]) -> str:
    """Title part naming instance count, nsamples and cluster(s) of the records."""
    inst = sorted({r.n_instances for r in records})
    ns = sorted({r.nsamples for r in records})
    clusters = sorted({r.cluster.label() for r in records})
    return (f"{' / '.join(map(str, inst))} instances, nsamples {' / '.join(map(str, ns))}; "
            f"{' / '.join(clusters)}")


def _grid(n: int) -> tuple[int, int]:
    return (2, 2) if n == 4 else (1, n)


def plot_time_vs_workers(records: Sequence[Record], *, title: str = DEFAULT_TITLE) -> Figure | None:
    """Time to explain against workers: one panel per backend, one line per batch size.

    Points are the mean over rounds, error bars span the fastest to the slowest round, the
    dashed line is the serial baseline. ``None`` if there is no non-serial record.
    """
    panels = [p for p in PANELS if any(r.panel == p for r in records)]
    if not panels:
        return None
    settings = sorted({r.setting for r in records})
    slabel = _setting_labels(settings)
    styles = _batch_styles(records)
    nrows, ncols = _grid(len(panels))
    fig = Figure(figsize=(5.2 * ncols, 3.9 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    all_workers = [r.workers for r in records if r.workers and r.panel != "serial"]
    top = max(max(r.max for r in records), max(r.mean for r in records)) * 1.06
    for ax, panel in zip(axes, panels):
        for si, setting in enumerate(settings):
            ls = _SETTING_STYLES[si % len(_SETTING_STYLES)]
            suffix = f" ({slabel[setting]})" if slabel[setting] else ""
            for batch, (color, marker) in styles.items():
                pts = _series(records, panel, setting, batch)
                if not pts:
                    continue
                x = [r.workers for r in pts]
                y = [r.mean for r in pts]
                err = [[r.mean - r.min for r in pts], [r.max - r.mean for r in pts]]
                ax.errorbar(x, y, yerr=err, color=color, marker=marker, linestyle=ls, capsize=3,
                            markersize=5, label=f"batch size {batch}{suffix}")
            for r in records:
                if r.panel == "serial" and r.setting == setting:
                    ax.axhline(r.mean, color="black", linestyle="--", linewidth=1.2,
                               alpha=1.0 - 0.35 * si, label=f"serial baseline, no Ray{suffix}")
        ax.set_title(PANEL_TITLES[panel])
        _log2_axis(ax, all_workers)
        ax.set_ylim(0, top)
        ax.set_xlabel("workers (log$_2$ scale)")
        ax.set_ylabel("time to explain (s)")
        ax.tick_params(labelleft=True)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: time to explain against workers\n{_describe(records)}")
    _figure_legend(fig, axes[: len(panels)],
                   title=_spread_note([r for r in records if r.panel != "serial"]))
    return fig


def plot_speedup(records: Sequence[Record], *, title: str = DEFAULT_TITLE) -> Figure | None:
    """Speedup (top row) and parallel efficiency (bottom row) against workers, ideal lines dashed.

    Speedup = serial mean / mean (serial baseline of the same session), efficiency =
    speedup / workers. ``None`` if no record has a speedup.
    """
    recs = [r for r in records if r.panel != "serial" and r.speedup is not None and r.workers]
    panels = [p for p in PANELS if any(r.panel == p for r in recs)]
    if not panels:
        return None
    settings = sorted({r.setting for r in recs})
    slabel = _setting_labels(settings)
    styles = _batch_styles(recs)
    workers = sorted({r.workers for r in recs})
    fig = Figure(figsize=(4.6 * len(panels), 7.6), layout="constrained")
    axes = fig.subplots(2, len(panels), sharey="row", squeeze=False)
    top = max(max(workers), max(r.speedup for r in recs))
    for col, panel in enumerate(panels):
        ax_s, ax_e = axes[0, col], axes[1, col]
        ax_s.plot(workers, workers, color="0.35", linestyle="--", linewidth=1.2, label="ideal")
        ax_e.axhline(1.0, color="0.35", linestyle="--", linewidth=1.2, label="ideal")
        for si, setting in enumerate(settings):
            ls = _SETTING_STYLES[si % len(_SETTING_STYLES)]
            suffix = f" ({slabel[setting]})" if slabel[setting] else ""
            for batch, (color, marker) in styles.items():
                pts = _series(recs, panel, setting, batch)
                if not pts:
                    continue
                x = [r.workers for r in pts]
                kw = dict(color=color, marker=marker, linestyle=ls, markersize=5,
                          label=f"batch size {batch}{suffix}")
                ax_s.plot(x, [r.speedup for r in pts], **kw)
                ax_e.plot(x, [r.efficiency if r.efficiency is not None else r.speedup / r.workers
                              for r in pts], **kw)
        ax_s.set_title(PANEL_TITLES[panel])
        for ax in (ax_s, ax_e):
            _log2_axis(ax, workers)
            ax.set_xlabel("workers (log$_2$ scale)")
            ax.tick_params(labelleft=True)
        ax_s.set_ylim(0, top * 1.1)
        ax_e.set_ylim(0, max(1.15, max(r.efficiency or 0 for r in recs) * 1.1))
        ax_s.set_ylabel("speedup (serial time / time)")
        ax_e.set_ylabel("parallel efficiency\n(speedup / workers)")
    fig.suptitle(f"{title}: speedup and parallel efficiency against workers\n{_describe(recs)}")
    _figure_legend(fig, list(axes.ravel()))
    return fig


def plot_reference(ref: Sequence[ReferenceRow]) -> Figure:
    """The study's published times (2560 instances): one panel per study setting."""
    layout = [["pool", "serve", None], ["k8s_pool", "k8s_serve_ray", "k8s_serve_default"]]
    fig = Figure(figsize=(14, 8), layout="constrained")
    axes = fig.subplots(2, 3, sharey=True)
    batches = sorted({r.batch_size for r in ref})
    serial = _reference_serial(ref)
    top = max(r.seconds for r in ref) * 1.05
    for row, names in enumerate(layout):
        for col, setting in enumerate(names):
            ax = axes[row, col]
            if setting is None:
                continue
            rows = [r for r in ref if r.setting == setting]
            for i, batch in enumerate(batches):
                pts = sorted((r for r in rows if r.batch_size == batch), key=lambda r: r.workers)
                ax.plot([r.workers for r in pts], [r.seconds for r in pts],
                        color=_BATCH_COLORS[i], marker=_BATCH_MARKERS[i], markersize=4,
                        label=f"batch size {batch}")
            ax.axhline(serial, color="black", linestyle="--", linewidth=1.2,
                       label=f"serial baseline ({serial:.0f} s)")
            _log2_axis(ax, [r.workers for r in rows])
            ax.set_ylim(0, top)
            ax.set_title(REFERENCE_LABELS[setting].removeprefix("study "))
            ax.set_xlabel("workers (log$_2$ scale)")
            ax.set_ylabel("time to explain (s)")
            ax.tick_params(labelleft=True)
    fig.suptitle(f"Reference study (published): time to explain {REFERENCE_INSTANCES} Adult instances\n"
                 "one node = one 32-vCPU machine; 2 nodes = two on Kubernetes (56 usable vCPUs); "
                 "values read off the study's charts (mean + 1 sd)")
    _figure_legend(fig, [axes[0, 0]], into=axes[0, 2], title="the study's published times")
    return fig


def plot_speedup_vs_reference(records: Sequence[Record], ref: Sequence[ReferenceRow], *,
                              title: str = DEFAULT_TITLE) -> Figure | None:
    """Our speedups (coloured, per batch size) beside the study's (grey, mean over batch sizes)."""
    recs = [r for r in records if r.panel != "serial" and r.speedup is not None and r.workers]
    panels = [p for p in PANELS if any(r.panel == p for r in recs)]
    if not panels:
        return None
    styles = _batch_styles(recs)
    settings = sorted({r.setting for r in recs})
    slabel = _setting_labels(settings)
    fig = Figure(figsize=(4.6 * len(panels), 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ref_workers = sorted({r.workers for r in ref})
    workers = sorted({r.workers for r in recs} | set(ref_workers))
    speedups = [r.speedup for r in recs] + [s for st in REFERENCE_SETTINGS
                                            for _, s in _reference_speedups(ref, st)]
    lo = 2.0 ** math.floor(math.log2(min(min(speedups), 1.0)))
    hi = 2.0 ** math.ceil(math.log2(max(max(speedups), max(workers))))
    for ax, panel in zip(axes, panels):
        for si, setting in enumerate(settings):
            suffix = f" ({slabel[setting]})" if slabel[setting] else ""
            for batch, (color, marker) in styles.items():
                pts = _series(recs, panel, setting, batch)
                if pts:
                    ax.plot([r.workers for r in pts], [r.speedup for r in pts], color=color,
                            marker=marker, markersize=5, zorder=3,
                            linestyle=_SETTING_STYLES[si % len(_SETTING_STYLES)],
                            label=f"this run, batch size {batch}{suffix}")
        ax.plot(workers, workers, color="0.35", linestyle="-", linewidth=0.8, alpha=0.6, label="ideal")
        for setting in REFERENCE_FOR_PANEL[panel]:
            color, ls = _REF_STYLES[setting]
            pts = _reference_speedups(ref, setting)
            ax.plot([w for w, _ in pts], [s for _, s in pts], color=color, linestyle=ls,
                    marker=".", label=REFERENCE_LABELS[setting])
        if not REFERENCE_FOR_PANEL[panel]:
            ax.text(0.04, 0.96, "no counterpart in the study", transform=ax.transAxes,
                    va="top", fontsize=9, color="0.3")
        ax.set_title(PANEL_TITLES[panel])
        _log2_axis(ax, workers)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(FixedLocator(
            [2.0 ** k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(lo / 1.2, hi * 1.2)
        ax.set_xlabel("workers (log$_2$ scale)")
        ax.set_ylabel("speedup (serial time / time, log$_2$ scale)")
        ax.tick_params(labelleft=True)
    fig.suptitle(f"{title}: speedup, this run ({_describe(recs)}) vs the reference study "
                 f"({REFERENCE_INSTANCES} instances, mean over batch sizes 1/5/10)\n"
                 "compare the shapes, not absolute values: machines and instance counts differ")
    _figure_legend(fig, list(axes), ncols=4)
    return fig


# --------------------------------------------------------------------------- markdown

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
#: shown when a table's records accounted the machine's CPU per call (``explainers.bench.machine_cpu``)
OVERHEAD_COLUMN = "driver + Ray CPU share"


def _table(records: Sequence[Record]) -> list[str]:
    ceiling = any(r.vs_processes is not None for r in records)
    overhead = any(r.overhead_cpu_share is not None for r in records)
    columns = TABLE_COLUMNS + (CEILING_COLUMNS if ceiling else ()) + ((OVERHEAD_COLUMN,) if overhead else ())
    right = {c for c in columns if c not in ("backend", "serve mode")}
    lines = ["| " + " | ".join(columns) + " |",
             "|" + "|".join("---:" if c in right else "---" for c in columns) + "|"]
    for r in sorted(records, key=Record.sort_key):
        cells = (r.backend, _fmt(r.serve_mode), _fmt(r.workers), _fmt(r.batch_size), str(r.n_instances),
                 str(r.nsamples), str(r.rounds), _fmt_s(r.mean), _fmt_s(r.stddev), _fmt_s(r.min),
                 _fmt_s(r.max), f"{r.explanations_per_s:.4g}", _fmt(r.speedup, ".3f"),
                 _fmt(r.efficiency, ".3f"), _fmt(r.nodes_used))
        if ceiling:
            cells += (_fmt(r.processes_speedup, ".3f"), _fmt(r.vs_processes, ".0%"))
        if overhead:
            cells += (_fmt(r.overhead_cpu_share, ".1%"),)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _run_line(run: _Run) -> str:
    m = run.data.get("machine_info") or {}
    c = run.data.get("commit_info") or {}
    cluster = Cluster.from_machine_info(m)
    cpu = (m.get("cpu") or {}).get("brand_raw") if isinstance(m.get("cpu"), Mapping) else None
    parts = [f"`{run.source}`", f"run {run.datetime or '?'}",
             f"pytest-benchmark {run.data.get('version', '?')}",
             f"Python {m.get('python_version', '?')} on {m.get('system', '?')} {m.get('machine', '')}".rstrip()]
    if cpu:
        parts.append(cpu)
    parts.append(f"Ray {cluster.ray_version or '?'} ({cluster.label()})")
    if c.get("id") and c.get("id") != "unversioned":
        parts.append(f"commit {str(c['id'])[:10]}" + (" (dirty)" if c.get("dirty") else ""))
    return "- " + ", ".join(parts)


def render_markdown(records: Sequence[Record], runs: Sequence[_Run], figures: Sequence[str], *,
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
    for setting in sorted({r.setting for r in records}):
        cluster, n, ns = setting
        out += [f"## {cluster}; {n} instances, nsamples {ns}", ""]
        out += _table([r for r in records if r.setting == setting])
        out.append("")
    if figures:
        out += ["## Figures", ""]
        out += [f"![{name}]({name})" for name in figures]
        out.append("")
    if reference:
        base = _reference_serial(reference)
        ws = sorted({r.workers for r in reference if r.setting != "serial"})
        out += ["## Reference study (published)", "",
                f"Speedup = serial time ({base:.2f} s for {REFERENCE_INSTANCES} instances) / time, "
                "mean over batch sizes 1, 5 and 10; times read off the study's charts.", "",
                "| setting | " + " | ".join(f"{w} w" for w in ws) + " |",
                "|---|" + "---:|" * len(ws)]
        for setting in REFERENCE_SETTINGS:
            sp = dict(_reference_speedups(reference, setting))
            out.append(f"| {REFERENCE_LABELS[setting].removeprefix('study ')} | "
                       + " | ".join(_fmt(sp.get(w), ".2f") for w in ws) + " |")
        out.append("")
    return "\n".join(out)


# --------------------------------------------------------------------------- report


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


def _build(runs: list[_Run], out_dir: str | Path, *, reference: bool, title: str,
           where: str) -> ReportResult:
    records = _merge(runs)
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
    markdown = render_markdown(records, runs, [p.name for p in files.values()], title=title,
                               reference=ref)
    files["summary"] = out / "summary.md"
    files["summary"].write_text(markdown, encoding="utf-8")
    return ReportResult(out, files, figs, records, markdown)


def build_report(paths: Iterable[str | Path | Mapping[str, Any]] | str | Path | Mapping[str, Any] | None,
                 out_dir: str | Path, *, reference: bool = False, all_runs: bool = False,
                 title: str = DEFAULT_TITLE) -> ReportResult:
    """Read results (see :func:`load_results` for ``paths``/``all_runs``) and write the report.

    Writes ``time_vs_workers.png``, ``speedup.png`` (when speedups exist), ``summary.md`` and,
    with ``reference``, ``reference.png`` and ``speedup_vs_reference.png`` into ``out_dir``
    (created if needed). Raises :class:`ReportError` on invalid input or no results.
    """
    where = "the given results" if paths is not None else DEFAULT_RESULTS
    return _build(_collect_runs(paths, all_runs), out_dir, reference=reference, title=title,
                  where=where)


def write_report(session: Mapping[str, Any] | str | Path, out_dir: str | Path, *,
                 reference: bool = False, title: str = DEFAULT_TITLE) -> ReportResult:
    """Report of one session: pytest-benchmark's in-memory ``output_json`` dict or a JSON path.

    Meant for the pytest plugin (e.g. from ``pytest_benchmark_update_json``, after the
    speedups were filled in).
    """
    if isinstance(session, Mapping):
        runs = [_parse_run(session, "<session>")]
    else:
        runs = [_parse_run(_read_json(Path(session)), str(session))]
    return _build(runs, out_dir, reference=reference, title=title, where=runs[0].source)


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
               "without extra_info 'backend' are skipped with a warning; other contract violations "
               "are errors (exit status 1). Output: time_vs_workers.png, speedup.png, summary.md "
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
