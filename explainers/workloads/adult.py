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

The cache is signed, because unpickling runs code and the entry's name is predictable (a
cache directory shared with other users would let them plant one). Beside each entry
``NAME.pkl`` lies ``NAME.pkl.manifest`` (JSON) holding an HMAC-SHA256, keyed with a
per-user secret, of the entry's name and bytes. A load reads the entry's bytes once,
checks the manifest's HMAC against them (``hmac.compare_digest``) and only then unpickles
those same bytes (no time-of-check/time-of-use gap). An entry that fails (no manifest, a
wrong HMAC, unreadable, larger than :data:`MAX_CACHE_BYTES`, not a regular file, or
signed but inconsistent after unpickling) is removed with a :class:`ModelCacheWarning`
naming the file, and the model is refitted and re-cached with a fresh manifest. Another
user's entries therefore never load (each user rebuilds their own).

The key (32 random bytes, hex) lives in :func:`resolve_key_file`:
``$EXPLAINERS_CACHE_KEY_FILE`` if set (meant for tests and unusual setups), else
``platformdirs.user_config_dir("distributed-kernelshap")/model-cache.key``, never in the
cache directory. It is created on first use with ``O_CREAT | O_EXCL`` and mode 0600 and
published atomically. A key file that is unsafe (a symbolic link or not a regular file,
owned by another user, permissions broader than 0600, or not a key) is refused with
:class:`ModelCacheKeyError` rather than silently replaced: its secret may be known to
others, and replacing it would hide that; delete the file (a new key is made, the cache is
rebuilt) or ``use_cache=False``. If the key cannot be created or read (e.g. a read-only
home), the cache is skipped with a ``RuntimeWarning`` and the model is fitted.
"""
from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
import pickle
import secrets
import stat
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from explainers.workloads.adult_files import ADULT_FILES, APP_NAME, DatasetChecksumError, ensure_adult_files, resolve_dir
from explainers.workloads.workload import Workload

__all__ = [
    "AdultWorkload",
    "load_workload",
    "workload",
    "resolve_cache_dir",
    "RAW_COLUMNS",
    "RAW_FEATURES",
    "NUMERICAL_FEATURES",
    "CATEGORICAL_FEATURES",
    "CATEGORY_MAPS",
    "GROUP_NAMES",
    "GROUP_WIDTHS",
    "CACHE_DIR_ENV",
    "CACHE_KEY_ENV",
    "N_EXPLAIN",
    "RECIPE_VERSION",
    "ModelCacheWarning",
    "ModelCacheKeyError",
    "resolve_key_file",
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
#: Environment variable naming the cache's signing-key file (default: the user config dir).
CACHE_KEY_ENV = "EXPLAINERS_CACHE_KEY_FILE"
#: Name of the key file in the user config directory.
KEY_FILE_NAME = "model-cache.key"
#: Suffix of the signed manifest beside each cache entry.
MANIFEST_SUFFIX = ".manifest"
#: Cache entries (and manifests) larger than this are rejected unread (an entry is ~4 kB).
MAX_CACHE_BYTES = 16 * 1024**2
#: Bump when the recipe or the cached payload changes, to invalidate old cache entries.
#: 2: entries are signed (a manifest beside each); unsigned version-1 entries are not read.
RECIPE_VERSION = 2
_KEY_BYTES = 32
_TMP_KEY_PREFIX = ".tmp-"
_MANIFEST_FORMAT = 1
_MAC_CONTEXT = b"distributed-kernelshap model cache\0"


class ModelCacheWarning(UserWarning):
    """A model cache entry failed its integrity check; it was removed and the model refitted."""


class ModelCacheKeyError(RuntimeError):
    """The model cache's signing-key file is unsafe (see the module docstring); nothing was read."""

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
        missing files are downloaded and verified, see :mod:`explainers.workloads.adult_files`).
    cache_dir:
        Directory of the fitted-model cache (else ``$EXPLAINERS_CACHE_DIR``, else the
        user cache). Ignored when ``use_cache`` is False.
    use_cache:
        Read and write the model cache (signed: see the module docstring). False always
        refits, writes nothing and does not touch the signing key.

    Warns
    -----
    ModelCacheWarning
        A cache entry failed its check; it was removed (not unpickled unless signed) and rebuilt.
    RuntimeWarning
        The cache could not be written, or its key could not be created (no caching).

    Returns
    -------
    AdultWorkload
        ``X_train`` (30000, 49), ``X_explain`` (2560, 49), ``background`` (100, 49), ...

    Raises
    ------
    explainers.workloads.adult_files.DatasetError
        The data files are missing and cannot be downloaded, or fail verification.
    ModelCacheKeyError
        ``use_cache`` and the cache's signing-key file is unsafe (see the module docstring).
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

    key = _cache_key() if use_cache else None
    cache_path = resolve_cache_dir(cache_dir) / cache_file_name(data_sha256) if key is not None else None
    fitted = _read_cache(cache_path, key, data_sha256, X_train_raw) if cache_path is not None else None
    from_cache = fitted is not None
    if fitted is None:
        fitted = _fit(X_train_raw, y_train)
        if cache_path is not None:
            _write_cache(cache_path, key, data_sha256, *fitted[:2], X_train_sha256=_array_sha256(fitted[2]))
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


def workload() -> Workload:
    """The reference workload for ``--workload explainers.workloads.adult:workload`` (the default).

    ``predict`` = the model's ``predict_proba`` (``(rows, 49)`` -> ``(rows, 2)``), ``background``
    ``(100, 49)``, ``X`` = ``X_explain`` ``(2560, 49)``, the 12 groups and their names, link
    ``"logit"``. Data and model come from :func:`load_workload` with its defaults
    (``$ADULT_DATA_DIR``, ``$EXPLAINERS_CACHE_DIR``).
    """
    adult = load_workload()
    return Workload(
        name="adult",
        predict=adult.predict_proba,
        background=adult.background,
        X=adult.X_explain,
        groups=adult.groups,
        group_names=adult.group_names,
        link="logit",
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


def resolve_key_file() -> Path:
    """The signing-key file: ``$EXPLAINERS_CACHE_KEY_FILE``, else the user config directory.

    Never inside the cache directory, which may be shared.
    """
    env = os.environ.get(CACHE_KEY_ENV, "").strip()
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_config_dir(APP_NAME)) / KEY_FILE_NAME


def _cache_key() -> bytes | None:
    """The key (created on first use); None, with a warning, when it cannot be read or made."""
    path = resolve_key_file()
    try:
        return _load_key(path)
    except ModelCacheKeyError:
        raise
    except OSError as exc:
        warnings.warn(
            f"model cache not used: could not read or create its signing key {path}: {exc}",
            RuntimeWarning, stacklevel=3,
        )
        return None


def _load_key(path: Path) -> bytes:
    """Read the key at ``path``, creating it when missing; ``ModelCacheKeyError`` if unsafe."""
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    _create_key(path)  # a concurrent creator may win; then its key is read
    return _read_key(path)


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _key_problem(st: os.stat_result) -> str | None:
    if not stat.S_ISREG(st.st_mode):
        return "it is not a regular file"
    if os.name == "posix":
        uid = os.geteuid()
        if st.st_uid != uid:
            return f"it is owned by uid {st.st_uid}, not by you (uid {uid})"
        if st.st_mode & 0o077:
            return f"its permissions {stat.S_IMODE(st.st_mode):04o} are broader than 0600"
    return None


def _read_key(path: Path) -> bytes:
    fix = "delete it (a new key is made and the model cache rebuilt) or load with use_cache=False"
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ModelCacheKeyError(f"refusing the model cache key {path}: it is a symbolic link; {fix}") from None
        raise
    with os.fdopen(fd, "rb") as f:
        problem = _key_problem(os.fstat(f.fileno()))  # of the file opened, not of the name
        if problem is not None:
            raise ModelCacheKeyError(f"refusing the model cache key {path}: {problem}; {fix}")
        text = f.read(4 * _KEY_BYTES)
    try:
        key = bytes.fromhex(text.decode("ascii").strip())
    except (UnicodeDecodeError, ValueError):
        key = b""
    if len(key) != _KEY_BYTES:
        raise ModelCacheKeyError(
            f"refusing the model cache key {path}: it does not hold {2 * _KEY_BYTES} hex digits; {fix}"
        )
    return key


def _create_key(path: Path) -> None:
    """Write a new key 0600 (``O_CREAT | O_EXCL``) and publish it atomically; never replaces one."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = secrets.token_bytes(_KEY_BYTES).hex().encode("ascii") + b"\n"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    tmp = path.with_name(f"{_TMP_KEY_PREFIX}{path.name}.{secrets.token_hex(8)}")
    fd = os.open(tmp, flags, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)  # atomic, and fails if a key exists: readers never see half a key
        except FileExistsError:
            pass
        except OSError:  # no hard links on this file system: create the key in place
            try:
                fd = os.open(path, flags, 0o600)
            except FileExistsError:
                return
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
    finally:
        tmp.unlink(missing_ok=True)


def manifest_path(path: Path) -> Path:
    """The signed manifest beside cache entry ``path``: ``NAME.pkl.manifest``."""
    return path.with_name(path.name + MANIFEST_SUFFIX)


def _mac(key: bytes, name: str, blob: bytes) -> str:
    """HMAC-SHA256 of the entry's name and bytes (the name binds it to its data and versions)."""
    message = _MAC_CONTEXT + name.encode("utf-8") + b"\0" + blob
    return hmac.new(key, message, hashlib.sha256).hexdigest()


def _manifest_bytes(key: bytes, name: str, blob: bytes) -> bytes:
    manifest = {"format": _MANIFEST_FORMAT, "file": name, "size": len(blob), "hmac_sha256": _mac(key, name, blob)}
    return (json.dumps(manifest, indent=1) + "\n").encode("utf-8")


def _read_bounded(path: Path) -> bytes:
    """The bytes of regular file ``path`` (not following a symbolic link), at most MAX_CACHE_BYTES."""
    fd = os.open(path, _OPEN_FLAGS)
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise OSError(f"{path} is not a regular file")
        blob = f.read(MAX_CACHE_BYTES + 1)
    if len(blob) > MAX_CACHE_BYTES:
        raise OSError(f"larger than {MAX_CACHE_BYTES} bytes")
    return blob


def _verified_bytes(path: Path, key: bytes) -> tuple[bytes | None, str]:
    """``(bytes, "")`` of an entry whose manifest checks out, else ``(None, why not)``. Unpickles nothing."""
    try:
        blob = _read_bounded(path)
    except OSError as exc:
        return None, f"is unreadable ({exc.strerror or exc})"
    man = manifest_path(path)
    try:
        manifest = json.loads(_read_bounded(man).decode("utf-8"))
    except FileNotFoundError:
        return None, f"has no manifest {man.name}"
    except OSError as exc:
        return None, f"has an unreadable manifest {man.name} ({exc.strerror or exc})"
    except ValueError:  # bad UTF-8 or JSON
        return None, f"has a malformed manifest {man.name}"
    mac = manifest.get("hmac_sha256") if isinstance(manifest, dict) else None
    if not isinstance(mac, str) or not hmac.compare_digest(mac.encode("utf-8"), _mac(key, path.name, blob).encode()):
        return None, f"does not match the HMAC in {man.name} (not written by you with this key, or altered)"
    return blob, ""


def _reject(path: Path, reason: str, *, unpickled: bool = False) -> None:
    """Remove a failed entry and its manifest, with a ModelCacheWarning naming it."""
    problems = []
    for p in (path, manifest_path(path)):
        try:
            p.unlink()
        except FileNotFoundError:
            pass
        except OSError as exc:
            problems.append(f"could not remove {p}: {exc.strerror or exc}")
    done = "; ".join(problems) if problems else "removed"
    how = "it was signed with your key but" if unpickled else "it was not unpickled:"
    warnings.warn(
        f"model cache entry {path} rejected, {how} it {reason}; {done}; the model is refitted",
        ModelCacheWarning, stacklevel=4,
    )


def _read_cache(path: Path, key: bytes, data_sha256: str, X_train_raw: np.ndarray):
    """Return ``(preprocessor, model, X_train)`` from a valid entry, else None (it is rebuilt).

    Nothing is unpickled unless the manifest's HMAC matches the bytes read (once). A signed
    entry is then used only if it names this data checksum, recipe and scikit-learn version,
    and its preprocessor reproduces the training matrix it was fitted on (checked by hash),
    with a finite model of the right shape. Any failure removes the entry with a
    :class:`ModelCacheWarning`; a missing entry is simply a miss.
    """
    import sklearn

    if not os.path.lexists(path):
        return None
    blob, why = _verified_bytes(path, key)
    if blob is None:
        _reject(path, why)
        return None
    try:
        payload = pickle.loads(blob)  # noqa: S301 - authenticated above (HMAC with the user's key)
        ok = (
            isinstance(payload, dict)
            and payload.get("recipe_version") == RECIPE_VERSION
            and payload.get("data_sha256") == data_sha256
            and payload.get("sklearn_version") == sklearn.__version__
        )
        if not ok:
            _reject(path, "names another recipe, data set or scikit-learn version", unpickled=True)
            return None
        preprocessor, model = payload["preprocessor"], payload["model"]
        X_train = _dense(preprocessor.transform(X_train_raw))
        if _array_sha256(X_train) != payload["X_train_sha256"]:
            _reject(path, "does not reproduce the training matrix", unpickled=True)
            return None
        coef = np.asarray(model.coef_)
        if coef.shape != (1, N_COLUMNS) or not np.all(np.isfinite(coef)):
            _reject(path, f"holds a model with coefficients of shape {coef.shape} or not finite", unpickled=True)
            return None
        return preprocessor, model, X_train
    except Exception as exc:  # noqa: BLE001 - any corrupt (signed) entry is rebuilt
        _reject(path, f"could not be used ({type(exc).__name__}: {exc})", unpickled=True)
        return None


def _write_cache(path: Path, key: bytes, data_sha256: str, preprocessor, model, *, X_train_sha256: str) -> None:
    """Pickle the fitted objects to ``path`` with its signed manifest, each atomically.

    The manifest is written first, so a reader of a fresh cache sees either no entry or a
    complete, signed one.
    """
    import sklearn

    payload = {
        "recipe_version": RECIPE_VERSION,
        "data_sha256": data_sha256,
        "sklearn_version": sklearn.__version__,
        "X_train_sha256": X_train_sha256,
        "preprocessor": preprocessor,
        "model": model,
    }
    blob = pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(manifest_path(path), _manifest_bytes(key, path.name, blob))
        _write_atomic(path, blob)
    except OSError as exc:
        warnings.warn(f"could not write the model cache {path}: {exc}", RuntimeWarning, stacklevel=3)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file (mode 0600) and ``os.replace``."""
    fd, name = tempfile.mkstemp(prefix=".tmp-" + path.name + ".", dir=path.parent)
    tmp: Path | None = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
