"""Ending the processes a Ray started here leaves running after ``ray.shutdown()``."""
from __future__ import annotations

import subprocess
import sys
import time

import psutil
import pytest

from explainers.cluster.leftovers import RayLeftoverWarning, end_leftovers, ray_processes


def _sleeper(*extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", *extra])


def test_ray_processes_are_this_process_descendants_that_run_ray():
    looks_like_ray = _sleeper("/venv/lib/python3.11/site-packages/ray/_private/workers/default_worker.py")
    other = _sleeper("/home/ray/not-a-ray-module.py")  # a KubeRay image's home is /home/ray
    try:
        time.sleep(0.3)  # the interpreter has replaced the fork's command line
        pids = {p.pid for p in ray_processes()}
        assert looks_like_ray.pid in pids and other.pid not in pids
    finally:
        for child in (looks_like_ray, other):
            child.kill()
            child.wait(timeout=10)


def test_a_process_that_outlives_the_shutdown_is_ended_and_named():
    stuck = _sleeper()
    started = time.monotonic()
    with pytest.warns(RayLeftoverWarning, match=f"{stuck.pid}"):
        assert end_leftovers([psutil.Process(stuck.pid)], timeout=0.2) == [stuck.pid]
    assert stuck.wait(timeout=10) is not None and time.monotonic() - started < 10


def test_processes_that_exit_by_themselves_are_left_alone():
    done = subprocess.Popen([sys.executable, "-c", "pass"])
    process = psutil.Process(done.pid)
    done.wait(timeout=10)
    assert end_leftovers([process], timeout=1.0) == []
    assert end_leftovers([]) == []
