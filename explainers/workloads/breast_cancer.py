"""A second workload that needs no network: gradient boosting on scikit-learn's breast cancer data.

``--workload explainers.workloads.breast_cancer:workload``. The data (569 rows, 30 features,
target 1 = benign) ship with scikit-learn (``load_breast_cancer``). The rows are shuffled
with ``np.random.RandomState(SEED)`` (the legacy generator, whose stream NumPy keeps
stable); the first :data:`N_TRAIN` shuffled rows train a ``GradientBoostingClassifier``
(fixed ``random_state``, :data:`N_ESTIMATORS` trees of depth :data:`MAX_DEPTH`: about 0.2 s),
the other :data:`N_EXPLAIN` are explained, and the first :data:`N_BACKGROUND` training rows
are the background. The model is fitted once per process (``functools.cache``); nothing
is written to disk.

Players: the 30 features are ten measurements of the cell nuclei, each given three times
("mean radius", "radius error", "worst radius", ...): one group per measurement, holding
its three columns, named after it (:data:`MEASUREMENTS`). Ten players, so every
coalition is enumerated (1022 per instance) and the values are exact by default.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from explainers.workloads.workload import Workload

__all__ = [
    "BreastCancerModel",
    "MEASUREMENTS",
    "N_BACKGROUND",
    "N_EXPLAIN",
    "N_TRAIN",
    "fitted",
    "measurement_groups",
    "workload",
]

#: The ten measurements, in the order of the data's first ten columns ("mean <measurement>").
MEASUREMENTS: tuple[str, ...] = (
    "radius", "texture", "perimeter", "area", "smoothness",
    "compactness", "concavity", "concave points", "symmetry", "fractal dimension",
)
#: The three statistics each measurement is given as: "mean X", "X error", "worst X".
STATISTIC_NAMES: tuple[str, ...] = ("mean {}", "{} error", "worst {}")
N_ROWS = 569
N_FEATURES = len(MEASUREMENTS) * len(STATISTIC_NAMES)  # 30
N_EXPLAIN = 200
N_TRAIN = N_ROWS - N_EXPLAIN  # 369
N_BACKGROUND = 50
N_ESTIMATORS = 100
MAX_DEPTH = 2
SEED = 0


@dataclass(frozen=True, eq=False, repr=False)
class BreastCancerModel:
    """The fitted model and its split; arrays are read-only, ``D = 30`` columns.

    Attributes
    ----------
    model: fitted ``GradientBoostingClassifier``; ``model.predict_proba``: ``(rows, 30)`` -> ``(rows, 2)``.
    X_train: ``(369, 30)`` float64. y_train: ``(369,)`` int64 (1 = benign).
    X_explain: ``(200, 30)`` float64, the held-out rows. y_explain: ``(200,)`` int64.
    background: ``(50, 30)`` float64, the first 50 rows of ``X_train``.
    feature_names: the 30 column names, as scikit-learn gives them.
    """

    model: object
    X_train: np.ndarray
    y_train: np.ndarray
    X_explain: np.ndarray
    y_explain: np.ndarray
    background: np.ndarray
    feature_names: tuple[str, ...]

    def accuracy(self) -> float:
        """Accuracy of ``model`` on the held-out rows (0.97 with scikit-learn 1.9)."""
        return float(np.mean(self.model.predict(self.X_explain) == self.y_explain))

    def __repr__(self) -> str:
        return (
            f"BreastCancerModel(X_train={self.X_train.shape}, X_explain={self.X_explain.shape}, "
            f"background={self.background.shape})"
        )


def measurement_groups(feature_names: tuple[str, ...]) -> list[list[int]]:
    """One group per measurement of :data:`MEASUREMENTS`: the indices of its three columns in ``feature_names``.

    A ``ValueError`` if the names are not the 30 expected ones (another scikit-learn layout).
    """
    index = {name: j for j, name in enumerate(feature_names)}
    expected = {s.format(m) for m in MEASUREMENTS for s in STATISTIC_NAMES}
    if set(index) != expected or len(index) != len(feature_names):
        raise ValueError(
            f"breast cancer features {sorted(set(index) ^ expected)} differ from the expected "
            f"{len(expected)} names 'mean X', 'X error', 'worst X'"
        )
    return [[index[s.format(m)] for s in STATISTIC_NAMES] for m in MEASUREMENTS]


@functools.cache
def fitted() -> BreastCancerModel:
    """The split and the fitted model (fitted on first use, then kept for this process)."""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    data = load_breast_cancer()
    X = np.asarray(data.data, dtype=np.float64)
    y = np.asarray(data.target, dtype=np.int64)
    if X.shape != (N_ROWS, N_FEATURES):
        raise ValueError(f"load_breast_cancer gave {X.shape}, expected {(N_ROWS, N_FEATURES)}")
    order = np.random.RandomState(SEED).permutation(N_ROWS)
    train, explain = order[:N_TRAIN], order[N_TRAIN:]
    model = GradientBoostingClassifier(n_estimators=N_ESTIMATORS, max_depth=MAX_DEPTH, random_state=SEED)
    model.fit(X[train], y[train])
    arrays = [np.ascontiguousarray(a) for a in (X[train], y[train], X[explain], y[explain], X[train[:N_BACKGROUND]])]
    for a in arrays:
        a.setflags(write=False)
    X_train, y_train, X_explain, y_explain, background = arrays
    return BreastCancerModel(
        model=model, X_train=X_train, y_train=y_train, X_explain=X_explain, y_explain=y_explain,
        background=background, feature_names=tuple(str(n) for n in data.feature_names),
    )


def workload() -> Workload:
    """The breast cancer workload: ``X`` ``(200, 30)``, ``background`` ``(50, 30)``, 10 groups, link ``"logit"``.

    ``predict`` is the model's ``predict_proba`` (``(rows, 30)`` -> ``(rows, 2)``), a picklable bound method.
    """
    fit = fitted()
    return Workload(
        name="breast-cancer",
        predict=fit.model.predict_proba,
        background=fit.background,
        X=fit.X_explain,
        groups=measurement_groups(fit.feature_names),
        group_names=list(MEASUREMENTS),
        link="logit",
    )
