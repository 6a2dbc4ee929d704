"""The plain-process ceiling of perf/test_backends.py: same values as the engine, errors surface."""
from __future__ import annotations

import numpy as np
import pytest

from explainers import KernelShap
from explainers.bench.bare_processes import BareProcesses


def _linear(rows: np.ndarray) -> np.ndarray:
    return rows @ np.array([0.5, -1.0, 2.0, 0.25])


class Exploding:
    def __call__(self, rows: np.ndarray) -> np.ndarray:
        if (rows[:, 0] > 100).any():  # the background passes, rows built from x = 1000 fail
            raise ValueError("boom")
        return _linear(rows)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    return rng.normal(size=(20, 4)), rng.normal(size=(23, 4))


def test_values_equal_the_engine_for_an_uneven_split(data):
    background, X = data
    engine = KernelShap(_linear, background, nsamples=10, seed=4)
    with BareProcesses(engine, workers=2, batch_size=5) as processes:
        values = processes.start(X).explain(X)
    np.testing.assert_array_equal(values, engine.explain(X))


def test_a_model_error_reaches_the_caller(data):
    background, X = data
    X = X.copy()
    X[7, :] = 1000.0
    engine = KernelShap(Exploding(), background, nsamples=10)
    with BareProcesses(engine, workers=2, batch_size=5) as processes:
        with pytest.raises(ValueError, match="boom"):
            processes.explain(X)
