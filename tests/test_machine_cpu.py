"""The machine's CPU per call by role (perf/test_backends.py): roles, differences, summary, and
a real account of plain processes doing work."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from explainers import KernelShap
from explainers.bench.bare_processes import BareProcesses
from explainers.bench.machine_cpu import (
    CpuPerRound,
    CpuSnapshot,
    cpu_by_role,
    machine_cpu_summary,
    role_of,
    take_snapshot,
)

RAY_DIR = "/venv/lib/python3.11/site-packages/ray"


@pytest.mark.parametrize("pid, cmdline, role", [
    (1, ["python", "-m", "pytest"], "driver"),
    (2, ["ray::KernelShapPoolWorker.explain"], "workers"),
    (3, ["ray::ServeReplica:kernelshap-ab12:KernelShapReplica"], "workers"),
    (4, ["ray::MapWorker(ReadMinibatchSource->MapBatches(KernelShapDataWorker))"], "workers"),
    (5, ["python", "-c", "from multiprocessing.spawn import spawn_main"], "workers"),
    (6, ["ray::ServeController"], "ray"),
    (7, ["ray::IDLE"], "ray"),
    (8, [f"{RAY_DIR}/core/src/ray/raylet/raylet", "--node-id=1"], "ray"),
    (9, ["python", "-u", f"{RAY_DIR}/_private/log_monitor.py"], "ray"),
    (10, ["python", "-c", "from multiprocessing.spawn import spawn_main"], "other"),
    (11, [], "other"),
])
def test_role_of_a_process(pid, cmdline, role):
    assert role_of(pid, cmdline, driver_pid=1, worker_pids=frozenset({5}), ray_dir=RAY_DIR) == role


def test_cpu_by_role_counts_what_each_process_spent_in_between():
    before = CpuSnapshot({1: ("driver", 10.0), 2: ("ray", 5.0), 3: ("other", 7.0), 4: ("other", 1.0)})
    after = CpuSnapshot({
        1: ("driver", 10.25),
        2: ("workers", 6.5),  # became an actor of ours: counted as what it is now
        3: ("other", 7.0),
        5: ("workers", 0.75),  # started in between: counted from zero
    })  # 4 ended in between: not counted
    assert cpu_by_role(before, after) == {"workers": 2.25, "driver": 0.25, "ray": 0.0, "other": 0.0}


def test_summary_is_the_median_per_role_and_the_overhead_share():
    rounds = [{"workers": w, "driver": d, "ray": r, "other": 9.0}
              for w, d, r in [(3.0, 0.1, 0.5), (4.0, 0.2, 0.0), (5.0, 0.6, 0.3)]]
    summary = machine_cpu_summary(rounds)
    assert summary["machine_cpu_seconds"] == {"workers": 4.0, "driver": 0.2, "ray": 0.3, "other": 9.0}
    assert summary["overhead_cpu_share"] == pytest.approx(0.5 / 4.5)
    assert machine_cpu_summary([]) == {}


def test_snapshot_sees_this_process_as_the_driver():
    snapshot = take_snapshot()
    assert snapshot.cpu[os.getpid()][0] == "driver"
    assert len(snapshot.cpu) > 1


def test_work_of_plain_processes_is_counted_as_the_workers():
    rng = np.random.default_rng(0)
    background, X = rng.normal(size=(50, 8)), rng.normal(size=(1500, 8))
    engine = KernelShap(lambda rows: np.tanh(rows @ np.arange(1.0, 9.0)), background, nsamples=200, seed=1)
    with BareProcesses(engine, workers=2, batch_size=100) as processes:
        processes.start(X)
        assert len(processes.pids) == 2
        before, t0 = take_snapshot(processes.pids), time.perf_counter()
        processes.explain(X)
        wall = time.perf_counter() - t0
        spent = cpu_by_role(before, take_snapshot(processes.pids))
    assert spent["workers"] > 0.5 * wall  # two busy processes: close to 2 x wall
    assert spent["workers"] > 5 * spent["driver"]


def _spin(seconds: float) -> None:
    t0 = time.process_time()
    while time.process_time() - t0 < seconds:
        pass


def test_per_round_accounting_keeps_the_setup_out_of_each_round():
    setups: list[int] = []

    def setup() -> None:  # like a paired serial round: untimed, not to be counted
        setups.append(1)
        _spin(0.4)

    per_round = CpuPerRound(setup)
    for _ in range(2):  # what benchmark.pedantic does: setup, then the timed round
        per_round()
        _spin(0.1)
    rounds = per_round.finish()
    assert len(setups) == 2 and len(rounds) == 2
    assert all(0.05 <= r["driver"] <= 0.3 for r in rounds), rounds
    assert per_round.finish() == rounds  # finishing again adds nothing
