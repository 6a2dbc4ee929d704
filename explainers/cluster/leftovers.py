"""The Ray processes a local Ray started here leaves running after ``ray.shutdown()``.

Ray's workers exit with their raylet, but not always: a Ray Data map worker was seen to live on
for minutes after its Ray was shut down, orphaned, and the next run on the machine counted it
among its own workers. So whoever starts a local Ray notes its processes before shutting it
down (:func:`ray_processes`) and, once it is down, ends by pid those still running
(:func:`end_leftovers`). Only processes of this process's own Ray are touched.
"""
from __future__ import annotations

import re
import warnings
from typing import Iterable

import psutil

#: seconds Ray's processes get to exit by themselves after ``ray.shutdown()``
LEFTOVER_TIMEOUT_S = 10.0
#: seconds an ended process gets between ``SIGTERM`` and ``SIGKILL``
TERMINATE_TIMEOUT_S = 3.0
#: a command line that runs a module of the Ray package (workers, agents, monitors)
_RAY_MODULE = re.compile(r"/ray/(_private|core|dashboard|autoscaler|util)/")


class RayLeftoverWarning(RuntimeWarning):
    """Processes of a Ray started here were still running after it was shut down, and were ended."""


def _is_ray(process: psutil.Process) -> bool:
    try:
        name = process.name()
        command = " ".join(process.cmdline())
    except psutil.Error:
        return False
    return name.startswith(("ray::", "raylet", "gcs_server")) or command.startswith("ray::") \
        or _RAY_MODULE.search(command) is not None


def ray_processes() -> list[psutil.Process]:
    """The Ray processes (GCS, raylet, workers) among this process's descendants, now."""
    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return []
    return [child for child in children if _is_ray(child)]


def end_leftovers(processes: Iterable[psutil.Process], timeout: float = LEFTOVER_TIMEOUT_S) -> list[int]:
    """After ``ray.shutdown()``: wait up to ``timeout`` s for ``processes`` (from
    :func:`ray_processes` before the shutdown) to exit, then end those still running (``SIGTERM``,
    then ``SIGKILL``) with a :class:`RayLeftoverWarning` naming them. Returns their pids."""
    processes = list(processes)
    if not processes:
        return []
    _, alive = psutil.wait_procs(processes, timeout=timeout)
    if not alive:
        return []
    described = []
    for process in alive:
        try:
            described.append(f"{process.pid} ({process.name()})")
            process.terminate()
        except psutil.Error:
            pass
    _, stubborn = psutil.wait_procs(alive, timeout=TERMINATE_TIMEOUT_S)
    for process in stubborn:
        try:
            process.kill()
        except psutil.Error:
            pass
    warnings.warn(RayLeftoverWarning(
        f"{len(alive)} process(es) of the Ray started here still ran {timeout:g} s after ray.shutdown() "
        f"and were ended: {', '.join(described)}"), stacklevel=2)
    return [process.pid for process in alive]
