"""Ray backends of :class:`explainers.kernelshap.distributed.DistributedKernelShap`.

Each module exposes ``Workers(engine_ref, config)`` with ``explain(X, assembler) -> dict``
(puts every row's values of ``X`` (n, D) into ``assembler``; returns run facts) and
``wait_ready()`` (block until the workers are up) and
``close()`` (nothing of it left running afterwards).
"""

from explainers.kernelshap.backends.common import (  # noqa: E402 (no Ray import: safe for the plugin)
    BACKENDS,
    DEFAULT_PLACEMENT_TIMEOUT_S,
    SERVE_MODES,
    WORKER_CLASSES,
    PlacementError,
    WorkerStartError,
    backend_label,
)

__all__ = ["BACKENDS", "DEFAULT_PLACEMENT_TIMEOUT_S", "SERVE_MODES", "WORKER_CLASSES", "PlacementError",
           "WorkerStartError", "backend_label"]
