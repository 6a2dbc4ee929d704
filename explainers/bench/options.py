"""The plugin's options: one table (:data:`OPTIONS`), each with an ini twin ``kernelshap_<option>``.

:meth:`PluginOptions.from_config` reads them (command line, else ini file, else default) and
turns every bad value into a ``pytest.UsageError`` that says what to pass. Options that
depend on the cluster or the workload (``--workers``, ``--n-instances``) stay ``None`` here
and are resolved by :class:`explainers.bench.session.KernelShapRaySession`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import pytest

from explainers.cluster.session import (ADDRESS_FORMS, DEFAULT_JOB_TIMEOUT, K8S_TRANSPORTS, K8sOptions,
                                        address_mode)
from explainers.kernelshap.backends import BACKENDS, DEFAULT_PLACEMENT_TIMEOUT_S, SERVE_MODES
from explainers.workloads.workload import DEFAULT_WORKLOAD

GROUP_NAME = "kernelshap-ray"
GROUP_DESCRIPTION = "distributed-kernelshap: Ray cluster, workload and benchmark grid"

DEFAULT_BATCH_SIZES = (1, 5, 10)
#: instances explained per benchmark by default: a multiple of 2, 4 and 8 workers x batch 10, so
#: every default configuration is balanced, and enough work that a round of the distributed
#: suites is mostly explaining rather than Ray's fixed costs per call; ``--study`` explains all
#: of the workload's (Adult: 2560)
DEFAULT_N_INSTANCES = 240
#: the default of perf/test_engine_speed.py, which times shap and the model on every naive row
#: beside the engine (each 50-200x its time): there, the instances a round explains
ENGINE_N_INSTANCES = 40
DEFAULT_NRUNS = 3
#: the study's protocol (``--study``): timed rounds per configuration and its batch sizes
STUDY_NRUNS = 5
STUDY_BATCH_SIZES = (1, 5, 10)
#: ``--reuse-coalitions``: whether the scaling and backends grids' engines reuse coalition values
REUSE_CHOICES = {"off": (False,), "on": (True,), "both": (False, True)}


@dataclass(frozen=True)
class _Opt:
    flag: str
    ini: str
    help: str
    kind: str = "str"  # str | list | flag
    metavar: str | None = None


OPTIONS: tuple[_Opt, ...] = (
    _Opt("--workload", "kernelshap_workload",
         f"the model and data to explain: MODULE:CALLABLE returning an object with name, predict, "
         f"background, X and optional groups, group_names, link (default {DEFAULT_WORKLOAD})",
         metavar="MODULE:CALLABLE"),
    _Opt("--study", "kernelshap_study",
         f"the study's protocol: all the workload's instances, batch sizes "
         f"{' '.join(map(str, STUDY_BATCH_SIZES))}, workers 1..the cluster's CPUs, {STUDY_NRUNS} runs, "
         "progress bars (options given explicitly still win)", kind="flag"),
    _Opt("--progress", "kernelshap_progress",
         "show a progress bar of explanations on the terminal during each distributed round (on with --study)",
         kind="flag"),
    _Opt("--ray-address", "kernelshap_ray_address",
         f"Ray cluster to run on: {ADDRESS_FORMS} (default: local = start one for the session)",
         metavar="ADDRESS"),
    _Opt("--nodes", "kernelshap_nodes",
         "nodes of the local cluster (--ray-address local only; CPUs are split between them; default 1)",
         metavar="N"),
    _Opt("--ray-cpus", "kernelshap_ray_cpus",
         "CPUs of the local cluster in total (--ray-address local only; default: all of this machine's)",
         metavar="N"),
    _Opt("--workers", "kernelshap_workers",
         "worker counts, e.g. 1,2,4 (comma list or repeated; default 1, 2, 4, ... up to the cluster's CPUs; "
         "--study: every count from 1)",
         kind="list", metavar="LIST"),
    _Opt("--batch-sizes", "kernelshap_batch_sizes",
         "batch sizes (instances per request), e.g. 1,5,10 (default 1 5 10, as in the study; "
         "perf/test_backends.py and perf/test_mission.py use the largest)",
         kind="list", metavar="LIST"),
    _Opt("--backends", "kernelshap_backends",
         f"backends to benchmark, from {', '.join(BACKENDS)} (default: all; the serial baseline always runs)",
         kind="list", metavar="LIST"),
    _Opt("--serve-modes", "kernelshap_serve_modes",
         f"Serve modes, from {', '.join(SERVE_MODES)} (default: both)", kind="list", metavar="LIST"),
    _Opt("--reuse-coalitions", "kernelshap_reuse_coalitions",
         "whether the engines of perf/test_scaling.py and perf/test_backends.py reuse coalition values "
         "across instances (KernelShap(reuse_coalitions=True), ids end in -reuse): off (default), on or "
         "both (every configuration twice); perf/test_engine_speed.py and perf/test_mission.py always time both",
         metavar="off|on|both"),
    _Opt("--n-instances", "kernelshap_n_instances",
         f"instances of the workload explained per benchmark (default {DEFAULT_N_INSTANCES}, "
         f"perf/test_engine_speed.py {ENGINE_N_INSTANCES}; --study: all of them, 2560 for Adult)", metavar="N"),
    _Opt("--nsamples", "kernelshap_nsamples",
         "coalitions per instance: 'auto' (2 M + 2048 = 2072) or an int >= 2 (default auto)", metavar="N"),
    _Opt("--nruns", "kernelshap_nruns",
         f"timed rounds per benchmark (default {DEFAULT_NRUNS}; --study: {STUDY_NRUNS})", metavar="N"),
    _Opt("--min-efficiency", "kernelshap_min_efficiency",
         "fail a distributed benchmark whose paired efficiency (median over rounds of serial round / "
         "round, / workers) is below this fraction, e.g. 0.6: a CI gate that the machine's speed does "
         "not move (default: no gate)", metavar="FRACTION"),
    _Opt("--max-overhead-share", "kernelshap_max_overhead_share",
         "fail a distributed benchmark on a local cluster whose overhead_cpu_share (the driver's and "
         "Ray's own processes' share of the CPU its calls used, median over rounds) is above this "
         "fraction, e.g. 0.25: a CI gate in CPU-seconds, which the machine's speed does not move "
         "(default: no gate)", metavar="FRACTION"),
    _Opt("--placement-timeout", "kernelshap_placement_timeout",
         f"seconds a configuration's workers may wait to be placed on the cluster; one that cannot "
         f"be placed in time is skipped with what holds the CPUs (default {DEFAULT_PLACEMENT_TIMEOUT_S:g})",
         metavar="SECONDS"),
    _Opt("--compare-gate", "kernelshap_compare_gate",
         "fail the session when a benchmark regressed against saved run RUN (a file, or a pytest-benchmark id "
         "in --benchmark-storage) beyond the noise: time, paired speedup and CPU-seconds by role, a rank test "
         "plus a minimum effect (docs/compare.md, as kernelshap-compare); complements --benchmark-compare-fail",
         metavar="RUN"),
    _Opt("--report-dir", "kernelshap_report_dir",
         "write the scaling report (figures + Markdown table) here at the end of a benchmark session",
         metavar="DIR"),
    _Opt("--k8s-namespace", "kernelshap_k8s_namespace",
         "namespace of the RayCluster (--ray-address k8s; default 'default')", metavar="NAME"),
    _Opt("--k8s-cluster", "kernelshap_k8s_cluster",
         "name of the KubeRay RayCluster (--ray-address k8s; default 'kernelshap')", metavar="NAME"),
    _Opt("--kubeconfig", "kernelshap_kubeconfig",
         "kubeconfig file (--ray-address k8s; default: the usual kubeconfig resolution)", metavar="PATH"),
    _Opt("--k8s-transport", "kernelshap_k8s_transport",
         "how --ray-address k8s runs the suite: 'jobs' (default) submits this pytest selection as a Ray Job "
         "through a kubectl port-forward of the head's dashboard (8265), shows its log live and saves its "
         "benchmarks here; 'client' (legacy, deprecated by Ray) drives the cluster through Ray Client (10001)",
         metavar="jobs|client"),
    _Opt("--k8s-timeout", "kernelshap_k8s_timeout",
         f"seconds the Ray Job may run before it is stopped (--k8s-transport jobs; default "
         f"{DEFAULT_JOB_TIMEOUT:g})", metavar="SECONDS"),
    _Opt("--k8s-scale", "kernelshap_k8s_scale",
         "scale the RayCluster's worker group up when a configuration needs more CPUs than it has "
         "(restored at the end); without it such configurations are skipped", kind="flag"),
)


def _dest(flag: str) -> str:
    return "kernelshap_" + flag.lstrip("-").replace("-", "_")


def add_options(parser: pytest.Parser) -> None:
    """Register the options (one group) and their ini twins."""
    group = parser.getgroup(GROUP_NAME, GROUP_DESCRIPTION)
    for opt in OPTIONS:
        if opt.kind == "flag":
            group.addoption(opt.flag, action="store_true", default=None, dest=_dest(opt.flag), help=opt.help)
            parser.addini(opt.ini, f"{opt.help} (ini twin of {opt.flag})", type="bool", default=False)
        else:
            group.addoption(
                opt.flag, action="append" if opt.kind == "list" else "store", default=None,
                dest=_dest(opt.flag), metavar=opt.metavar, help=opt.help,
            )
            parser.addini(opt.ini, f"{opt.help} (ini twin of {opt.flag})", default=None)


def _raw(config: pytest.Config, flag: str) -> Any:
    """The option's value: the command line if given, else the ini file, else ``None``."""
    opt = next(o for o in OPTIONS if o.flag == flag)
    value = config.getoption(_dest(flag), default=None)
    if value is not None:
        return value
    ini = config.getini(opt.ini)
    if opt.kind == "flag":
        return bool(ini)
    if ini in (None, "", []):
        return None
    return ini


def _split(value: Any) -> list[str]:
    """``"1,2 4"`` or ``["1,2", "4"]`` -> ``["1", "2", "4"]``."""
    if value is None:
        return []
    parts: Iterable[str] = [value] if isinstance(value, str) else value
    return [tok for part in parts for tok in str(part).replace(",", " ").split() if tok]


def _int(flag: str, text: Any, *, minimum: int = 1) -> int:
    try:
        value = int(str(text).strip())
    except ValueError:
        raise pytest.UsageError(f"{flag}: {text!r} is not an integer; use an integer >= {minimum}") from None
    if value < minimum:
        raise pytest.UsageError(f"{flag}: {value} is not allowed; use an integer >= {minimum}")
    return value


def _int_list(flag: str, value: Any) -> tuple[int, ...] | None:
    tokens = _split(value)
    if value is not None and not tokens:
        raise pytest.UsageError(f"{flag}: empty list; give positive integers such as 1,2,4")
    if not tokens:
        return None
    return tuple(sorted({_int(flag, t) for t in tokens}))


def _choice_list(flag: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...] | None:
    tokens = _split(value)
    if value is not None and not tokens:
        raise pytest.UsageError(f"{flag}: empty list; choose from {', '.join(allowed)}")
    if not tokens:
        return None
    bad = [t for t in tokens if t not in allowed]
    if bad:
        raise pytest.UsageError(
            f"{flag}: unknown value(s) {', '.join(map(repr, bad))}; choose from {', '.join(allowed)}"
        )
    return tuple(a for a in allowed if a in tokens)  # canonical order, no duplicates


def _choice(flag: str, value: Any, allowed: Sequence[str]) -> str:
    """One of ``allowed`` (the first when ``value`` is ``None``), else ``pytest.UsageError``."""
    if value is None:
        return allowed[0]
    text = str(value).strip()
    if text not in allowed:
        raise pytest.UsageError(f"{flag}: {text!r} is not allowed; choose from {', '.join(allowed)}")
    return text


def _seconds(flag: str, text: Any) -> float:
    """A finite number of seconds > 0, else ``pytest.UsageError``."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise pytest.UsageError(f"{flag}: {text!r} is not a number; use seconds > 0, e.g. 30") from None
    if not math.isfinite(value) or value <= 0:
        raise pytest.UsageError(f"{flag}: {value:g} is not allowed; use seconds > 0, e.g. 30")
    return value


def _fraction(flag: str, text: Any) -> float:
    """A number in (0, 1], else ``pytest.UsageError``."""
    try:
        value = float(str(text).strip())
    except ValueError:
        raise pytest.UsageError(f"{flag}: {text!r} is not a number; use a fraction in (0, 1], e.g. 0.6") from None
    if not 0 < value <= 1:
        raise pytest.UsageError(f"{flag}: {value:g} is not allowed; use a fraction in (0, 1], e.g. 0.6")
    return value


@dataclass(frozen=True)
class PluginOptions:
    """The parsed, validated options (``None`` = the default that depends on the cluster)."""

    ray_address: str = "local"
    address_mode: str = "local"
    nodes: int = 1
    ray_cpus: int | None = None
    workers: tuple[int, ...] | None = None
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    backends: tuple[str, ...] = BACKENDS
    serve_modes: tuple[str, ...] = SERVE_MODES
    reuse_coalitions: str = "off"
    n_instances: int | None = None  # None: DEFAULT_N_INSTANCES, or all of the workload's with --study
    nsamples: int | str = "auto"
    nruns: int = DEFAULT_NRUNS
    workload: str = DEFAULT_WORKLOAD
    study: bool = False
    progress: bool = False
    min_efficiency: float | None = None
    max_overhead_share: float | None = None
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S
    report_dir: Path | None = None
    compare_gate: str | None = None
    k8s: K8sOptions = field(default_factory=K8sOptions)
    k8s_scale: bool = False

    @property
    def reuse_variants(self) -> tuple[bool, ...]:
        """The ``reuse_coalitions`` values of the scaling and backends grids."""
        return REUSE_CHOICES[self.reuse_coalitions]

    @property
    def runs_as_job(self) -> bool:
        """Whether this pytest submits the run as a Ray Job (``--ray-address k8s``, transport ``jobs``)."""
        return self.address_mode == "k8s" and self.k8s.transport == "jobs"

    @classmethod
    def from_config(cls, config: pytest.Config) -> "PluginOptions":
        """Read every option (command line, else ini, else default); ``pytest.UsageError`` if invalid."""
        address = str(_raw(config, "--ray-address") or "local").strip()
        try:
            mode = address_mode(address)
        except ValueError as exc:
            raise pytest.UsageError(f"--ray-address: {exc}") from None
        nodes_raw = _raw(config, "--nodes")
        nodes = _int("--nodes", nodes_raw) if nodes_raw is not None else 1
        cpus_raw = _raw(config, "--ray-cpus")
        ray_cpus = _int("--ray-cpus", cpus_raw) if cpus_raw is not None else None
        if mode != "local" and (nodes != 1 or ray_cpus is not None):
            raise pytest.UsageError(
                f"--nodes and --ray-cpus apply to --ray-address local only (got --ray-address {address})"
            )
        if ray_cpus is not None and ray_cpus < nodes:
            raise pytest.UsageError(
                f"--ray-cpus {ray_cpus} cannot be split over --nodes {nodes}: every node needs at least 1 CPU"
            )
        nsamples_raw = _raw(config, "--nsamples")
        nsamples: int | str = "auto"
        if nsamples_raw is not None and str(nsamples_raw).strip() != "auto":
            try:
                nsamples = int(str(nsamples_raw).strip())
            except ValueError:
                raise pytest.UsageError(
                    f"--nsamples: {nsamples_raw!r} is not allowed; use 'auto' or an integer >= 2"
                ) from None
            if nsamples < 2:
                raise pytest.UsageError(f"--nsamples: {nsamples} is not allowed; use 'auto' or an integer >= 2")
        n_raw, runs_raw = _raw(config, "--n-instances"), _raw(config, "--nruns")
        n_instances = _int("--n-instances", n_raw) if n_raw is not None else None
        workload = str(_raw(config, "--workload") or DEFAULT_WORKLOAD).strip()
        study = bool(_raw(config, "--study"))
        if n_instances is not None and workload == DEFAULT_WORKLOAD:  # checked once, without loading data
            from explainers.workloads.adult import N_EXPLAIN

            if n_instances > N_EXPLAIN:
                raise pytest.UsageError(
                    f"--n-instances: {n_instances} is not allowed; use an integer from 1 to {N_EXPLAIN} "
                    f"(the Adult workload explains {N_EXPLAIN} instances; {N_EXPLAIN} = the study)"
                )
        batch_sizes = _int_list("--batch-sizes", _raw(config, "--batch-sizes"))
        report = _raw(config, "--report-dir")
        floor_raw = _raw(config, "--min-efficiency")
        overhead_raw = _raw(config, "--max-overhead-share")
        placement_raw = _raw(config, "--placement-timeout")
        job_timeout_raw = _raw(config, "--k8s-timeout")
        compare_raw = _raw(config, "--compare-gate")
        k8s_defaults = K8sOptions()
        return cls(
            ray_address=address,
            address_mode=mode,
            nodes=nodes,
            ray_cpus=ray_cpus,
            workers=_int_list("--workers", _raw(config, "--workers")),
            batch_sizes=batch_sizes or (STUDY_BATCH_SIZES if study else DEFAULT_BATCH_SIZES),
            backends=_choice_list("--backends", _raw(config, "--backends"), BACKENDS) or BACKENDS,
            serve_modes=_choice_list("--serve-modes", _raw(config, "--serve-modes"), SERVE_MODES) or SERVE_MODES,
            reuse_coalitions=_choice("--reuse-coalitions", _raw(config, "--reuse-coalitions"), tuple(REUSE_CHOICES)),
            n_instances=n_instances,
            nsamples=nsamples,
            nruns=_int("--nruns", runs_raw) if runs_raw is not None else (STUDY_NRUNS if study else DEFAULT_NRUNS),
            workload=workload,
            study=study,
            progress=bool(_raw(config, "--progress")) or study,
            min_efficiency=_fraction("--min-efficiency", floor_raw) if floor_raw is not None else None,
            max_overhead_share=(_fraction("--max-overhead-share", overhead_raw)
                                if overhead_raw is not None else None),
            placement_timeout_s=(_seconds("--placement-timeout", placement_raw)
                                 if placement_raw is not None else DEFAULT_PLACEMENT_TIMEOUT_S),
            report_dir=Path(str(report)).expanduser() if report else None,
            compare_gate=str(compare_raw).strip() if compare_raw else None,
            k8s=K8sOptions(
                namespace=str(_raw(config, "--k8s-namespace") or k8s_defaults.namespace),
                cluster=str(_raw(config, "--k8s-cluster") or k8s_defaults.cluster),
                kubeconfig=_raw(config, "--kubeconfig"),
                transport=_choice("--k8s-transport", _raw(config, "--k8s-transport"), K8S_TRANSPORTS),
                job_timeout=(_seconds("--k8s-timeout", job_timeout_raw)
                             if job_timeout_raw is not None else DEFAULT_JOB_TIMEOUT),
            ),
            k8s_scale=bool(_raw(config, "--k8s-scale")),
        )
