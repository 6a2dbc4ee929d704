"""Arguments of the compiled (numba) kernels, normalised so that each kernel compiles once.

numba compiles a function once per combination of argument types, writability and layout
included: every input goes in as a read-only C-contiguous array of one dtype, and every
output must already be a writable C-contiguous array of its dtype.
"""
from __future__ import annotations

import numpy as np


def read_only(array: np.ndarray, dtype: type) -> np.ndarray:
    """``array`` as a read-only C-contiguous view of ``dtype`` (a copy only where it must convert)."""
    view = np.ascontiguousarray(array, dtype=dtype).view()
    view.flags.writeable = False
    return view


def check_writable(name: str, array: np.ndarray, dtype: type = np.float64) -> None:
    """A ``ValueError`` naming ``name`` unless ``array`` is a writable C-contiguous ``dtype`` array."""
    if not array.flags.c_contiguous or array.dtype != dtype or not array.flags.writeable:
        raise ValueError(f"{name} must be a writable C-contiguous {np.dtype(dtype).name} array")
