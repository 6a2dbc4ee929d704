"""pytest plugin of distributed-kernelshap (registered through the ``pytest11`` entry point).

Options (``pytest --help``, group "kernelshap-ray"; each has an ini twin named
``kernelshap_<option>``) choose the Ray cluster and the scaling grid; the state of a run
lives in one :class:`KernelShapRaySession` per pytest config (``get_session(config)``).

Fixtures (session scope): ``kernelshap_ray`` (the session object), ``ray_cluster``
(connects on first use; shut down at the end if this run started it), ``adult_workload``,
``explain_instances`` (the first ``--n-instances`` rows to explain, ``(n, 49)``),
``serial_reference`` (their serial KernelSHAP values, ``(n, 12, 2)``, computed once) and
``explainer_factory`` (``factory(config)`` -> an object with ``explain(X)``).

Nothing here imports Ray or starts a cluster unless a test asks for the cluster: plain
``pytest tests/`` runs, and other projects that have this package installed, only pay for
option parsing.
"""
from __future__ import annotations

import math
import os
import platform
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pytest

from explainers.kernelshap.backends import DEFAULT_PLACEMENT_TIMEOUT_S, PlacementError
from explainers.cluster.session import ADDRESS_FORMS, ClusterSession, K8sOptions, address_mode, ray_version
from explainers.cluster.ray_client import connection_guard, teardown_call

GROUP_NAME = "kernelshap-ray"
GROUP_DESCRIPTION = "distributed-kernelshap: Ray cluster and scaling grid"

BACKENDS = ("pool", "serve", "data")
SERVE_MODES = ("ray", "default")
DEFAULT_BATCH_SIZES = (1, 5, 10)
#: instances explained per benchmark by default: a multiple of 2 workers x batch 10, so every
#: default configuration is balanced; the study used 2560 (``--n-instances 2560``)
DEFAULT_N_INSTANCES = 128
DEFAULT_NRUNS = 3
#: largest difference allowed between a backend's values and the serial reference
TOLERANCE = 1e-12
#: seconds the in-cluster driver actor may take to remove its workers
DRIVER_CLOSE_TIMEOUT_S = 60.0
#: the benchmark table defaults set for scaling runs (unless given on the command line)
DEFAULT_GROUP_BY = "group"
DEFAULT_SORT = "name"

_SESSION_KEY = pytest.StashKey["KernelShapRaySession"]()


# --------------------------------------------------------------------------- configurations
@dataclass(frozen=True)
class ScalingConfig:
    """One point of the grid: a backend (or ``serial``), its Serve mode, workers and batch size."""

    backend: str
    workers: int = 1
    batch_size: int | None = None
    serve_mode: str | None = None

    @property
    def distributed(self) -> bool:
        return self.backend != "serial"

    @property
    def label(self) -> str:
        """``pool``, ``serve-ray``, ``data`` or ``serial``."""
        return self.backend if self.serve_mode is None else f"{self.backend}-{self.serve_mode}"

    @property
    def id(self) -> str:
        """Test id: ``serial``, ``pool-w2-b5``, ``serve-ray-w2-b10``, ``data-w1-b1``."""
        if not self.distributed:
            return "serial"
        return f"{self.label}-w{self.workers}-b{self.batch_size}"

    @property
    def group(self) -> str:
        """pytest-benchmark group: one table per backend (and mode) and batch size, rows = workers."""
        if not self.distributed:
            return "serial"
        return f"{self.label} batch={self.batch_size}"

    def __str__(self) -> str:  # shown by pytest-benchmark's ``param`` grouping
        return self.id


def scaling_grid(
    backends: Sequence[str],
    serve_modes: Sequence[str],
    workers: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    serial: bool = True,
) -> list[ScalingConfig]:
    """The serial baseline first, then every (backend, mode, batch size, workers) combination."""
    configs = [ScalingConfig("serial")] if serial else []
    for backend in backends:
        modes: Sequence[str | None] = serve_modes if backend == "serve" else (None,)
        for mode in modes:
            for batch in batch_sizes:
                for w in workers:
                    configs.append(ScalingConfig(backend, int(w), int(batch), mode))
    return configs


def default_workers(cpus: float) -> list[int]:
    """1, 2, 4, ... up to ``cpus`` (and ``cpus`` itself when it is not a power of two)."""
    top = max(1, int(cpus))
    out, w = [], 1
    while w <= top:
        out.append(w)
        w *= 2
    if out[-1] != top:
        out.append(top)
    return out


# --------------------------------------------------------------------------- options
@dataclass(frozen=True)
class _Opt:
    flag: str
    ini: str
    help: str
    kind: str = "str"  # str | list | flag
    metavar: str | None = None


OPTIONS: tuple[_Opt, ...] = (
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
         "worker counts, e.g. 1,2,4 (comma list or repeated; default 1, 2, 4, ... up to the cluster's CPUs)",
         kind="list", metavar="LIST"),
    _Opt("--batch-sizes", "kernelshap_batch_sizes",
         "batch sizes (instances per request), e.g. 1,5,10 (default 1 5 10, as in the study)",
         kind="list", metavar="LIST"),
    _Opt("--backends", "kernelshap_backends",
         f"backends to benchmark, from {', '.join(BACKENDS)} (default: all; the serial baseline always runs)",
         kind="list", metavar="LIST"),
    _Opt("--serve-modes", "kernelshap_serve_modes",
         f"Serve modes, from {', '.join(SERVE_MODES)} (default: both)", kind="list", metavar="LIST"),
    _Opt("--n-instances", "kernelshap_n_instances",
         f"Adult instances explained per benchmark (default {DEFAULT_N_INSTANCES}; 2560 = the study)",
         metavar="N"),
    _Opt("--nsamples", "kernelshap_nsamples",
         "coalitions per instance: 'auto' (2 M + 2048 = 2072) or an int >= 2 (default auto)", metavar="N"),
    _Opt("--nruns", "kernelshap_nruns",
         f"timed rounds per configuration (default {DEFAULT_NRUNS})", metavar="N"),
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
    _Opt("--report-dir", "kernelshap_report_dir",
         "write the scaling report (figures + Markdown table) here at the end of a benchmark session",
         metavar="DIR"),
    _Opt("--k8s-namespace", "kernelshap_k8s_namespace",
         "namespace of the RayCluster (--ray-address k8s; default 'default')", metavar="NAME"),
    _Opt("--k8s-cluster", "kernelshap_k8s_cluster",
         "name of the KubeRay RayCluster (--ray-address k8s; default 'kernelshap')", metavar="NAME"),
    _Opt("--kubeconfig", "kernelshap_kubeconfig",
         "kubeconfig file (--ray-address k8s; default: the usual kubeconfig resolution)", metavar="PATH"),
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
    n_instances: int = DEFAULT_N_INSTANCES
    nsamples: int | str = "auto"
    nruns: int = DEFAULT_NRUNS
    min_efficiency: float | None = None
    max_overhead_share: float | None = None
    placement_timeout_s: float = DEFAULT_PLACEMENT_TIMEOUT_S
    report_dir: Path | None = None
    k8s: K8sOptions = field(default_factory=K8sOptions)
    k8s_scale: bool = False

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
        n_instances = _int("--n-instances", n_raw) if n_raw is not None else DEFAULT_N_INSTANCES
        if n_raw is not None:  # checked here, once, not by every test's fixture
            from explainers.workloads.adult import N_EXPLAIN  # fixed by the recipe: no data is loaded

            if n_instances > N_EXPLAIN:
                raise pytest.UsageError(
                    f"--n-instances: {n_instances} is not allowed; use an integer from 1 to {N_EXPLAIN} "
                    f"(the Adult workload explains {N_EXPLAIN} instances; {N_EXPLAIN} = the study)"
                )
        report = _raw(config, "--report-dir")
        floor_raw = _raw(config, "--min-efficiency")
        overhead_raw = _raw(config, "--max-overhead-share")
        placement_raw = _raw(config, "--placement-timeout")
        k8s_defaults = K8sOptions()
        return cls(
            ray_address=address,
            address_mode=mode,
            nodes=nodes,
            ray_cpus=ray_cpus,
            workers=_int_list("--workers", _raw(config, "--workers")),
            batch_sizes=_int_list("--batch-sizes", _raw(config, "--batch-sizes")) or DEFAULT_BATCH_SIZES,
            backends=_choice_list("--backends", _raw(config, "--backends"), BACKENDS) or BACKENDS,
            serve_modes=_choice_list("--serve-modes", _raw(config, "--serve-modes"), SERVE_MODES) or SERVE_MODES,
            n_instances=n_instances,
            nsamples=nsamples,
            nruns=_int("--nruns", runs_raw) if runs_raw is not None else DEFAULT_NRUNS,
            min_efficiency=_fraction("--min-efficiency", floor_raw) if floor_raw is not None else None,
            max_overhead_share=(_fraction("--max-overhead-share", overhead_raw)
                                if overhead_raw is not None else None),
            placement_timeout_s=(_seconds("--placement-timeout", placement_raw)
                                 if placement_raw is not None else DEFAULT_PLACEMENT_TIMEOUT_S),
            report_dir=Path(str(report)).expanduser() if report else None,
            k8s=K8sOptions(
                namespace=str(_raw(config, "--k8s-namespace") or k8s_defaults.namespace),
                cluster=str(_raw(config, "--k8s-cluster") or k8s_defaults.cluster),
                kubeconfig=_raw(config, "--kubeconfig"),
            ),
            k8s_scale=bool(_raw(config, "--k8s-scale")),
        )


# --------------------------------------------------------------------------- session
class KernelShapRaySession:
    """State of one pytest run: options, the (lazily connected) cluster, the serial baseline."""

    def __init__(self, config: pytest.Config, options: PluginOptions) -> None:
        self.config = config
        self.options = options
        self.cluster: ClusterSession | None = None
        self.serial_seconds: float | None = None  # mean of the serial baseline benchmark
        self.serial_reference_seconds: float | None = None  # time the reference took (once)
        self.serial_engine: Any = None  # the plugin's serial explainer, for paired serial rounds
        self.nsamples: int | None = None  # coalitions per instance of the reference engine
        self.exact: bool | None = None  # whether the reference values are exact
        self._last_info: dict[str, Any] | None = None
        self._k8s_scaled = False

    # -- the cluster --------------------------------------------------------------
    def connect(self) -> ClusterSession:
        """Connect (or start) the cluster once; later calls return the same session."""
        if self.cluster is None or self.cluster.closed:
            from explainers.cluster.session import connect

            opts = self.options
            self.cluster = connect(
                opts.ray_address,
                nodes=opts.nodes,
                num_cpus=opts.ray_cpus if opts.address_mode == "local" else None,
                k8s=opts.k8s,
            )
        return self.cluster

    def close(self) -> None:
        """Restore a scaled KubeRay worker group, then disconnect / shut down what was started."""
        cluster, self.cluster = self.cluster, None
        if cluster is None:
            return
        self._last_info = cluster.info() if cluster._info is not None else None
        try:
            if self._k8s_scaled and cluster.k8s is not None:
                restore = getattr(cluster.k8s, "restore", None)
                if callable(restore):
                    restore()
        finally:
            self._k8s_scaled = False
            cluster.close()

    def cluster_info(self) -> dict[str, Any] | None:
        """What the cluster is (after it connected), else ``None``."""
        if self.cluster is not None and self.cluster._info is not None:
            return self.cluster.info()
        return self._last_info

    def planned_cpus(self) -> int | None:
        """CPUs a local cluster will have (known before starting it); ``None`` for attached ones."""
        if self.options.address_mode != "local":
            return None
        return self.options.ray_cpus or os.cpu_count() or 1

    def workers(self) -> list[int]:
        """``--workers``, else 1, 2, 4, ... up to the cluster's CPUs.

        For attached clusters the default needs the CPU count, so it connects (this is
        only called while generating the scaling tests, which use the cluster anyway).
        """
        if self.options.workers is not None:
            return list(self.options.workers)
        cpus = self.planned_cpus()
        if cpus is None:
            cpus = self.connect().info()["total_cpus"]
        return default_workers(cpus)

    def scaling_configs(self) -> list[ScalingConfig]:
        opts = self.options
        return scaling_grid(opts.backends, opts.serve_modes, self.workers(), opts.batch_sizes)

    def require_placeable(self, config: ScalingConfig, cpus_per_worker: float = 1.0) -> None:
        """Skip ``config`` (with the reason) if the cluster cannot place its workers.

        With ``--ray-address k8s --k8s-scale`` the worker group is scaled up instead.
        """
        if not config.distributed:
            return
        cluster = self.connect()
        info = cluster.info()
        needed = config.workers * cpus_per_worker
        if needed <= info["total_cpus"]:
            return
        if cluster.k8s is not None and self.options.k8s_scale:
            self._scale_k8s(cluster, needed)
            info = cluster.refresh()
            if needed <= info["total_cpus"]:
                return
        hint = (
            " (pass --k8s-scale to grow the RayCluster's worker group)"
            if cluster.mode == "k8s" else
            f"; use --workers up to {int(info['total_cpus'] // cpus_per_worker)}"
        )
        pytest.skip(
            f"{config.id}: {config.workers} workers x {cpus_per_worker:g} CPU need {needed:g} CPUs, "
            f"the cluster has {info['total_cpus']} on {info['nodes']} node(s){hint}"
        )

    def _scale_k8s(self, cluster: ClusterSession, needed_cpus: float) -> None:
        """Grow the KubeRay worker group until the cluster has ``needed_cpus`` Ray CPUs."""
        ensure_cpus = getattr(cluster.k8s, "ensure_cpus", None)
        if not callable(ensure_cpus):
            pytest.skip("explainers.cluster.kuberay cannot scale this cluster (its connection has no ensure_cpus)")
        self._k8s_scaled = True
        ensure_cpus(needed_cpus)

    # -- reporting ----------------------------------------------------------------
    def header_lines(self) -> list[str]:
        opts = self.options
        where = f"address {opts.ray_address}"
        if opts.address_mode == "local":
            where += f" ({opts.nodes} node{'s' if opts.nodes > 1 else ''}, {self.planned_cpus()} CPUs)"
        elif opts.address_mode == "k8s":
            where += f" (namespace {opts.k8s.namespace}, RayCluster {opts.k8s.cluster})"
        info = self.cluster_info()
        if info is not None:
            where = (f"address {info['address_mode']} {info['address']} ({info['nodes']} nodes, "
                     f"CPUs per node {info['cpus_per_node']}, {info['total_cpus']} CPUs)")
        else:
            where += "; connected when a test needs the cluster"
        return [
            f"kernelshap-ray: ray {ray_version()}, python {platform.python_version()}, {where}",
            f"kernelshap-ray: n_instances={opts.n_instances} nsamples={opts.nsamples} nruns={opts.nruns} "
            f"backends={','.join(opts.backends)} serve_modes={','.join(opts.serve_modes)} "
            f"batch_sizes={','.join(map(str, opts.batch_sizes))} "
            f"workers={','.join(map(str, opts.workers)) if opts.workers else 'auto (1, 2, 4, ... CPUs)'}"
            + (f" min_efficiency={opts.min_efficiency:g}" if opts.min_efficiency is not None else "")
            + (f" max_overhead_share={opts.max_overhead_share:g}" if opts.max_overhead_share is not None else ""),
        ]

    def machine_info(self) -> dict[str, Any]:
        """The Ray fields of pytest-benchmark's machine info (planned values before connecting)."""
        info = self.cluster_info()
        if info is None:
            nodes = self.options.nodes if self.options.address_mode == "local" else None
            return {
                "ray_version": ray_version(),
                "ray_address_mode": self.options.address_mode,
                "ray_nodes": nodes,
                "ray_cpus": self.planned_cpus(),
                **({"k8s_cluster": self.options.k8s.cluster} if self.options.address_mode == "k8s" else {}),
            }
        out = {
            "ray_version": info["ray_version"],
            "ray_address_mode": info["address_mode"],
            "ray_nodes": info["nodes"],
            "ray_cpus": info["total_cpus"],
        }
        if info["address_mode"] == "k8s":
            out["k8s_cluster"] = info.get("k8s_cluster") or self.options.k8s.cluster
            describe = getattr(self.cluster.k8s if self.cluster else None, "describe", None)
            if callable(describe):
                try:
                    out.update({k: v for k, v in describe().items() if k.startswith("k8s_")})
                except Exception:  # noqa: BLE001 - machine info must not fail the run
                    pass
        return out

    def extra_info(
        self,
        config: ScalingConfig,
        mean_seconds: float,
        *,
        nsamples: int,
        exact: bool,
        nodes_used: int | None,
        serial_seconds: float | None = None,
    ) -> dict[str, Any]:
        """The ``extra_info`` record of ARCHITECTURE.md for one benchmark.

        ``serial_seconds``: the serial time to compare with (default: the mean of the
        session's serial baseline benchmark, if it ran).
        """
        n = self.options.n_instances
        base = self.serial_seconds if serial_seconds is None else serial_seconds
        speedup = None if base is None else base / mean_seconds
        return {
            "backend": config.backend,
            "serve_mode": config.serve_mode,
            "workers": config.workers,
            "batch_size": config.batch_size,
            "n_instances": n,
            "nsamples": int(nsamples),
            "exact": bool(exact),
            "explanations_per_s": n / mean_seconds,
            "speedup": speedup,
            "efficiency": None if speedup is None else speedup / config.workers,
            "nodes_used": nodes_used,
        }


    def check_gates(self, config: ScalingConfig, extra_info: dict[str, Any]) -> None:
        """Fail the benchmark (``pytest.fail``) if it misses ``--min-efficiency`` or ``--max-overhead-share``.

        Called after ``extra_info`` is recorded, so the saved run keeps the figures that failed.
        A gate is left out without its option, for the serial baseline, and without its figure
        (``paired_efficiency`` needs serial rounds to pair with; ``overhead_cpu_share`` a local
        cluster, whose processes this machine can account).
        """
        if not config.distributed:
            return
        failures = []
        floor, efficiency = self.options.min_efficiency, extra_info.get("paired_efficiency")
        if floor is not None and efficiency is not None and efficiency < floor:
            failures.append(
                f"paired efficiency {efficiency:.2f} (median speedup {efficiency * config.workers:.2f}x at "
                f"{config.workers} worker{'s' if config.workers > 1 else ''}) is below --min-efficiency {floor:g}"
            )
        ceiling, share = self.options.max_overhead_share, extra_info.get("overhead_cpu_share")
        if ceiling is not None and share is not None and share > ceiling:
            cpu = extra_info["machine_cpu_seconds"]
            failures.append(
                f"overhead CPU share {share:.2f} (per call: driver {cpu['driver']:.2f} CPU-s, Ray's processes "
                f"{cpu['ray']:.2f} CPU-s, workers {cpu['workers']:.2f} CPU-s) is above --max-overhead-share {ceiling:g}"
            )
        if failures:
            pytest.fail(f"{config.id}: " + "; ".join(failures), pytrace=False)


def get_session(config: pytest.Config) -> KernelShapRaySession:
    """The plugin's session object of this pytest run."""
    return config.stash[_SESSION_KEY]


# --------------------------------------------------------------------------- helpers for the suite
def assert_same_values(values: Any, reference: np.ndarray, what: str, tol: float = TOLERANCE) -> None:
    """``AssertionError`` unless ``values`` has the reference's shape and ``max|diff| <= tol``."""
    values = np.asarray(values)
    assert values.shape == reference.shape, (
        f"{what}: values have shape {values.shape}, the serial reference {reference.shape}"
    )
    diff = float(np.max(np.abs(values - reference))) if values.size else 0.0
    assert diff <= tol, f"{what}: values differ from the serial reference by {diff:.3g} (> {tol:g})"


def close_explainer(explainer: Any) -> None:
    """Call ``explainer.close()`` if it has one."""
    close = getattr(explainer, "close", None)
    if callable(close):
        close()


class ActorNodeTracker:
    """Nodes that the workers of one backend run ran on.

    Uses ``explainer.last_run_info["node_ids"]`` when the explainer reports it;
    otherwise the actors created since :meth:`start` in Ray's actor table (kept by the
    GCS also after the actors died), limited to the backends' worker classes.
    """

    WORKER_CLASSES = ("KernelShapPoolWorker", "KernelShapReplica", "KernelShapDataWorker",
                      "ServeReplica", "MapWorker")

    def __init__(self) -> None:
        self._before: set[str] | None = None

    def start(self) -> "ActorNodeTracker":
        self._before = set(_actor_table())
        return self

    def nodes_used(self, explainer: Any = None) -> int | None:
        info = getattr(explainer, "last_run_info", None)
        if isinstance(info, dict) and info.get("node_ids"):
            return len(set(info["node_ids"]))
        if self._before is None:
            return None
        nodes = {
            node for actor_id, (cls, node) in _actor_table().items()
            if actor_id not in self._before and node and any(k in cls for k in self.WORKER_CLASSES)
        }
        return len(nodes) or None


def _actor_table() -> dict[str, tuple[str, str]]:
    """``actor id -> (class name, node id)`` of every actor the GCS knows (alive or dead)."""
    import ray

    def read() -> dict[str, tuple[str, str]]:
        from ray._private import state

        table = state.actors()
        return {
            aid: (str(a.get("ActorClassName", "")), str((a.get("Address") or {}).get("NodeID", "")))
            for aid, a in table.items()
        }

    if ray.util.client.ray.is_connected():  # Ray Client: read it inside the cluster
        return ray.get(ray.remote(num_cpus=0)(read).remote())
    return read()


class ExplainerFactory:
    """Builds the explainer of a configuration for the session's workload.

    ``factory(config)`` (a :class:`ScalingConfig`) or ``factory("pool", workers=2,
    batch_size=5)``: ``KernelShap`` for ``serial``, else ``DistributedKernelShap``; on a
    remote cluster (``ray://``, ``k8s``) an :class:`InClusterExplainer` that runs the
    backend inside the cluster. Every result has ``explain(X)`` and may have ``close()``.
    """

    def __init__(self, session: KernelShapRaySession, workload: Any) -> None:
        self.session = session
        self.workload = workload

    def engine_kwargs(self) -> dict[str, Any]:
        w = self.workload
        return dict(
            predict=w.predict_proba if hasattr(w, "predict_proba") else w.model.predict_proba,
            background=w.background, groups=w.groups, group_names=w.group_names,
            link="logit", nsamples=self.session.options.nsamples, seed=0,
        )

    def kwargs(self, config: ScalingConfig) -> dict[str, Any]:
        """Keyword arguments of ``DistributedKernelShap`` for ``config``."""
        return dict(
            self.engine_kwargs(), backend=config.backend, workers=config.workers,
            batch_size=config.batch_size, serve_mode=config.serve_mode or "ray",
            num_cpus_per_worker=1.0, progress=False,
            placement_timeout_s=self.session.options.placement_timeout_s,
        )

    def __call__(self, config: ScalingConfig | str = "serial", **overrides: Any) -> Any:
        if isinstance(config, str):
            config = ScalingConfig(config, **overrides)
        if not config.distributed:
            from explainers.kernelshap.engine import KernelShap

            return SerialExplainer(KernelShap(**self.engine_kwargs()))
        cluster = self.session.connect()
        if cluster.is_remote:
            return InClusterExplainer(self.kwargs(config), cluster.address)
        from explainers.kernelshap.distributed import DistributedKernelShap

        return DistributedKernelShap(**self.kwargs(config))


class SerialExplainer:
    """The serial baseline: the engine on one core (BLAS limited to one thread, as in each
    Ray worker), so that speedup = serial time / time on ``workers`` CPUs."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine

    def explain(self, X: np.ndarray) -> np.ndarray:
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=1):
            return self.engine.explain(X)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.engine, name)


class InClusterExplainer:
    """``explain(X)`` through an :class:`explainers.kernelshap.distributed.InClusterDriver` actor: the
    backend runs inside the cluster (Serve handles do not work over Ray Client), its workers
    start once in :meth:`start`, and ``seconds`` lists the in-cluster time of each call (the
    benchmark also times the client round trip).
    """

    def __init__(self, explainer_kwargs: dict[str, Any], address: str) -> None:
        self.explainer_kwargs = explainer_kwargs
        self.address = address
        self.seconds: list[float] = []
        self._driver: Any = None

    def start(self) -> "InClusterExplainer":
        import ray

        from explainers.kernelshap.distributed import InClusterDriver

        if self._driver is None:
            with connection_guard(self.address):
                self._driver = InClusterDriver.remote(self.explainer_kwargs)
                ray.get(self._driver.start.remote())
        return self

    def explain(self, X: np.ndarray) -> np.ndarray:
        import ray

        self.start()
        with connection_guard(self.address):
            values, seconds = ray.get(self._driver.explain.remote(np.asarray(X)))
        self.seconds.append(float(seconds))
        return values

    def close(self) -> None:
        import ray

        driver, self._driver = self._driver, None
        if driver is not None:
            try:
                teardown_call(lambda: ray.get(driver.close.remote(), timeout=DRIVER_CLOSE_TIMEOUT_S))
            finally:
                teardown_call(ray.kill, driver)


# --------------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_SESSION_KEY] = KernelShapRaySession(config, PluginOptions.from_config(config))


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    return get_session(config).header_lines()


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the serial baselines first (speedups need them); set the table defaults for scaling runs."""
    def is_serial(item: pytest.Item) -> bool:
        cfg = getattr(getattr(item, "callspec", None), "params", {}).get("scaling_config")
        return isinstance(cfg, ScalingConfig) and not cfg.distributed

    has_scaling = any(
        isinstance(getattr(getattr(i, "callspec", None), "params", {}).get("scaling_config"), ScalingConfig)
        for i in items
    )
    if not has_scaling:
        return
    items[:] = [i for i in items if is_serial(i)] + [i for i in items if not is_serial(i)]
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None:
        if not _given(config, "--benchmark-group-by"):
            bs.group_by = DEFAULT_GROUP_BY
        if not _given(config, "--benchmark-sort"):
            bs.sort = DEFAULT_SORT


def placement_failure(exc: BaseException) -> PlacementError | None:
    """The :class:`PlacementError` behind ``exc``: itself, or the cause a Ray task error carries."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PlacementError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A configuration the cluster cannot place in time is skipped with the reason, not failed."""
    report = yield
    if call.excinfo is not None and report.failed:
        placement = placement_failure(call.excinfo.value)
        if placement is not None:
            path, line, _ = item.location
            report.outcome = "skipped"
            report.longrepr = (str(item.path), (line or 0) + 1, f"Skipped: cannot be placed: {placement}")
    return report


def _given(config: pytest.Config, flag: str) -> bool:
    """Whether ``flag`` was given on the command line, in ``PYTEST_ADDOPTS`` or in ini ``addopts``."""
    args = list(config.invocation_params.args)
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    try:
        args += list(config.getini("addopts"))
    except (ValueError, KeyError):  # pragma: no cover
        pass
    return any(str(a) == flag or str(a).startswith(flag + "=") for a in args)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    machine_info.update(get_session(config).machine_info())


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Fill speedups the tests could not (no serial baseline before them) from this run's serial one."""
    fill_speedups(output_json)


def fill_speedups(output_json: dict[str, Any]) -> None:
    """Set missing ``speedup``/``efficiency`` from the serial benchmark of the same work.

    A serial benchmark is the baseline of the benchmarks with its ``n_instances`` and
    ``nsamples``; a benchmark without such a baseline keeps ``None``.
    """
    benches = output_json.get("benchmarks", [])

    def work(info: dict[str, Any]) -> tuple[Any, Any]:
        return info.get("n_instances"), info.get("nsamples")

    baselines: dict[tuple[Any, Any], float] = {}
    for bench in benches:
        info = bench.get("extra_info") or {}
        if info.get("backend") == "serial":
            baselines.setdefault(work(info), bench["stats"]["mean"])
    for bench in benches:
        info = bench.get("extra_info") or {}
        base = baselines.get(work(info))
        if "backend" in info and info.get("speedup") is None and base is not None:
            info["speedup"] = base / bench["stats"]["mean"]
            info["efficiency"] = info["speedup"] / max(1, int(info.get("workers") or 1))


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    info = get_session(config).cluster_info()
    if info is not None:
        terminalreporter.write_line(
            f"kernelshap-ray: ran on {info['address_mode']} cluster {info['address']}: {info['nodes']} node(s), "
            f"CPUs per node {info['cpus_per_node']}, ray {info['ray_version']}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the report (``--report-dir``) from this session's benchmarks."""
    config = session.config
    ks = get_session(config)
    bs = getattr(config, "_benchmarksession", None)
    if ks.options.report_dir is None or bs is None:
        return
    # the report charts the explainers' records; other benchmarks of the session (the engine
    # against shap, the model alone) are in the saved run but not in its figures
    benchmarks = [b for b in bs.benchmarks if b and not b.has_error and "backend" in (b.extra_info or {})]
    if not benchmarks:
        return
    output = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=benchmarks, include_data=True,
        machine_info=bs.get_machine_info(),
        commit_info=config.hook.pytest_benchmark_generate_commit_info(config=config),
    )
    fill_speedups(output)
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    from explainers.bench.report import ReportError, write_report

    try:
        result = write_report(output, ks.options.report_dir)
    except ReportError as exc:  # the benchmarks are saved; only the pictures are missing
        if reporter is not None:
            reporter.write_line(f"kernelshap-ray: no report written: {exc}", red=True)
        return
    if reporter is not None:
        files = getattr(result, "files", None) or {}
        listed = ", ".join(str(p) for p in files.values()) or str(ks.options.report_dir)
        reporter.write_line(f"kernelshap-ray: report written: {listed}")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def kernelshap_ray(pytestconfig: pytest.Config) -> KernelShapRaySession:
    """The plugin's session object (options, cluster, serial baseline); does not start Ray."""
    return get_session(pytestconfig)


@pytest.fixture(scope="session")
def ray_cluster(kernelshap_ray: KernelShapRaySession) -> Iterable[ClusterSession]:
    """The Ray cluster of the run: started (``local``) or attached once; closed at the end."""
    cluster = kernelshap_ray.connect()
    try:
        yield cluster
    finally:
        kernelshap_ray.close()


@pytest.fixture(scope="session")
def adult_workload() -> Any:
    """The reference Adult workload (``explainers.workloads.adult.load_workload()``)."""
    from explainers.workloads.adult import load_workload

    return load_workload()


@pytest.fixture(scope="session")
def explain_instances(kernelshap_ray: KernelShapRaySession, adult_workload: Any) -> np.ndarray:
    """The first ``--n-instances`` rows of ``adult_workload.X_explain``: ``(n, 49)`` float64."""
    n, X = kernelshap_ray.options.n_instances, adult_workload.X_explain
    if n > len(X):
        raise pytest.UsageError(f"--n-instances {n} is not allowed: the workload has {len(X)} instances")
    return np.ascontiguousarray(X[:n])


@pytest.fixture(scope="session")
def explainer_factory(kernelshap_ray: KernelShapRaySession, adult_workload: Any) -> ExplainerFactory:
    """``factory(config)`` -> an explainer (``explain(X)``) for a :class:`ScalingConfig` or a backend name."""
    return ExplainerFactory(kernelshap_ray, adult_workload)


def paired_efficiency(serial_seconds: Sequence[float], round_seconds: Sequence[float], workers: int) -> float | None:
    """Median over rounds of ``serial_seconds[i] / round_seconds[i]``, divided by ``workers``.

    Each timed round is paired with the serial round run just before it, so a slow minute
    slows both; the median ignores a single slow round of three. ``None`` without pairs.
    """
    ratios = [s / t for s, t in zip(serial_seconds, round_seconds) if t > 0]
    return float(np.median(ratios)) / workers if ratios else None


class SerialRounds:
    """``rounds()`` times one serial explanation of ``X`` per call, so that each timed
    round of a distributed benchmark can be paired with a serial round of the same minute
    (``pedantic(..., setup=rounds)``); ``seconds`` holds the times, ``values`` the last
    result."""

    def __init__(self, engine: "SerialExplainer", X: np.ndarray) -> None:
        self.engine, self.X = engine, X
        self.seconds: list[float] = []
        self.values: np.ndarray | None = None

    def __call__(self) -> None:
        t0 = time.perf_counter()
        self.values = self.engine.explain(self.X)
        self.seconds.append(time.perf_counter() - t0)


@pytest.fixture
def serial_rounds(adult_workload: Any, explain_instances: np.ndarray, kernelshap_ray: KernelShapRaySession) -> SerialRounds:
    """A fresh :class:`SerialRounds` on the plugin's own serial engine (built once per session)."""
    if kernelshap_ray.serial_engine is None:
        kernelshap_ray.serial_engine = ExplainerFactory(kernelshap_ray, adult_workload)("serial")
    return SerialRounds(kernelshap_ray.serial_engine, explain_instances)


@pytest.fixture(scope="session")
def serial_reference(adult_workload: Any, explain_instances: np.ndarray, kernelshap_ray: KernelShapRaySession) -> np.ndarray:
    """Serial KernelSHAP values of ``explain_instances``: ``(n, 12, 2)``, computed once per session.

    Built with the plugin's own factory (not the ``explainer_factory`` fixture, which a
    test suite may override), so the reference is always the engine's.
    """
    start = time.perf_counter()
    engine = ExplainerFactory(kernelshap_ray, adult_workload)("serial")
    values = np.asarray(engine.explain(explain_instances))
    kernelshap_ray.serial_reference_seconds = time.perf_counter() - start
    kernelshap_ray.nsamples, kernelshap_ray.exact = int(engine.nsamples_), bool(engine.exact)
    values.setflags(write=False)
    return values
