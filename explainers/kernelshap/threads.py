"""The thread limit of the engine's own model calls, and the CPU kernel its values depend on.

BLAS libraries split a model call's rows between threads, and OpenBLAS returns a different
last bit for some rows at different thread counts. The engine therefore runs its model calls
(and its solves) at a thread count of its own (``KernelShap(model_threads=...)``), whatever
the calling process has, so that a serial run and every Ray worker compute the same bits.

What those bits still depend on is the *CPU kernel*: the BLAS build and the code path it
picks for the CPU (threadpoolctl's ``architecture``), and the CPU model. :func:`cpu_kernel`
names it, so that a cluster of different machines is seen, not silently trusted.
"""
from __future__ import annotations

import contextlib
import platform
import sys
from functools import lru_cache
from typing import Any

#: ``model_threads`` default: one thread, the same in the caller and in every worker
DEFAULT_MODEL_THREADS = 1

_controller: Any = None
_controller_modules = -1


def _thread_controller() -> Any:
    """A threadpoolctl controller of the libraries loaded now (found again once more modules load).

    Building one scans the loaded libraries (about 0.5 ms); using it costs about 10 us.
    """
    global _controller, _controller_modules
    if _controller is None or _controller_modules != len(sys.modules):
        from threadpoolctl import ThreadpoolController

        _controller, _controller_modules = ThreadpoolController(), len(sys.modules)
    return _controller


def check_model_threads(model_threads: Any) -> int | None:
    """``model_threads`` validated: a positive int, or None (leave the caller's threads)."""
    if model_threads is None:
        return None
    if isinstance(model_threads, bool) or not isinstance(model_threads, int) or model_threads < 1:
        raise ValueError(f"model_threads must be a positive int or None, got {model_threads!r}")
    return model_threads


def limited_threads(model_threads: int | None) -> contextlib.AbstractContextManager[Any]:
    """BLAS and OpenMP threads limited to ``model_threads`` inside the block (None: unchanged)."""
    if model_threads is None:
        return contextlib.nullcontext()
    return _thread_controller().limit(limits=model_threads)


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_kernel() -> str:
    """What the engine's bits depend on in this process: the CPU model and each BLAS library's
    implementation and the kernel it chose for this CPU, e.g. ``"AMD EPYC | openblas Haswell"``.

    Versions are left out (NumPy's and SciPy's OpenBLAS builds differ in version, not kernel),
    so that a process that has loaded only NumPy names the same kernel as one that has loaded
    scikit-learn too.
    """
    import numpy  # noqa: F401 - its BLAS is the one every process here has

    libraries = sorted({
        " ".join(str(info[k]) for k in ("internal_api", "architecture") if info.get(k))
        for info in _thread_controller().info()
        if info.get("user_api") == "blas"
    })
    return " | ".join([_cpu_model(), *libraries])


def _node_kernel() -> str:
    return cpu_kernel()


def cluster_cpu_kernels(timeout_s: float) -> dict[str, str]:
    """The :func:`cpu_kernel` of every alive node of the connected Ray cluster, by node id.

    One task of no CPUs per node; a node that does not answer within ``timeout_s`` is
    ``"unknown (no answer in N s)"``.
    """
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0)(_node_kernel)
    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    refs = {
        node: probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote()
        for node in nodes
    }
    ready, _ = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout_s)
    answered = set(ready)
    kernels = {}
    for node, ref in refs.items():
        if ref in answered:
            kernels[node] = ray.get(ref)
        else:
            ray.cancel(ref, force=True)
            kernels[node] = f"unknown (no answer in {timeout_s:g} s)"
    return kernels
