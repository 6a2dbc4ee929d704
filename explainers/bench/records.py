"""The benchmark record: the ``extra_info`` of every benchmark in ``perf/``, defined once.

Writers build a :class:`BenchmarkRecord` and save ``record.to_extra_info()``; readers (the
report, the history, the plugin's gates) parse ``extra_info`` with
:meth:`BenchmarkRecord.from_extra_info`, which checks every value and raises a
:class:`RecordError` naming the file, the benchmark and the field. Field names are those the
suites have always written, so old and new saved runs read alike; runs saved before the
``suite`` and ``workload`` fields existed get the suite from the benchmark's fullname and the
workload ``"adult"``.

Derived fields (``explanations_per_s``, ``speedup``, ``efficiency``, ...) are filled on
construction wherever their inputs are fields of the record and they were not given.
:data:`FIELDS` is the machine-readable table of every field (:func:`field_table_markdown`
renders it). :func:`fill_speedups` fills the speedups a session's tests could not compute
(no serial baseline before them); :func:`gate_failures` gives the CI gates' messages.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from explainers.bench.grid import PROCESSES, SERIAL
from explainers.bench.machine_cpu import ROLES
from explainers.kernelshap.backends import BACKENDS, SERVE_MODES
from explainers.kernelshap.chunking import ROW_STRATEGIES

__all__ = [
    "SUITES", "RECORD_BACKENDS", "BASELINES", "ENGINE_MODES", "ENGINE_ROLES", "FLOOR_ROWS",
    "LEGACY_WORKLOAD", "RecordError", "FieldSpec", "BenchmarkRecord", "FIELDS", "FIELD_NAMES",
    "infer_suite", "field_table_markdown", "missing_speedups", "fill_speedups", "gate_failures",
]

#: the suites of ``perf/``: test_scaling.py, test_backends.py, test_engine_speed.py, test_mission.py
SUITES = ("scaling", "backends", "engine", "mission")
#: a record's ``backend``: the serial engine or one of the library's backends
RECORD_BACKENDS = (SERIAL, *BACKENDS)
#: a record's ``baseline`` (``perf/test_backends.py``'s plain processes, no Ray; no ``backend``)
BASELINES = (PROCESSES,)
#: ``perf/test_engine_speed.py``: the engine's two modes (sampled coalitions, all of them)
ENGINE_MODES = ("sampled", "exact")
#: ``perf/test_engine_speed.py``: what a benchmark times (the model alone on all synthetic rows, on
#: each coalition's distinct ones, or on each instance's distinct ones; shap's KernelExplainer, the
#: engine, the engine reusing coalitions)
ENGINE_ROLES = ("floor", "floor-distinct", "floor-shared", "shap", "engine", "engine-reuse")
FLOOR_ROLES = ("floor", "floor-distinct", "floor-shared")
#: the floors' synthetic rows: all of them, each coalition's distinct ones, each instance's distinct ones
FLOOR_ROWS = ("all", "distinct", "shared")
#: the workload of every run saved before records named theirs
LEGACY_WORKLOAD = "adult"

#: the suite of a benchmark without ``suite``: by its module, else by its test function
SUITE_OF_MODULE = {"test_scaling.py": "scaling", "test_backends.py": "backends",
                   "test_engine_speed.py": "engine", "test_mission.py": "mission"}
SUITE_OF_TEST = {"test_scaling": "scaling", "test_backend": "backends", "test_floor": "engine",
                 "test_shap": "engine", "test_engine": "engine", "test_exact_all_instances": "mission"}
#: the time that ``explanations_per_s``, ``ms_per_instance`` and ``speedup`` divide by, per suite
TIME_BASIS = {"scaling": "mean_seconds", "backends": "seconds", "engine": "mean_seconds",
              "mission": "mean_seconds"}
#: written as null when unset in a record with a backend (the contract of the report's tables)
CORE_FIELDS = ("serve_mode", "workers", "batch_size", "n_instances", "nsamples", "exact",
               "explanations_per_s", "speedup", "efficiency", "nodes_used")

_KIND_TYPES = {"str": "str", "int": "int", "float": "float", "bool": "bool", "floats": "list[float]",
               "cpu": "{" + ", ".join(ROLES) + "}: float"}


class RecordError(ValueError):
    """An ``extra_info`` value breaks the record schema. ``field`` names the field (None for the
    record as a whole), ``where`` the file and benchmark (empty when not known)."""

    def __init__(self, field: str | None, problem: str, where: str = "") -> None:
        self.field, self.problem, self.where = field, problem, where
        what = problem if field is None else f"extra_info field {field!r} {problem}"
        super().__init__(f"{where}: {what}" if where else what)

    def at(self, where: str) -> RecordError:
        """The same error, located at ``where`` (kept if it already has a place)."""
        return self if self.where or not where else RecordError(self.field, self.problem, where)


@dataclass(frozen=True)
class FieldSpec:
    """One row of the field table. ``required`` says where the field must be set ('' = never)."""

    name: str
    type: str
    optional: bool
    derived: bool
    meaning: str
    required: str = ""
    derived_from: str = ""


def _f(kind: str, meaning: str, *, required: str = "", derived_from: str = "", minimum: int | None = None,
       allowed: Sequence[str] | None = None, default: bool = True) -> Any:
    meta = {"kind": kind, "meaning": meaning, "required": required, "derived_from": derived_from,
            "minimum": minimum, "allowed": tuple(allowed) if allowed is not None else None}
    return dataclasses.field(metadata=meta) if not default else dataclasses.field(default=None, metadata=meta)


_OTHER_BENCHMARKS = "other benchmarks of the run (by the writer)"
_PAIRED_ROUNDS = "rounds of other work, each run right before one of this benchmark's (by the writer)"


@dataclass(frozen=True, kw_only=True)
class BenchmarkRecord:
    """The ``extra_info`` of one benchmark. Times are seconds for the whole request of
    ``n_instances`` instances; CPU times are CPU-seconds per call. See :data:`FIELDS`."""

    # what was measured
    suite: str = _f("str", "the suite: scaling, backends, engine or mission", allowed=SUITES,
                    required="always (old runs: from the fullname)", default=False)
    workload: str = _f("str", "the workload's name", required="always (old runs: adult)", default=False)
    backend: str | None = _f("str", "serial, pool, serve or data", allowed=RECORD_BACKENDS,
                             required="scaling, mission; backends unless baseline")
    baseline: str | None = _f("str", "processes: perf/test_backends.py's plain processes (no Ray), "
                              "a row without backend", allowed=BASELINES)
    serve_mode: str | None = _f("str", "ray or default for backend serve, else null", required="backend serve")
    workers: int | None = _f("int", "workers (actors, replicas, processes)", minimum=1,
                             required="a backend other than serial, or a baseline")
    batch_size: int | None = _f("int", "instances per minibatch (null for serial)", minimum=1,
                                required="a backend other than serial, or a baseline")
    n_instances: int = _f("int", "instances explained per call", minimum=1, required="always", default=False)
    nsamples: int | None = _f("int", "coalitions per instance", minimum=1, required="a backend or a baseline")
    exact: bool | None = _f("bool", "every coalition evaluated (exact Shapley values)")
    nodes_used: int | None = _f("int", "Ray nodes that ran the workers", minimum=1)
    # perf/test_engine_speed.py
    mode: str | None = _f("str", "engine: sampled or exact", allowed=ENGINE_MODES, required="engine")
    engine_role: str | None = _f("str", "engine: floor, floor-distinct, shap, engine or engine-reuse",
                                 allowed=ENGINE_ROLES, required="engine (old runs: from the fullname)")
    floor_rows: str | None = _f("str", "engine floors: all synthetic rows or the distinct ones",
                                allowed=FLOOR_ROWS)
    rows_per_instance: int | None = _f("int", "engine floors: synthetic rows per instance", minimum=1)
    reuse_coalitions: bool | None = _f("bool", "engine, mission, scaling, backends: coalition values reused across instances")
    peak_memory_mb: float | None = _f("float", "engine: peak traced memory of one explain, MiB")
    chunk_rows: int | None = _f("int", "engine, mission: the chunk size chosen on this CPU", minimum=1)
    row_strategy: str | None = _f("str", "engine, mission, backends: shared, distinct or dense rows", allowed=ROW_STRATEGIES)
    chunk_calibration_s: float | None = _f("float", "engine: seconds the chunk choice took")
    cpu_kernel: str | None = _f("str", "engine, mission: the CPU kernel the engine was built on")
    naive_rows: int | None = _f("int", "engine, mission, backends: synthetic rows of all the instances, coalitions x background", minimum=1)
    distinct_rows: int | None = _f("int", "engine: each coalition's distinct synthetic rows, summed over the instances", minimum=0)
    shared_rows: int | None = _f("int", "engine: each instance's distinct synthetic rows (its coalitions share them), "
                                 "summed over the instances", minimum=0)
    distinct_rows_per_naive: float | None = _f("float", "engine: distinct / naive rows",
                                               derived_from="distinct_rows / naive_rows")
    model_rows_per_naive: float | None = _f(
        "float", "engine, mission, backends: rows the model evaluated (by the workers, counted there) / naive rows",
        derived_from="(shared_rows, distinct_rows or naive_rows, by row_strategy) / naive_rows "
                     "x (1 - reuse_hit_rate with reuse, where not counted)")
    reuse_hit_rate: float | None = _f("float", "engine, mission, backends, reuse: share of coalition values found in the cache (the workers' caches summed)")
    reuse_cache_mb: float | None = _f("float", "engine, mission, backends, reuse: the cache's size, MiB (the workers' caches summed)")
    ratio_to_default_engine: float | None = _f(
        "float", "engine, reuse: time / the default engine's, median of paired rounds; mission, reuse: "
        "time / the default engine's benchmark", derived_from=f"engine: {_PAIRED_ROUNDS}; mission: {_OTHER_BENCHMARKS}")
    speedup_vs_shap: float | None = _f("float", "engine: shap's time / the engine's, median of paired rounds",
                                       derived_from=_PAIRED_ROUNDS)
    ratio_to_floor: float | None = _f("float", "engine: time / the floor's (all rows), median of paired rounds",
                                      derived_from=_PAIRED_ROUNDS)
    ratio_to_distinct_floor: float | None = _f(
        "float", "engine: time / the floor's (distinct rows), median of paired rounds", derived_from=_PAIRED_ROUNDS)
    ratio_to_shared_floor: float | None = _f(
        "float", "engine: time / the floor's (each instance's distinct rows), median of paired rounds",
        derived_from=_PAIRED_ROUNDS)
    # times
    seconds: float | None = _f("float", "the fastest timed round (pytest-benchmark's min)")
    mean_seconds: float | None = _f("float", "the mean timed round (pytest-benchmark's mean)")
    startup_seconds: float | None = _f("float", "starting the workers, before the clock")
    serial_seconds: float | None = _f("float", "the serial time the speedup divides: scaling the mean, "
                                      "backends the fastest of the paired serial rounds")
    serial_rounds: tuple[float, ...] | None = _f(
        "floats", "serial rounds run right before each round (backends: the warm-up's first); "
                  "the last len(stats.data) pair with the timed rounds")
    processes_seconds: float | None = _f("float", "backends, local cluster: fastest plain-process round "
                                         "paired with this record's rounds")
    processes_rounds: tuple[float, ...] | None = _f("floats", "backends: those plain-process rounds")
    driver_cpu_seconds: float | None = _f("float", "backends: this process's CPU per call (fastest)")
    machine_cpu_seconds: dict[str, float] | None = _f(
        "cpu", "local cluster: the machine's CPU per call by role, median of the timed rounds")
    in_cluster_seconds: tuple[float, ...] | None = _f("floats", "scaling in a cluster: each call's time "
                                                      "measured by the in-cluster driver")
    max_abs_diff_vs_serial: float | None = _f("float", "backends: largest difference from serial's values")
    # derived
    explanations_per_s: float | None = _f("float", "instances explained per second",
                                          derived_from="n_instances / seconds (backends) or mean_seconds")
    ms_per_instance: float | None = _f("float", "milliseconds per instance",
                                       derived_from="1000 x seconds (backends) or mean_seconds / n_instances")
    speedup: float | None = _f("float", "serial time / time (1 for serial)",
                               derived_from="serial_seconds / seconds (backends) or mean_seconds; "
                                            "else from the run's serial benchmark (fill_speedups)")
    efficiency: float | None = _f("float", "speedup per worker", derived_from="speedup / workers")
    paired_efficiency: float | None = _f(
        "float", "median over rounds of serial round / the round after it, per worker (--min-efficiency)",
        derived_from="serial_rounds and the timed rounds (stats.data), by the writer")
    overhead_cpu_share: float | None = _f(
        "float", "the driver's and Ray's share of the call's CPU (--max-overhead-share)",
        derived_from="(driver + ray) / (workers + driver + ray) of machine_cpu_seconds")
    processes_speedup: float | None = _f("float", "backends: the plain processes' speedup in the same minutes",
                                         derived_from="serial_seconds / processes_seconds")
    vs_processes: float | None = _f("float", "backends: the share of the plain processes' speedup reached",
                                    derived_from="speedup / processes_speedup")
    # perf/test_mission.py, the reference study's published times (sampled, 2560 instances)
    study_serial_sampled_s: float | None = _f("float", "mission: the study's serial time")
    study_best_one_machine_sampled_s: float | None = _f("float", "mission: the study's best on one machine")
    study_best_cluster_sampled_s: float | None = _f("float", "mission: the study's best on its cluster")
    times_faster_than_study_cluster: float | None = _f(
        "float", "mission: the study's cluster time / ours", derived_from="study_best_cluster_sampled_s / mean_seconds")
    # written by runs 0002 only (Ray Data started an actor pool per call then)
    actor_pool_start_seconds: float | None = _f("float", "old runs, Ray Data: its actor pool's start per call")
    speedup_without_actor_pool_start: float | None = _f("float", "old runs, Ray Data: speedup without that start")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _checked(f, getattr(self, f.name)))
        self._check_shape()
        for name, value in self._derived().items():
            if getattr(self, name) is None and value is not None and math.isfinite(value):
                object.__setattr__(self, name, float(value))

    def _check_shape(self) -> None:
        """The fields that must be set, or must not be, given the suite, backend and baseline."""
        def missing(name: str, why: str) -> RecordError:
            return RecordError(name, f"is missing (required {why})")

        if self.suite == "engine":
            for name in ("backend", "baseline"):
                if getattr(self, name) is not None:
                    raise RecordError(name, f"is {getattr(self, name)!r}; an engine record has none")
            for name in ("mode", "engine_role"):
                if getattr(self, name) is None:
                    raise missing(name, "in suite 'engine'")
            return
        if self.backend is None and self.baseline is None:
            raise missing("backend", f"in suite {self.suite!r}")
        if self.baseline is not None:
            if self.backend is not None:
                raise RecordError("baseline", f"is {self.baseline!r}; a baseline row has no backend "
                                  f"(backend is {self.backend!r})")
            if self.suite != "backends":
                raise RecordError("baseline", f"is {self.baseline!r}; only suite 'backends' has baseline rows")
        if self.backend == "serve" and self.serve_mode not in SERVE_MODES:
            if self.serve_mode is None:
                raise missing("serve_mode", "for backend 'serve'")
            raise RecordError("serve_mode", f"is {self.serve_mode!r} for backend 'serve'; "
                              f"allowed: {', '.join(map(repr, SERVE_MODES))}")
        if self.backend != "serve" and self.serve_mode is not None:
            raise RecordError("serve_mode", f"is {self.serve_mode!r}; it must be null for "
                              + (f"backend {self.backend!r}" if self.backend else f"baseline {self.baseline!r}"))
        if self.backend != SERIAL:
            for name in ("workers", "batch_size"):
                if getattr(self, name) is None:
                    raise missing(name, f"for {self.label}")
        if self.nsamples is None:
            raise missing("nsamples", f"for {self.label}")

    @property
    def label(self) -> str:
        """``pool``, ``serve-ray``, ``serial``, ``processes``; for engine records the role."""
        if self.backend == "serve":
            return f"serve-{self.serve_mode}"
        return self.backend or self.baseline or str(self.engine_role)

    @property
    def distributed(self) -> bool:
        """Whether Ray workers ran it (not serial, not the plain processes, not the engine suite)."""
        return self.backend is not None and self.backend != SERIAL

    def _derived(self) -> dict[str, float | None]:
        """Each derived field's value from the record's inputs (None where an input is missing)."""
        def ratio(a: float | None, b: float | None) -> float | None:
            return a / b if a is not None and b else None

        basis = getattr(self, TIME_BASIS[self.suite])
        speedup = self.speedup
        if speedup is None:
            speedup = 1.0 if self.backend == SERIAL else ratio(self.serial_seconds, basis)
        processes_speedup = self.processes_speedup
        if processes_speedup is None:
            processes_speedup = ratio(self.serial_seconds, self.processes_seconds)
        out: dict[str, float | None] = {
            "ms_per_instance": ratio(1000 * basis, self.n_instances) if basis is not None else None,
            "speedup": speedup,
            "efficiency": ratio(speedup, self.workers),
            "processes_speedup": processes_speedup,
            "vs_processes": ratio(speedup, processes_speedup),
            "distinct_rows_per_naive": ratio(self.distinct_rows, self.naive_rows),
            "times_faster_than_study_cluster": ratio(self.study_best_cluster_sampled_s, self.mean_seconds),
            "overhead_cpu_share": None,
            "model_rows_per_naive": None,
        }
        if self.engine_role not in FLOOR_ROLES:
            out["explanations_per_s"] = ratio(self.n_instances, basis)
        cpu = self.machine_cpu_seconds
        if cpu is not None:
            out["overhead_cpu_share"] = ratio(cpu["driver"] + cpu["ray"], cpu["workers"] + cpu["driver"] + cpu["ray"])
        evaluated = {"shared": self.shared_rows, "distinct": self.distinct_rows}.get(self.row_strategy, self.naive_rows)
        if self.row_strategy is not None and evaluated is not None and self.naive_rows:
            if not self.reuse_coalitions:
                out["model_rows_per_naive"] = evaluated / self.naive_rows
            elif self.reuse_hit_rate is not None:
                out["model_rows_per_naive"] = evaluated / self.naive_rows * (1.0 - self.reuse_hit_rate)
        return out

    def to_extra_info(self) -> dict[str, Any]:
        """The JSON-ready ``extra_info``: every set field (lists for rounds), and the
        :data:`CORE_FIELDS` as null when unset in a record with a backend."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is None and not (self.backend is not None and f.name in CORE_FIELDS):
                continue
            if isinstance(value, tuple):
                value = list(value)
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_extra_info(cls, extra_info: Any, *, fullname: str = "", where: str = "") -> BenchmarkRecord:
        """Parse and check one benchmark's ``extra_info``; ``where`` (file and benchmark) prefixes
        errors. Without ``suite`` the suite comes from ``fullname`` (:func:`infer_suite`), without
        ``workload`` it is :data:`LEGACY_WORKLOAD`, and an engine record without ``engine_role``
        gets it from its test function. Raises :class:`RecordError`."""
        if not isinstance(extra_info, Mapping):
            raise RecordError(None, f"extra_info is {type(extra_info).__name__}, expected an object", where)
        unknown = sorted(set(extra_info) - set(FIELD_NAMES))
        if unknown:
            raise RecordError(unknown[0], "is not a field of the benchmark record "
                              "(explainers.bench.records.FIELDS lists them)", where)
        values = dict(extra_info)
        if values.get("suite") is None:
            suite = infer_suite(fullname)
            if suite is None:
                raise RecordError("suite", f"is missing and the fullname {fullname!r} names no suite of perf/ "
                                  f"({', '.join(SUITE_OF_MODULE)})", where)
            values["suite"] = suite
        if values.get("workload") is None:
            values["workload"] = LEGACY_WORKLOAD
        if values["suite"] == "engine" and values.get("engine_role") is None:
            values["engine_role"] = _engine_role(fullname, values)
        if values.get("n_instances") is None:
            raise RecordError("n_instances", "is missing (required always)", where)
        try:
            return cls(**values)
        except RecordError as exc:
            raise exc.at(where) from None


def _checked(f: dataclasses.Field, value: Any) -> Any:
    """``value`` of field ``f`` after its kind's check (sequences become tuples, mappings dicts)."""
    meta = f.metadata
    if value is None:
        return None
    kind, allowed, minimum = meta["kind"], meta["allowed"], meta["minimum"]
    if kind == "str":
        if not isinstance(value, str) or not value:
            raise RecordError(f.name, f"is {value!r}; expected a non-empty string")
        if allowed is not None and value not in allowed:
            raise RecordError(f.name, f"is {value!r}; allowed: {', '.join(map(repr, allowed))}")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise RecordError(f.name, f"is {value!r}; expected true, false or null")
        return value
    if kind == "int":
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            expected = "a positive integer" if minimum == 1 else f"an integer >= {minimum}"
            raise RecordError(f.name, f"is {value!r}; expected {expected}")
        return value
    if kind == "float":
        if not _is_number(value):
            raise RecordError(f.name, f"is {value!r}; expected a number or null")
        return float(value)
    if kind == "floats":
        if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence) \
                or not all(_is_number(v) for v in value):
            raise RecordError(f.name, f"is {value!r}; expected a list of numbers")
        return tuple(float(v) for v in value)
    if kind == "cpu":
        if not isinstance(value, Mapping) or set(value) != set(ROLES) \
                or not all(_is_number(v) for v in value.values()):
            raise RecordError(f.name, f"is {value!r}; expected CPU-seconds for each of {', '.join(ROLES)}")
        return {role: float(value[role]) for role in ROLES}
    raise AssertionError(f"unknown kind {kind!r} of field {f.name!r}")


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)


def _test_of(fullname: str) -> tuple[str, str, str]:
    """(module file name, test function, parameter id) of a pytest node id."""
    module, _, rest = fullname.partition("::")
    test = rest.rsplit("::", 1)[-1]
    function, _, param = test.partition("[")
    return module.replace("\\", "/").rsplit("/", 1)[-1], function, param.rstrip("]")


def infer_suite(fullname: str) -> str | None:
    """The suite of a benchmark by its node id: its module (``perf/test_backends.py::...``),
    else its test function (``test_scaling``, ``test_backend``, ``test_floor``, ``test_shap``,
    ``test_engine``, ``test_exact_all_instances``); None if neither is one of ours."""
    module, function, _ = _test_of(fullname)
    return SUITE_OF_MODULE.get(module) or SUITE_OF_TEST.get(function)


def _engine_role(fullname: str, values: Mapping[str, Any]) -> str | None:
    _, function, param = _test_of(fullname)
    if function == "test_floor":
        rows = values.get("floor_rows") or next((r for r in FLOOR_ROWS[1:] if r in param.split("-")), "all")
        return "floor" if rows == "all" else f"floor-{rows}"
    if function == "test_shap":
        return "shap"
    if function == "test_engine":
        return "engine-reuse" if values.get("reuse_coalitions") is True or "reuse" in param.split("-") else "engine"
    return None


def _spec(f: dataclasses.Field) -> FieldSpec:
    meta = f.metadata
    return FieldSpec(name=f.name, type=_KIND_TYPES[meta["kind"]], optional=not meta["required"].startswith("always"),
                     derived=bool(meta["derived_from"]), meaning=meta["meaning"], required=meta["required"],
                     derived_from=meta["derived_from"])


#: every field of :class:`BenchmarkRecord`, in the record's order
FIELDS: tuple[FieldSpec, ...] = tuple(_spec(f) for f in dataclasses.fields(BenchmarkRecord))
FIELD_NAMES: tuple[str, ...] = tuple(s.name for s in FIELDS)


def field_table_markdown() -> str:
    """:data:`FIELDS` as a Markdown table (for ARCHITECTURE.md)."""
    lines = ["| field | type | required | derived from | meaning |", "|---|---|---|---|---|"]
    for s in FIELDS:
        lines.append(f"| `{s.name}` | {s.type} | {s.required or '—'} | {s.derived_from or '—'} | {s.meaning} |")
    return "\n".join(lines)


# --------------------------------------------------------------------------- session helpers


def missing_speedups(entries: Sequence[tuple[Mapping[str, Any], float]]) -> dict[int, float]:
    """The speedups a run's records lack and its serial benchmark gives: index -> speedup.

    ``entries``: one (``extra_info``, mean seconds) per benchmark of a run. A serial benchmark
    is the baseline of the benchmarks with its ``n_instances`` and ``nsamples`` (the first such
    one); an entry with a ``backend``, no ``speedup`` and a baseline gets baseline mean / its
    mean. Rows without a ``backend`` (baselines, the engine suite) get none.
    """
    def work(info: Mapping[str, Any]) -> tuple[Any, Any]:
        return info.get("n_instances"), info.get("nsamples")

    baselines: dict[tuple[Any, Any], float] = {}
    for info, mean in entries:
        if info.get("backend") == SERIAL:
            baselines.setdefault(work(info), mean)
    return {i: baselines[work(info)] / mean for i, (info, mean) in enumerate(entries)
            if info.get("backend") is not None and info.get("speedup") is None and work(info) in baselines}


def fill_speedups(output_json: dict[str, Any]) -> None:
    """Set missing ``speedup``/``efficiency`` in pytest-benchmark's ``output_json`` (in place)
    from the serial benchmark of the same work (:func:`missing_speedups`); efficiency = speedup /
    workers. A benchmark without such a baseline keeps ``None``."""
    benches = output_json.get("benchmarks", [])
    infos = [bench.get("extra_info") or {} for bench in benches]
    for i, speedup in missing_speedups([(info, bench["stats"]["mean"]) for info, bench in zip(infos, benches)]).items():
        infos[i]["speedup"] = speedup
        infos[i]["efficiency"] = speedup / max(1, int(infos[i].get("workers") or 1))


def gate_failures(record: BenchmarkRecord, *, min_efficiency: float | None, max_overhead_share: float | None,
                  workers: int) -> list[str]:
    """The CI gates a distributed record misses, one message each (empty: it passes).

    ``--min-efficiency`` gates on ``paired_efficiency``, ``--max-overhead-share`` on
    ``overhead_cpu_share``; a gate is left out without its option, without its figure, and for
    records that are not distributed (serial, plain processes, engine).
    """
    if not record.distributed:
        return []
    failures = []
    efficiency = record.paired_efficiency
    if min_efficiency is not None and efficiency is not None and efficiency < min_efficiency:
        failures.append(
            f"paired efficiency {efficiency:.2f} (median speedup {efficiency * workers:.2f}x at "
            f"{workers} worker{'s' if workers > 1 else ''}) is below --min-efficiency {min_efficiency:g}"
        )
    share = record.overhead_cpu_share
    if max_overhead_share is not None and share is not None and share > max_overhead_share:
        cpu = record.machine_cpu_seconds
        detail = (f" (per call: driver {cpu['driver']:.2f} CPU-s, Ray's processes {cpu['ray']:.2f} CPU-s, "
                  f"workers {cpu['workers']:.2f} CPU-s)" if cpu is not None else "")
        failures.append(f"overhead CPU share {share:.2f}{detail} is above --max-overhead-share {max_overhead_share:g}")
    return failures
