"""The reference Adult workload: the study's data preparation, split, preprocessing and model.

``load_workload()`` reproduces the reference study (alibi's ``fetch_adult`` followed by
the preprocessing of the distributed KernelSHAP example; facts in
``../shared/reference/adult_recipe.json``), row for row and column for column:

1. **Read** ``adult.data`` (32561 rows, 15 columns). The study read it with
   ``pd.read_csv(..., header=None, delimiter=', ', engine='python')``; the C parser with
   ``sep=','`` and ``skipinitialspace=True`` gives an identical frame (no field holds a
   comma) in a tenth of the time. '?' stays a category of its own.
2. **Label** ``Target == '>50K'`` (int64 0/1); **drop** ``fnlwgt``, ``Education-Num``
   (and the target). The remaining 12 features keep the file's order:
   Age, Workclass, Education, Marital Status, Occupation, Relationship, Race, Sex,
   Capital Gain, Capital Loss, Hours per week, Country (:data:`RAW_FEATURES`).
3. **Map** Education, Occupation, Country and Marital Status through
   :data:`CATEGORY_MAPS` (values missing from a map, e.g. Bachelors, keep their name),
   then **label-encode** each of the 8 categorical columns with its sorted category names
   (what ``sklearn.preprocessing.LabelEncoder`` does), before the split. Result: an int64
   matrix of 32561 x 12 (:attr:`AdultWorkload.category_map` decodes it).
4. **Split**: the study ran ``np.random.seed(0)`` and
   ``np.random.permutation(np.c_[data, target])``. We draw the same permutation from
   ``np.random.RandomState(0)`` (the legacy generator that ``np.random.seed`` seeds; the
   shuffle of a 2-D array and of ``arange(n)`` consume the stream identically), so the
   caller's global RNG is left alone. Train = permuted rows ``[0, 30000)``; explained =
   rows ``[30001, 32561)``, 2560 rows (row 30000 is in neither, as in the study).
5. **Preprocess** with a ``ColumnTransformer`` fitted on the training rows:
   ``StandardScaler`` on Age, Capital Gain, Capital Loss, Hours per week (raw columns
   0, 8, 9, 10), then ``OneHotEncoder(drop='first')`` on the 8 categorical columns in
   their raw order (Workclass, Education, Marital Status, Occupation, Relationship, Race,
   Sex, Country). Output: 49 columns, numerical first; one-hot widths
   8, 6, 3, 8, 5, 4, 1, 10. The study also wrapped each transformer in a
   ``SimpleImputer(strategy='median')``, which is the identity here (no value is
   missing: '?' is a category) and is left out. Our transformer returns dense float64.
6. **Model**: ``LogisticRegression(random_state=0, max_iter=500)`` on the training rows.
   The study fitted it on the transformer's sparse (CSR) output; we fit on
   ``csr_matrix(X_train)``, the same matrix, which gives the study's solver path (a dense
   fit agrees only to ~1e-7 in the coefficients) and is ten times faster. The study used
   ``multi_class='multinomial'``, which current scikit-learn no longer accepts; see the
   recipe. Test accuracy on the 2560 explained rows: 0.8546875 (2188 / 2560) with
   scikit-learn 1.9; the study reported 0.855078 (one row more) with its versions.

Groups: one per numerical feature, then one per categorical feature spanning its one-hot
columns, in that column order (:data:`GROUP_NAMES`; widths :data:`GROUP_WIDTHS`).

The fitted preprocessor and model are cached (pickle) under the cache directory
(``cache_dir``, else ``$EXPLAINERS_CACHE_DIR``, else
``platformdirs.user_cache_dir("distributed-kernelshap")/models``), keyed by the SHA-256 of
``adult.data``, the scikit-learn version and :data:`RECIPE_VERSION`; written atomically.
An unreadable or inconsistent entry is ignored and rebuilt.
"""
from __future__ import annotations

import hashlib
import os
import pickle
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from explainers.datasets import ADULT_FILES, APP_NAME, DatasetChecksumError, ensure_adult_files, resolve_dir

__all__ = [
    "AdultWorkload",
    "load_workload",
    "resolve_cache_dir",
    "RAW_COLUMNS",
    "RAW_FEATURES",
    "NUMERICAL_FEATURES",
    "CATEGORICAL_FEATURES",
    "CATEGORY_MAPS",
    "GROUP_NAMES",
    "GROUP_WIDTHS",
    "CACHE_DIR_ENV",
    "RECIPE_VERSION",
]

#: Columns of ``adult.data``, in file order.
RAW_COLUMNS: tuple[str, ...] = (
    "Age", "Workclass", "fnlwgt", "Education", "Education-Num", "Marital Status",
    "Occupation", "Relationship", "Race", "Sex", "Capital Gain", "Capital Loss",
    "Hours per week", "Country", "Target",
)
DROPPED: tuple[str, ...] = ("fnlwgt", "Education-Num")
TARGET = "Target"
POSITIVE_LABEL = ">50K"
#: The 12 features after dropping, in the study's (file) order: columns of ``X_*_raw``.
RAW_FEATURES: tuple[str, ...] = tuple(c for c in RAW_COLUMNS if c not in DROPPED + (TARGET,))
NUMERICAL_FEATURES: tuple[str, ...] = ("Age", "Capital Gain", "Capital Loss", "Hours per week")
CATEGORICAL_FEATURES: tuple[str, ...] = tuple(f for f in RAW_FEATURES if f not in NUMERICAL_FEATURES)
#: Group (= original feature) order of the preprocessed matrix: numerical, then categorical.
GROUP_NAMES: tuple[str, ...] = NUMERICAL_FEATURES + CATEGORICAL_FEATURES
#: Number of preprocessed columns of each group (one-hot with the first category dropped).
GROUP_WIDTHS: tuple[int, ...] = (1, 1, 1, 1, 8, 6, 3, 8, 5, 4, 1, 10)
N_ROWS = 32561
N_TRAIN = 30000
EXPLAIN_START = N_TRAIN + 1
N_EXPLAIN = N_ROWS - EXPLAIN_START  # 2560
N_BACKGROUND = 100
N_COLUMNS = sum(GROUP_WIDTHS)  # 49
SEED = 0
#: Environment variable naming the model cache directory.
CACHE_DIR_ENV = "EXPLAINERS_CACHE_DIR"
#: Bump when the recipe or the cached payload changes, to invalidate old cache entries.
RECIPE_VERSION = 1

#: Category maps of the study (alibi ``fetch_adult``); unmapped values keep their name.
CATEGORY_MAPS: dict[str, dict[str, str]] = {
    "Education": {
        "10th": "Dropout", "11th": "Dropout", "12th": "Dropout", "1st-4th": "Dropout",
        "5th-6th": "Dropout", "7th-8th": "Dropout", "9th": "Dropout", "Preschool": "Dropout",
        "HS-grad": "High School grad", "Some-college": "High School grad", "Masters": "Masters",
        "Prof-school": "Prof-School", "Assoc-acdm": "Associates", "Assoc-voc": "Associates",
    },
    "Occupation": {
        "Adm-clerical": "Admin", "Armed-Forces": "Military", "Craft-repair": "Blue-Collar",
        "Exec-managerial": "White-Collar", "Farming-fishing": "Blue-Collar",
        "Handlers-cleaners": "Blue-Collar", "Machine-op-inspct": "Blue-Collar",
        "Other-service": "Service", "Priv-house-serv": "Service", "Prof-specialty": "Professional",
        "Protective-serv": "Other", "Sales": "Sales", "Tech-support": "Other",
        "Transport-moving": "Blue-Collar",
    },
    "Country": {
        "Cambodia": "SE-Asia", "Canada": "British-Commonwealth", "China": "China",
        "Columbia": "South-America", "Cuba": "Other", "Dominican-Republic": "Latin-America",
        "Ecuador": "South-America", "El-Salvador": "South-America",
        "England": "British-Commonwealth", "France": "Euro_1", "Germany": "Euro_1",
        "Greece": "Euro_2", "Guatemala": "Latin-America", "Haiti": "Latin-America",
        "Holand-Netherlands": "Euro_1", "Honduras": "Latin-America", "Hong": "China",
        "Hungary": "Euro_2", "India": "British-Commonwealth", "Iran": "Other",
        "Ireland": "British-Commonwealth", "Italy": "Euro_1", "Jamaica": "Latin-America",
        "Japan": "Other", "Laos": "SE-Asia", "Mexico": "Latin-America",
        "Nicaragua": "Latin-America", "Outlying-US(Guam-USVI-etc)": "Latin-America",
        "Peru": "South-America", "Philippines": "SE-Asia", "Poland": "Euro_2",
        "Portugal": "Euro_2", "Puerto-Rico": "Latin-America", "Scotland": "British-Commonwealth",
        "South": "Euro_2", "Taiwan": "China", "Thailand": "SE-Asia",
        "Trinadad&Tobago": "Latin-America", "United-States": "United-States", "Vietnam": "SE-Asia",
    },
    "Marital Status": {
        "Never-married": "Never-Married", "Married-AF-spouse": "Married",
        "Married-civ-spouse": "Married", "Married-spouse-absent": "Separated",
        "Separated": "Separated", "Divorced": "Separated", "Widowed": "Widowed",
    },
}


@dataclass(frozen=True, eq=False, repr=False)
class AdultWorkload:
    """The reference workload. Arrays are read-only; ``D = 49`` preprocessed columns.

    Attributes
    ----------
    model: fitted ``LogisticRegression``; explain ``model.predict_proba`` (picklable).
    preprocessor: fitted ``ColumnTransformer``: ``(n, 12)`` raw codes -> ``(n, 49)`` float64.
    X_train: ``(30000, 49)`` float64, preprocessed training rows. y_train: ``(30000,)`` int64.
    X_explain: ``(2560, 49)`` float64, the rows to explain. y_explain: ``(2560,)`` int64.
    background: ``(100, 49)`` float64, the first 100 rows of ``X_train``.
    groups: 12 lists of column indices into the 49 columns (a partition, in order).
    group_names: the 12 original feature names, numerical first (:data:`GROUP_NAMES`).
    feature_names: the 49 column names (``"Workclass=Private"`` for one-hot columns).
    raw_feature_names: the 12 raw features in the study's order (:data:`RAW_FEATURES`).
    category_map: raw column index -> category names; the label code is the position.
    X_train_raw, X_explain_raw: ``(30000, 12)`` / ``(2560, 12)`` int64, label-encoded rows
        before preprocessing (``preprocessor.transform(X_train_raw) == X_train``).
    data_sha256: SHA-256 of the ``adult.data`` that was read. data_path: its path.
    cache_path: the model cache file (None when caching was off).
    from_cache: True when model and preprocessor came from the cache (nothing refitted).
    """

    model: Any
    preprocessor: Any
    X_train: np.ndarray
    y_train: np.ndarray
    X_explain: np.ndarray
    y_explain: np.ndarray
    background: np.ndarray
    groups: list[list[int]]
    group_names: list[str]
    feature_names: list[str]
    raw_feature_names: list[str]
    category_map: dict[int, list[str]]
    X_train_raw: np.ndarray
    X_explain_raw: np.ndarray
    data_sha256: str
    data_path: Path
    cache_path: Path | None = None
    from_cache: bool = False
    load_seconds: float = field(default=0.0, compare=False)

    @property
    def predict_proba(self) -> Callable[[np.ndarray], np.ndarray]:
        """``model.predict_proba``: ``(n, 49)`` -> ``(n, 2)``; a picklable bound method."""
        return self.model.predict_proba

    @property
    def n_features(self) -> int:
        """Number of preprocessed columns (49)."""
        return int(self.X_train.shape[1])

    def accuracy(self) -> float:
        """Accuracy of ``model`` on the explained rows (about 0.855)."""
        return float(np.mean(self.model.predict(self.X_explain) == self.y_explain))

    def __repr__(self) -> str:
        return (
            f"AdultWorkload(X_train={self.X_train.shape}, X_explain={self.X_explain.shape}, "
            f"background={self.background.shape}, groups={len(self.groups)}, "
            f"data_sha256={self.data_sha256[:12]}..., from_cache={self.from_cache})"
        )


def resolve_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Model cache directory: ``cache_dir``, else ``$EXPLAINERS_CACHE_DIR``, else the user cache."""
    def user_cache() -> Path:
        import platformdirs

        return Path(platformdirs.user_cache_dir(APP_NAME)) / "models"

    return resolve_dir(cache_dir, CACHE_DIR_ENV, user_cache)


def cache_file_name(data_sha256: str) -> str:
    """Name of the cache entry for a given ``adult.data`` checksum and the running scikit-learn."""
    import sklearn

    return f"adult-logreg-{data_sha256[:16]}-sklearn-{sklearn.__version__}-r{RECIPE_VERSION}.pkl"


def load_workload(
    data_dir: str | os.PathLike[str] | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
) -> AdultWorkload:
    """Build the reference workload (see the module docstring for every step).

    Parameters
    ----------
    data_dir:
        Directory of the UCI Adult files (else ``$ADULT_DATA_DIR``, else the user cache;
        missing files are downloaded and verified, see :mod:`explainers.datasets`).
    cache_dir:
        Directory of the fitted-model cache (else ``$EXPLAINERS_CACHE_DIR``, else the
        user cache). Ignored when ``use_cache`` is False.
    use_cache:
        Read and write the model cache. False always refits and writes nothing.

    Returns
    -------
    AdultWorkload
        ``X_train`` (30000, 49), ``X_explain`` (2560, 49), ``background`` (100, 49), ...

    Raises
    ------
    explainers.datasets.DatasetError
        The data files are missing and cannot be downloaded, or fail verification.
    ValueError
        ``adult.data`` verified but parsed to something unexpected (should not happen).
    """
    start = time.perf_counter()
    paths = ensure_adult_files(data_dir)
    data_path = paths["adult.data"]
    raw_bytes = data_path.read_bytes()
    # ensure_adult_files verified the file; hash the bytes we actually parse, in case it
    # changed since.
    data_sha256 = hashlib.sha256(raw_bytes).hexdigest()
    if data_sha256 != ADULT_FILES["adult.data"]:
        raise DatasetChecksumError(
            f"{data_path} changed while being read: expected SHA-256 {ADULT_FILES['adult.data']}, "
            f"got {data_sha256}"
        )

    codes, labels, category_map = _encode(raw_bytes, source=data_path)
    perm = np.random.RandomState(SEED).permutation(codes.shape[0])
    codes, labels = codes[perm], labels[perm]
    X_train_raw, y_train = codes[:N_TRAIN], labels[:N_TRAIN]
    X_explain_raw, y_explain = codes[EXPLAIN_START:], labels[EXPLAIN_START:]

    cache_path = resolve_cache_dir(cache_dir) / cache_file_name(data_sha256) if use_cache else None
    fitted = _read_cache(cache_path, data_sha256, X_train_raw) if cache_path is not None else None
    from_cache = fitted is not None
    if fitted is None:
        fitted = _fit(X_train_raw, y_train)
        if cache_path is not None:
            _write_cache(cache_path, data_sha256, *fitted[:2], X_train_sha256=_array_sha256(fitted[2]))
    preprocessor, model, X_train = fitted
    X_explain = _dense(preprocessor.transform(X_explain_raw))

    groups, feature_names = _groups_and_names(preprocessor, category_map)
    widths = tuple(len(g) for g in groups)
    if widths != GROUP_WIDTHS or X_train.shape != (N_TRAIN, N_COLUMNS):
        raise ValueError(
            f"preprocessing produced group widths {widths} and X_train {X_train.shape}; "
            f"the recipe gives {GROUP_WIDTHS} and {(N_TRAIN, N_COLUMNS)}"
        )
    background = X_train[:N_BACKGROUND].copy()
    arrays = [X_train, y_train, X_explain, y_explain, background, X_train_raw, X_explain_raw]
    X_train, y_train, X_explain, y_explain, background, X_train_raw, X_explain_raw = (
        _readonly(a) for a in arrays
    )
    return AdultWorkload(
        model=model,
        preprocessor=preprocessor,
        X_train=X_train,
        y_train=y_train,
        X_explain=X_explain,
        y_explain=y_explain,
        background=background,
        groups=groups,
        group_names=list(GROUP_NAMES),
        feature_names=feature_names,
        raw_feature_names=list(RAW_FEATURES),
        category_map=category_map,
        X_train_raw=X_train_raw,
        X_explain_raw=X_explain_raw,
        data_sha256=data_sha256,
        data_path=data_path,
        cache_path=cache_path,
        from_cache=from_cache,
        load_seconds=time.perf_counter() - start,
    )


# --------------------------------------------------------------------------- steps


def _encode(raw: bytes, *, source: Path) -> tuple[np.ndarray, np.ndarray, dict[int, list[str]]]:
    """Steps 1-3 on the bytes of ``adult.data``: ``(32561, 12)`` int64 codes, ``(32561,)`` int64 labels, category map."""
    import io

    import pandas as pd

    numeric = {"Age", "fnlwgt", "Education-Num", "Capital Gain", "Capital Loss", "Hours per week"}
    frame = pd.read_csv(
        io.BytesIO(raw),
        header=None,
        names=list(RAW_COLUMNS),
        sep=",",
        skipinitialspace=True,
        dtype={c: ("int64" if c in numeric else object) for c in RAW_COLUMNS},
        na_filter=False,  # '?' and any other token are kept verbatim
    )
    target = frame[TARGET].to_numpy(dtype=object)
    if frame.shape != (N_ROWS, len(RAW_COLUMNS)) or not set(target) <= {POSITIVE_LABEL, "<=50K"}:
        raise ValueError(
            f"{source}: parsed {frame.shape[0]} rows x {frame.shape[1]} columns with targets "
            f"{sorted(set(target))[:5]}; expected {N_ROWS} x {len(RAW_COLUMNS)} with '<=50K'/'>50K'"
        )
    labels = (target == POSITIVE_LABEL).astype(np.int64)
    codes = np.empty((N_ROWS, len(RAW_FEATURES)), dtype=np.int64)
    category_map: dict[int, list[str]] = {}
    for j, name in enumerate(RAW_FEATURES):
        column = frame[name].to_numpy()
        if name in NUMERICAL_FEATURES:
            codes[:, j] = column
            continue
        # Map, then label-encode with the sorted category names (= LabelEncoder). Done on
        # the few distinct raw values: factorize, map them, rank the mapped names.
        mapping = CATEGORY_MAPS.get(name, {})
        raw_codes, raw_values = pd.factorize(column)
        mapped = [str(mapping.get(v, v)) for v in raw_values]
        classes = sorted(set(mapped))
        rank = {c: i for i, c in enumerate(classes)}
        codes[:, j] = np.array([rank[m] for m in mapped], dtype=np.int64)[raw_codes]
        category_map[j] = classes
    return codes, labels, category_map


def _make_preprocessor():
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    numerical = [RAW_FEATURES.index(f) for f in NUMERICAL_FEATURES]
    categorical = [RAW_FEATURES.index(f) for f in CATEGORICAL_FEATURES]
    return ColumnTransformer(
        transformers=[
            ("num", StandardScaler(), numerical),
            ("cat", OneHotEncoder(drop="first", handle_unknown="error", sparse_output=False), categorical),
        ]
    )


def _fit(X_train_raw: np.ndarray, y_train: np.ndarray):
    """Steps 5-6: fit preprocessor and model; return ``(preprocessor, model, X_train)``."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression

    preprocessor = _make_preprocessor().fit(X_train_raw)
    X_train = _dense(preprocessor.transform(X_train_raw))
    model = LogisticRegression(random_state=SEED, max_iter=500)
    model.fit(sparse.csr_matrix(X_train), y_train)  # the study fitted on the CSR output
    return preprocessor, model, X_train


def _groups_and_names(preprocessor, category_map: dict[int, list[str]]) -> tuple[list[list[int]], list[str]]:
    """Column groups (one per original feature) and the 49 column names."""
    encoder = preprocessor.named_transformers_["cat"]
    groups: list[list[int]] = [[i] for i in range(len(NUMERICAL_FEATURES))]
    names = list(NUMERICAL_FEATURES)
    start = len(NUMERICAL_FEATURES)
    for name, categories in zip(CATEGORICAL_FEATURES, encoder.categories_):
        kept = [int(c) for c in categories[1:]]  # drop='first'
        labels = category_map[RAW_FEATURES.index(name)]
        groups.append(list(range(start, start + len(kept))))
        names += [f"{name}={labels[c]}" for c in kept]
        start += len(kept)
    return groups, names


def _dense(X) -> np.ndarray:
    X = X.toarray() if hasattr(X, "toarray") else X
    return np.ascontiguousarray(X, dtype=np.float64)


def _readonly(a: np.ndarray) -> np.ndarray:
    a.setflags(write=False)
    return a


def _array_sha256(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


# --------------------------------------------------------------------------- cache


def _read_cache(path: Path, data_sha256: str, X_train_raw: np.ndarray):
    """Return ``(preprocessor, model, X_train)`` from a valid entry, else None (it is rebuilt).

    An entry is used only if it unpickles, names this data checksum, recipe and
    scikit-learn version, and its preprocessor reproduces the training matrix it was fitted
    on (checked by hash), with a finite model of the right shape.
    """
    import sklearn

    if not path.is_file():
        return None
    try:
        with open(path, "rb") as f:
            payload = pickle.load(f)  # noqa: S301 (our own cache directory)
        ok = (
            isinstance(payload, dict)
            and payload.get("recipe_version") == RECIPE_VERSION
            and payload.get("data_sha256") == data_sha256
            and payload.get("sklearn_version") == sklearn.__version__
        )
        if not ok:
            return None
        preprocessor, model = payload["preprocessor"], payload["model"]
        X_train = _dense(preprocessor.transform(X_train_raw))
        if _array_sha256(X_train) != payload["X_train_sha256"]:
            return None
        coef = np.asarray(model.coef_)
        if coef.shape != (1, N_COLUMNS) or not np.all(np.isfinite(coef)):
            return None
        return preprocessor, model, X_train
    except Exception:  # noqa: BLE001 - any unreadable/corrupt entry is rebuilt
        return None


def _write_cache(path: Path, data_sha256: str, preprocessor, model, *, X_train_sha256: str) -> None:
    """Pickle the fitted objects to ``path`` atomically (temp file + ``os.replace``)."""
    import sklearn

    payload = {
        "recipe_version": RECIPE_VERSION,
        "data_sha256": data_sha256,
        "sklearn_version": sklearn.__version__,
        "X_train_sha256": X_train_sha256,
        "preprocessor": preprocessor,
        "model": model,
    }
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".tmp-" + path.name + ".", dir=path.parent)
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            pickle.dump(payload, f, protocol=pickle.HIGHEST_PROTOCOL)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as exc:
        warnings.warn(f"could not write the model cache {path}: {exc}", RuntimeWarning, stacklevel=3)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
