"""Where a call's CPU time went on this machine: the workers, the driver, Ray's own processes.

On a machine whose cores the workers fill, every CPU-second that the driver (Serve's
router, Ray Data's executor) or Ray's system processes (raylet, GCS, Serve's controller,
Ray Data's coordinating actors) spend during a call is taken from the workers: this is
what keeps a backend below the plain processes' ceiling (``perf/test_backends.py``).

``take_snapshot()`` reads the CPU time (user + system, all threads) of every process on
the machine, with its role; ``cpu_by_role(before, after)`` is the CPU-seconds spent
between two snapshots, per role:

- ``"workers"``: pool actors, Serve replicas, Ray Data map actors of this project (their
  process titles name :data:`WORKER_CLASSES`), and any ``worker_pids`` given;
- ``"driver"``: this process;
- ``"ray"``: every other Ray process (``ray::`` process titles, and programs of the ``ray``
  package: raylet, GCS, dashboard agent, log monitor);
- ``"other"``: the rest of the machine (other tenants, the kernel).

Only meaningful where the workers run on this machine (a local cluster).
"""
from __future__ import annotations

import os
import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable

import psutil

from explainers.kernelshap.backends import WORKER_CLASSES

ROLES = ("workers", "driver", "ray", "other")


def _ray_dir() -> str:
    import ray

    return os.path.dirname(ray.__file__)


def role_of(pid: int, cmdline: list[str], *, driver_pid: int, worker_pids: frozenset[int],
            ray_dir: str) -> str:
    """The role (one of :data:`ROLES`) of process ``pid`` whose command line is ``cmdline``."""
    if pid == driver_pid:
        return "driver"
    title = cmdline[0] if cmdline else ""
    if pid in worker_pids or (title.startswith("ray::") and any(c in title for c in WORKER_CLASSES)):
        return "workers"
    if title.startswith("ray::") or any(arg.startswith(ray_dir) for arg in cmdline):
        return "ray"
    return "other"


@dataclass(frozen=True)
class CpuSnapshot:
    """``cpu``: pid -> (role, CPU seconds used by that process so far)."""

    cpu: dict[int, tuple[str, float]] = field(default_factory=dict)


def take_snapshot(worker_pids: Iterable[int] = ()) -> CpuSnapshot:
    """CPU time and role of every process on this machine (a few ms for a few hundred processes)."""
    driver_pid, pids, ray_dir = os.getpid(), frozenset(worker_pids), _ray_dir()
    cpu: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        times = proc.info["cpu_times"]
        if times is None:  # gone, or not ours to read
            continue
        role = role_of(proc.pid, proc.info["cmdline"] or [], driver_pid=driver_pid, worker_pids=pids,
                       ray_dir=ray_dir)
        cpu[proc.pid] = (role, times.user + times.system)
    return CpuSnapshot(cpu)


def cpu_by_role(before: CpuSnapshot, after: CpuSnapshot) -> dict[str, float]:
    """CPU-seconds per role spent between the two snapshots.

    A process is counted in the role it has in ``after`` (a Ray worker process takes its
    actor's title once the actor starts); one that started in between counts from zero; one
    that ended in between is not counted.
    """
    spent = dict.fromkeys(ROLES, 0.0)
    for pid, (role, seconds) in after.cpu.items():
        spent[role] += max(0.0, seconds - before.cpu.get(pid, (role, 0.0))[1])
    return spent


def machine_cpu_summary(rounds: list[dict[str, float]]) -> dict:
    """``extra_info`` entries from the :func:`cpu_by_role` of each timed round.

    ``machine_cpu_seconds``: per role, the median over rounds of the CPU-seconds per call;
    ``overhead_cpu_share``: the share of the driver and Ray's processes in the CPU that the
    call itself used (workers + driver + ray), from those medians. Empty without rounds.
    """
    if not rounds:
        return {}
    median = {role: float(statistics.median(r[role] for r in rounds)) for role in ROLES}
    used = median["workers"] + median["driver"] + median["ray"]
    return {"machine_cpu_seconds": median,
            "overhead_cpu_share": (median["driver"] + median["ray"]) / used if used > 0 else None}


class CpuPerRound:
    """The machine's CPU by role in each timed round of ``benchmark.pedantic``.

    Pass it as ``setup=``: each call closes the window of the round before (if any), runs
    ``setup`` (untimed work such as a paired serial round, kept out of the window), and opens
    a window for the round that follows. :meth:`finish` closes the last window and returns
    one :func:`cpu_by_role` per round, warm-up rounds included, in order.
    """

    def __init__(self, setup: Callable[[], None] | None = None, worker_pids: Iterable[int] = ()) -> None:
        self.setup, self.worker_pids = setup, tuple(worker_pids)
        self.rounds: list[dict[str, float]] = []
        self._open: CpuSnapshot | None = None

    def __call__(self) -> None:
        self._close()
        if self.setup is not None:
            self.setup()
        self._open = take_snapshot(self.worker_pids)

    def _close(self) -> None:
        if self._open is not None:
            self.rounds.append(cpu_by_role(self._open, take_snapshot(self.worker_pids)))
            self._open = None

    def finish(self) -> list[dict[str, float]]:
        self._close()
        return self.rounds
