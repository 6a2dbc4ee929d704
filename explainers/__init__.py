"""Exact, fast KernelSHAP and its distribution on Ray.

``KernelShap`` is the serial engine; ``DistributedKernelShap`` runs it on a Ray
cluster through an actor pool, Ray Serve or Ray Data. Ray is imported only when
the distributed explainer is used.
"""
from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["KernelShap", "DistributedKernelShap", "__version__"]

_LAZY = {
    "KernelShap": "explainers.kernelshap.engine",
    "DistributedKernelShap": "explainers.kernelshap.distributed",
}

if TYPE_CHECKING:  # pragma: no cover
    from explainers.kernelshap.distributed import DistributedKernelShap
    from explainers.kernelshap.engine import KernelShap


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'explainers' has no attribute {name!r}")
