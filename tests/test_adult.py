"""The reference Adult workload: shapes, groups, the study's recipe, the model cache."""
from __future__ import annotations

import json
import pickle
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from explainers.workloads import adult
from explainers.workloads.adult import GROUP_NAMES, GROUP_WIDTHS, load_workload
from explainers.workloads.adult_files import ADULT_FILES, DatasetChecksumError

RECIPE = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "adult_recipe.json"


@pytest.fixture(scope="module", autouse=True)
def _private_cache_key(tmp_path_factory):
    """The model cache's signing key of this module: a temporary file, not the user's."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(adult.CACHE_KEY_ENV, str(tmp_path_factory.mktemp("key") / "model-cache.key"))
        yield


@pytest.fixture(scope="module")
def recipe() -> dict:
    if not RECIPE.is_file():
        pytest.skip(f"the study's recipe {RECIPE} is not available")
    return json.loads(RECIPE.read_text())


# --------------------------------------------------------------------------- the workload


def test_shapes_and_dtypes(adult_workload):
    w = adult_workload
    assert w.X_train.shape == (30000, 49) and w.X_train.dtype == np.float64
    assert w.y_train.shape == (30000,)
    assert w.X_explain.shape == (2560, 49) and w.X_explain.dtype == np.float64
    assert w.y_explain.shape == (2560,)
    assert w.background.shape == (100, 49) and w.background.dtype == np.float64
    assert w.X_train_raw.shape == (30000, 12) and w.X_explain_raw.shape == (2560, 12)
    assert set(np.unique(w.y_train)) == {0, 1} and set(np.unique(w.y_explain)) == {0, 1}
    assert len(w.feature_names) == 49 and len(set(w.feature_names)) == 49
    for a in (w.X_train, w.X_explain, w.background):
        assert np.isfinite(a).all()
    assert w.data_sha256 == ADULT_FILES["adult.data"]


def test_groups_partition_the_columns_with_the_recipe_widths(adult_workload):
    w = adult_workload
    assert [len(g) for g in w.groups] == [1, 1, 1, 1, 8, 6, 3, 8, 5, 4, 1, 10] == list(GROUP_WIDTHS)
    flat = [j for g in w.groups for j in g]
    assert flat == list(range(49))  # a partition, contiguous and in order
    assert w.group_names == [
        "Age", "Capital Gain", "Capital Loss", "Hours per week", "Workclass", "Education",
        "Marital Status", "Occupation", "Relationship", "Race", "Sex", "Country",
    ]
    assert w.group_names == list(GROUP_NAMES)
    for name, group in zip(w.group_names, w.groups):
        for j in group:
            assert w.feature_names[j] == name or w.feature_names[j].startswith(name + "=")


def test_one_hot_columns_are_indicators_and_numericals_standardised(adult_workload):
    w = adult_workload
    for group in w.groups[4:]:
        block = w.X_train[:, group]
        assert set(np.unique(block)) <= {0.0, 1.0}
        assert block.sum(axis=1).max() <= 1  # at most one level (the first is dropped)
    num = w.X_train[:, :4]
    np.testing.assert_allclose(num.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(num.std(axis=0), 1, atol=1e-12)


def test_background_is_the_first_training_rows(adult_workload):
    np.testing.assert_array_equal(adult_workload.background, adult_workload.X_train[:100])


def test_preprocessor_maps_raw_rows_to_the_matrices(adult_workload):
    w = adult_workload
    np.testing.assert_array_equal(w.preprocessor.transform(w.X_train_raw), w.X_train)
    np.testing.assert_array_equal(w.preprocessor.transform(w.X_explain_raw), w.X_explain)


def test_accuracy_on_the_explained_rows(adult_workload):
    acc = adult_workload.accuracy()
    assert 0.85 <= acc <= 0.86, acc
    assert acc == np.mean(adult_workload.model.predict(adult_workload.X_explain) == adult_workload.y_explain)


def test_arrays_are_read_only(adult_workload):
    with pytest.raises(ValueError, match="read-only"):
        adult_workload.X_explain[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        adult_workload.background[0, 0] = 1.0


def test_predict_proba_is_picklable(adult_workload):
    import cloudpickle

    X = adult_workload.X_explain[:7]
    expected = adult_workload.model.predict_proba(X)
    assert expected.shape == (7, 2)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        predict = pickle.loads(dumps(adult_workload.predict_proba))
        np.testing.assert_array_equal(predict(X), expected)


def test_load_leaves_the_global_rng_alone(adult_workload, adult_data_dir, tmp_path):
    np.random.seed(1234)
    before = np.random.get_state()[1].copy()
    load_workload(adult_data_dir, cache_dir=tmp_path)
    np.testing.assert_array_equal(np.random.get_state()[1], before)


# --------------------------------------------------------------------------- the study's recipe


def test_category_maps_are_the_recipes(recipe):
    assert adult.CATEGORY_MAPS == recipe["category_maps"]
    assert list(adult.RAW_COLUMNS) == recipe["raw_columns"]
    assert list(adult.DROPPED) == recipe["drop"]
    assert (adult.N_TRAIN, adult.N_BACKGROUND, adult.SEED) == (
        recipe["n_train"], recipe["n_background"], recipe["seed"])


def _study_pipeline(path: Path, recipe: dict):
    """The study's code path, step by step as it ran it (alibi ``fetch_adult`` + example).

    Written independently of ``explainers.workloads.adult``: python-engine parsing, ``DataFrame.replace``,
    ``LabelEncoder``, the global legacy RNG with ``permutation(np.c_[data, target])``,
    imputer pipelines and a sparse ``ColumnTransformer``, the model fitted on the sparse output.
    """
    import pandas as pd
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import LabelEncoder, OneHotEncoder, StandardScaler

    raw = pd.read_csv(path, header=None, delimiter=", ", engine="python").fillna("?")
    raw.columns = recipe["raw_columns"]
    target = (raw["Target"] == ">50K").astype(int).values
    data = raw.drop(recipe["drop"] + ["Target"], axis=1)
    features = list(data.columns)
    data = data.replace(recipe["category_maps"])
    # alibi tested dtype == 'O'; with pandas >= 3 text columns are 'str', hence this test
    categorical = [f for f in features if not pd.api.types.is_numeric_dtype(data[f])]
    category_map = {}
    for f in categorical:
        le = LabelEncoder()
        data[f] = le.fit_transform(data[f].values)
        category_map[features.index(f)] = list(le.classes_)
    data = data.values.astype(np.int64)

    state = np.random.get_state()
    try:
        np.random.seed(0)
        data_perm = np.random.permutation(np.c_[data, target])
    finally:
        np.random.set_state(state)
    data, target = data_perm[:, :-1], data_perm[:, -1]
    X_train, y_train = data[:30000, :], target[:30000]
    X_test, y_test = data[30001:, :], target[30001:]

    ordinal = [x for x in range(len(features)) if x not in category_map]
    categorical_ids = list(category_map)
    pre = ColumnTransformer(transformers=[
        ("num", Pipeline([("imputer", SimpleImputer(strategy="median")), ("scaler", StandardScaler())]), ordinal),
        ("cat", Pipeline([("imputer", SimpleImputer(strategy="median")),
                          ("onehot", OneHotEncoder(drop="first", handle_unknown="error"))]), categorical_ids),
    ])
    pre.fit(X_train)
    X_train_proc, X_test_proc = pre.transform(X_train), pre.transform(X_test)
    model = LogisticRegression(random_state=0, max_iter=500).fit(X_train_proc, y_train)
    return dict(features=features, category_map=category_map, X_train=X_train_proc, y_train=y_train,
                X_test=X_test_proc, y_test=y_test, model=model)


def test_reproduces_the_study_exactly(adult_workload, recipe):
    study = _study_pipeline(adult_workload.data_path, recipe)
    w = adult_workload
    assert w.raw_feature_names == study["features"]
    assert w.category_map == study["category_map"]
    dense = lambda m: m.toarray() if hasattr(m, "toarray") else m  # noqa: E731
    np.testing.assert_array_equal(w.X_train, dense(study["X_train"]))
    np.testing.assert_array_equal(w.y_train, study["y_train"])
    np.testing.assert_array_equal(w.X_explain, dense(study["X_test"]))
    np.testing.assert_array_equal(w.y_explain, study["y_test"])
    np.testing.assert_array_equal(w.model.coef_, study["model"].coef_)
    np.testing.assert_array_equal(w.model.intercept_, study["model"].intercept_)
    np.testing.assert_array_equal(w.model.predict(w.X_explain), study["model"].predict(study["X_test"]))
    assert w.accuracy() == study["model"].score(study["X_test"], study["y_test"])


# --------------------------------------------------------------------------- cache


def _assert_same_workload(a, b):
    for name in ("X_train", "y_train", "X_explain", "y_explain", "background", "X_train_raw", "X_explain_raw"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert a.groups == b.groups and a.feature_names == b.feature_names and a.category_map == b.category_map
    np.testing.assert_array_equal(a.model.coef_, b.model.coef_)
    np.testing.assert_array_equal(a.model.intercept_, b.model.intercept_)


def test_second_load_uses_the_cache_and_is_identical(adult_workload, adult_data_dir, tmp_path):
    import sklearn

    first = load_workload(adult_data_dir, cache_dir=tmp_path)
    assert not first.from_cache
    entry = first.cache_path
    assert entry.parent == tmp_path and entry.is_file()
    assert first.data_sha256[:16] in entry.name and sklearn.__version__ in entry.name
    manifest = adult.manifest_path(entry)
    assert sorted(p.name for p in tmp_path.iterdir()) == [entry.name, manifest.name]  # no temporary file left
    stamp = entry.stat().st_mtime_ns
    second = load_workload(adult_data_dir, cache_dir=tmp_path)
    assert second.from_cache and second.cache_path == entry
    assert entry.stat().st_mtime_ns == stamp  # not rewritten: nothing was refitted
    _assert_same_workload(first, second)
    _assert_same_workload(first, adult_workload)
    fresh = load_workload(adult_data_dir, use_cache=False)
    assert not fresh.from_cache and fresh.cache_path is None
    _assert_same_workload(first, fresh)
    print(f"\nload: fit {first.load_seconds:.3f} s, cached {second.load_seconds:.3f} s")


@pytest.fixture(scope="module")
def cache_entry(adult_data_dir, tmp_path_factory) -> tuple[str, bytes]:
    """Name and bytes of a valid cache entry, written by a real load."""
    w = load_workload(adult_data_dir, cache_dir=tmp_path_factory.mktemp("models"))
    return w.cache_path.name, w.cache_path.read_bytes()


def _write_signed(entry: Path, blob: bytes) -> None:
    """Write an entry with a manifest signed by this module's key (as load_workload would)."""
    entry.write_bytes(blob)
    key = adult._load_key(adult.resolve_key_file())
    adult.manifest_path(entry).write_bytes(adult._manifest_bytes(key, entry.name, blob))


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong payload", "other preprocessor",
                                    "signed garbage", "signed wrong payload", "signed other preprocessor"])
def test_corrupt_cache_entry_is_removed_and_rebuilt(adult_workload, adult_data_dir, cache_entry, tmp_path, damage):
    name, blob = cache_entry
    entry = tmp_path / name
    _write_signed(entry, blob)
    assert load_workload(adult_data_dir, cache_dir=tmp_path).from_cache  # the intact entry is used
    if damage.endswith("garbage"):
        bad = b"\x00 not a pickle"
    elif damage == "truncated":
        bad = blob[: len(blob) // 2]
    elif damage.endswith("wrong payload"):
        bad = pickle.dumps({"model": None})
    else:  # a valid pickle whose preprocessor does not reproduce the training matrix
        payload = pickle.loads(blob)
        payload["preprocessor"].named_transformers_["num"].mean_ += 1.0
        bad = pickle.dumps(payload)
    if damage.startswith("signed"):  # signed with the user's key, but not a usable entry
        _write_signed(entry, bad)
    else:  # the manifest no longer matches: rejected before unpickling
        entry.write_bytes(bad)
    with pytest.warns(adult.ModelCacheWarning, match=f"model cache entry {re.escape(str(entry))} rejected"):
        rebuilt = load_workload(adult_data_dir, cache_dir=tmp_path)
    assert not rebuilt.from_cache
    _assert_same_workload(rebuilt, adult_workload)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_workload(adult_data_dir, cache_dir=tmp_path).from_cache  # the entry was rewritten, signed


def test_cache_dir_from_the_environment(adult_workload, adult_data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(adult.CACHE_DIR_ENV, str(tmp_path / "env-cache"))
    w = load_workload(adult_data_dir)
    assert w.cache_path.parent == tmp_path / "env-cache" and w.cache_path.is_file()
    assert adult.resolve_cache_dir(tmp_path / "arg") == tmp_path / "arg"
    monkeypatch.delenv(adult.CACHE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert adult.resolve_cache_dir() == tmp_path / "xdg" / "distributed-kernelshap" / "models"


def test_unwritable_cache_dir_only_warns(adult_workload, adult_data_dir, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.warns(RuntimeWarning, match="could not write the model cache"):
        w = load_workload(adult_data_dir, cache_dir=blocker / "models")
    _assert_same_workload(w, adult_workload)


def test_data_file_with_wrong_checksum_is_refused(adult_data_dir, tmp_path):
    if adult_data_dir is None:
        pytest.skip("the UCI Adult files are not available locally (set ADULT_DATA_DIR)")
    content = (adult_data_dir / "adult.data").read_bytes()
    (tmp_path / "adult.data").write_bytes(content.replace(b"United-States", b"United-Kingdom", 1))
    (tmp_path / "adult.test").write_bytes((adult_data_dir / "adult.test").read_bytes())
    with pytest.raises(DatasetChecksumError, match=r"adult\.data has the wrong SHA-256"):
        load_workload(tmp_path, cache_dir=tmp_path / "models")
    assert not (tmp_path / "models").exists()  # nothing was fitted or cached
