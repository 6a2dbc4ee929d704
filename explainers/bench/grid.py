"""The configurations a run benchmarks: one :class:`ScalingConfig` per test, built from the options.

Every perf file is parametrised here (through the plugin's ``pytest_generate_tests``), so the
options govern all of them:

- ``scaling_config`` (``perf/test_scaling.py``): the serial baseline, then every backend x
  Serve mode x batch size x worker count (x reuse of coalition values, with
  ``--reuse-coalitions both``);
- ``backend_config`` (``perf/test_backends.py``): the serial baseline, then per worker count the
  plain processes and every backend (x reuse), at the largest batch size;
- ``mission_config`` (``perf/test_mission.py``): every backend at the largest worker count and
  batch size.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from explainers.kernelshap.backends import backend_label

#: the plain-processes baseline of ``perf/test_backends.py`` (no Ray; ``explainers.bench.bare_processes``)
PROCESSES = "processes"
SERIAL = "serial"
#: the end of a configuration's id when its engine reuses coalition values
REUSE_SUFFIX = "-reuse"


@dataclass(frozen=True)
class ScalingConfig:
    """One configuration: a backend (or ``serial`` / ``processes``), its Serve mode, workers and
    batch size, and whether its engine reuses coalition values across instances (``reuse``)."""

    backend: str
    workers: int = 1
    batch_size: int | None = None
    serve_mode: str | None = None
    reuse: bool = False

    @property
    def distributed(self) -> bool:
        """Whether Ray workers run it (not the serial baseline, not the plain processes)."""
        return self.backend not in (SERIAL, PROCESSES)

    @property
    def label(self) -> str:
        """``pool``, ``serve-ray``, ``data``, ``processes`` or ``serial``."""
        return backend_label(self.backend, self.serve_mode)

    @property
    def id(self) -> str:
        """Test id: ``serial``, ``pool-w2-b5``, ``serve-ray-w2-b10``, ``processes-w1-b10``, and
        ``pool-w2-b5-reuse`` with reuse."""
        if self.backend == SERIAL:
            return SERIAL
        return f"{self.label}-w{self.workers}-b{self.batch_size}" + (REUSE_SUFFIX if self.reuse else "")

    @property
    def group(self) -> str:
        """pytest-benchmark group: one table per backend (and mode) and batch size, rows = workers."""
        if self.backend == SERIAL:
            return SERIAL
        return f"{self.label} batch={self.batch_size}" + (" reuse" if self.reuse else "")

    def __str__(self) -> str:  # shown by pytest-benchmark's ``param`` grouping
        return self.id


def backend_modes(backends: Sequence[str], serve_modes: Sequence[str]) -> list[tuple[str, str | None]]:
    """``(backend, serve mode)`` pairs: Serve once per mode, the others with mode ``None``."""
    return [(b, m) for b in backends for m in (serve_modes if b == "serve" else (None,))]


def scaling_grid(
    backends: Sequence[str],
    serve_modes: Sequence[str],
    workers: Sequence[int],
    batch_sizes: Sequence[int],
    *,
    serial: bool = True,
    reuse: Sequence[bool] = (False,),
) -> list[ScalingConfig]:
    """The serial baseline first, then every (backend, mode, batch size, workers, reuse) combination."""
    configs = [ScalingConfig(SERIAL)] if serial else []
    for backend, mode in backend_modes(backends, serve_modes):
        for batch in batch_sizes:
            for w in workers:
                configs += [ScalingConfig(backend, int(w), int(batch), mode, r) for r in reuse]
    return configs


def backends_grid(
    backends: Sequence[str], serve_modes: Sequence[str], workers: Sequence[int], batch_sizes: Sequence[int],
    *, reuse: Sequence[bool] = (False,),
) -> list[ScalingConfig]:
    """Serial, then per worker count the plain processes and each backend (x ``reuse``), at the
    largest batch size."""
    batch = max(batch_sizes)
    configs = [ScalingConfig(SERIAL)]
    for w in workers:
        configs.append(ScalingConfig(PROCESSES, int(w), batch))
        configs += [ScalingConfig(b, int(w), batch, m, r) for b, m in backend_modes(backends, serve_modes)
                    for r in reuse]
    return configs


def mission_grid(
    backends: Sequence[str], serve_modes: Sequence[str], workers: Sequence[int], batch_sizes: Sequence[int],
) -> list[ScalingConfig]:
    """Each backend at the largest worker count and batch size."""
    return [ScalingConfig(b, int(max(workers)), int(max(batch_sizes)), m) for b, m in backend_modes(backends, serve_modes)]


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


def study_workers(cpus: float) -> list[int]:
    """Every worker count from 1 to ``cpus``, as the study charted (1 to 56)."""
    return list(range(1, max(1, int(cpus)) + 1))


#: most players for which the exact benchmarks (all ``2**M - 2`` coalitions) run; beyond it they are skipped
EXACT_MAX_PLAYERS = 16


def exact_nsamples(workload: Any) -> int | None:
    """The coalition budget that makes KernelSHAP of ``workload`` exact (``2**M - 2`` for its M
    players), ``None`` above :data:`EXACT_MAX_PLAYERS`."""
    from explainers.kernelshap.coalitions import max_coalitions

    n_players = len(workload.groups) if workload.groups is not None else workload.background.shape[1]
    return max_coalitions(n_players) if n_players <= EXACT_MAX_PLAYERS else None
