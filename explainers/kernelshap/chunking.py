"""Synthetic rows per model call, chosen for the CPU the engine is built on.

A model call costs a fixed part (scikit-learn's checks, the call itself) and a part per row;
rows built while they are still in cache cost less than rows that have left it. Which size
balances the two depends on the CPU's caches and the model, and differs between machines
(on an Intel Xeon 32768 rows were best, on an AMD EPYC 8192). So the engine measures, once,
when it is constructed: every candidate size is timed on chunks of real synthetic rows of its
own plan, in interleaved rounds, within a time budget, and the size with the least time per
row wins. The choice (``KernelShap.chunk_rows_``) travels with the engine to the workers.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field

#: the sizes the calibration chooses from
CHUNK_ROW_CANDIDATES = (4096, 8192, 16384, 32768, 65536)
#: seconds the calibration may take at most (it stops between timings once past it)
CALIBRATION_BUDGET_S = 1.0
#: interleaved rounds of the calibration (the fastest of each size's rounds counts)
CALIBRATION_ROUNDS = 5
#: bytes a candidate's buffer may take at most (rows x columns x 8): caps the size for wide data
MAX_CHUNK_BYTES = 64 * 2**20

#: choices made in this process, by problem: engines built alike here get the same size
_chosen: dict[Hashable, "ChunkChoice"] = {}


#: how the model sees the synthetic rows: each distinct row of the instance once (shared by its
#: coalitions), each distinct row of a coalition once (weighted), or every row
ROW_STRATEGIES = ("shared", "distinct", "dense")


@dataclass(frozen=True)
class ChunkChoice:
    """The chosen ``rows`` per call and ``strategy`` (one of :data:`ROW_STRATEGIES`), how
    (``"calibrated"``, ``"whole instance"``, ``"given"``), and the fastest seconds per
    synthetic row (of all the coalition's rows, distinct or not) measured for each
    ``(strategy, rows)`` candidate (empty if none was timed)."""

    rows: int
    strategy: str
    how: str
    seconds_per_row: dict[tuple[str, int], float] = field(default_factory=dict)
    calibration_s: float = 0.0


def candidates(rows_per_instance: int, n_columns: int) -> list[int]:
    """The candidate sizes worth timing for an instance of ``rows_per_instance`` synthetic rows:
    sizes above the instance are the same single call, and so is the smallest of them."""
    fitting = [c for c in CHUNK_ROW_CANDIDATES if c * n_columns * 8 <= MAX_CHUNK_BYTES] or [CHUNK_ROW_CANDIDATES[0]]
    below = [c for c in fitting if c < rows_per_instance]
    above = [c for c in fitting if c >= rows_per_instance]
    return below + above[:1]


def choose_chunk_rows(
    key: Hashable,
    sizes: list[int],
    strategies: list[str],
    time_chunk: Callable[[str, int], float],
) -> ChunkChoice:
    """The ``(strategy, rows)`` for problem ``key``: the one chosen before in this process,
    else the fastest of ``strategies`` x ``sizes`` measured now.

    ``time_chunk(strategy, rows)`` evaluates one chunk of about ``rows`` synthetic rows and
    returns its seconds per synthetic row.
    """
    if key in _chosen:
        return _chosen[key]
    pairs = [(strategy, size) for strategy in strategies for size in sizes]
    if len(pairs) == 1:
        choice = ChunkChoice(sizes[0], strategies[0], "given" if len(sizes) == 1 else "whole instance")
    else:
        began = time.perf_counter()
        deadline = began + CALIBRATION_BUDGET_S
        best: dict[tuple[str, int], float] = {}
        for _ in range(CALIBRATION_ROUNDS + 1):  # the first round warms buffers and caches up
            for pair in pairs:
                if best and time.perf_counter() > deadline:
                    break
                seconds = time_chunk(*pair)
                best[pair] = min(best.get(pair, seconds), seconds)
            if time.perf_counter() > deadline:
                break
        strategy, rows = min(best, key=best.__getitem__)
        choice = ChunkChoice(rows, strategy, "calibrated", best, time.perf_counter() - began)
    _chosen[key] = choice
    return choice
