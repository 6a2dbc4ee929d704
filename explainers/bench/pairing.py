"""Serial rounds paired in time with a benchmark's rounds, and the efficiency they give.

A shared machine's speed drifts over a run; a serial baseline timed once, at the start,
would credit or penalise whichever configuration ran in a fast or slow minute. So each timed
round of a distributed benchmark runs right after a serial round of the same work
(``benchmark.pedantic(..., setup=serial_rounds)``).
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np


def paired_ratio(numerators: Sequence[float], denominators: Sequence[float]) -> float | None:
    """Median over rounds of ``numerators[i] / denominators[i]``: each pair timed in the same
    minute, so a slow minute slows both; ``None`` without pairs."""
    ratios = [n / d for n, d in zip(numerators, denominators) if d > 0]
    return float(np.median(ratios)) if ratios else None


def paired_efficiency(serial_seconds: Sequence[float], round_seconds: Sequence[float], workers: int) -> float | None:
    """Median over rounds of ``serial_seconds[i] / round_seconds[i]``, divided by ``workers``.

    Each timed round is paired with the serial round run just before it, so a slow minute
    slows both; the median ignores a single slow round of three. ``None`` without pairs.
    """
    ratio = paired_ratio(serial_seconds, round_seconds)
    return None if ratio is None else ratio / workers


class TimedRounds:
    """``__call__`` runs ``work()`` once and appends its seconds to ``seconds``: a round of
    other work, run in a benchmark's ``setup`` right before each of its timed rounds."""

    def __init__(self, work: Callable[[], Any]) -> None:
        self.work = work
        self.seconds: list[float] = []

    def __call__(self) -> None:
        t0 = time.perf_counter()
        self.work()
        self.seconds.append(time.perf_counter() - t0)


class SerialRounds:
    """``rounds()`` times one serial explanation of ``X`` ``(n, D)`` per call; ``seconds`` holds
    the times, ``values`` the last result."""

    def __init__(self, engine: Any, X: np.ndarray) -> None:
        self.engine, self.X = engine, X
        self.seconds: list[float] = []
        self.values: np.ndarray | None = None

    def __call__(self) -> None:
        t0 = time.perf_counter()
        self.values = self.engine.explain(self.X)
        self.seconds.append(time.perf_counter() - t0)
