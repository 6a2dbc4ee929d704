"""Any team's own workload (``--workload MODULE:CALLABLE``): the loader, its errors, and the two bundled workloads.

Every test here but the last two runs without Ray. The last two run the plugin in a
subprocess and need its ``--workload`` option (they skip until the plugin has it).
"""
from __future__ import annotations

import importlib
import json
import os
import sys
import textwrap
import time
from itertools import combinations
from math import factorial
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from explainers.kernelshap.engine import KernelShap
from explainers.workloads import adult, breast_cancer
from explainers.workloads.workload import (
    DEFAULT_WORKLOAD,
    PROBE_ROWS,
    Workload,
    WorkloadError,
    check_instances,
    load_workload,
)

pytest_plugins = ["pytester"]

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "perf" / "test_scaling.py"
BREAST_CANCER = "explainers.workloads.breast_cancer:workload"

#: A valid toy workload module; each bad case below appends lines that break one thing in ATTRS.
TOY_MODULE = """
import numpy as np
from types import SimpleNamespace

BACKGROUND = np.arange(12.0).reshape(4, 3)
X = BACKGROUND[::-1] + 0.5
CALLS = []

def predict(rows):
    CALLS.append(rows.shape)
    return 1.0 / (1.0 + np.exp(-rows.sum(axis=1) / 10.0))

ATTRS = dict(name="toy", predict=predict, background=BACKGROUND, X=X)

def make():
    return SimpleNamespace(**ATTRS)
"""


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """``write_module(source) -> module name``: a module of ``source`` importable from ``tmp_path``."""
    monkeypatch.syspath_prepend(str(tmp_path))
    names = []

    def write(source: str) -> str:
        name = f"team_workload_{len(names)}"
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        importlib.invalidate_caches()
        names.append(name)
        return name

    yield write
    for name in names:
        sys.modules.pop(name, None)


def _error(spec: str) -> str:
    with pytest.raises(WorkloadError) as info:
        load_workload(spec)
    message = str(info.value)
    assert message.startswith(f"--workload {spec}:"), message
    return message


# --------------------------------------------------------------------------- good specs


def test_a_good_module_loads_and_is_normalised(write_module):
    name = write_module(TOY_MODULE + "ATTRS['background'] = BACKGROUND.astype(np.float32).tolist()\n")
    w = load_workload(f"{name}:make")
    assert isinstance(w, Workload) and w.name == "toy" and w.link == "identity"
    assert w.groups == [[0], [1], [2]] and w.group_names == ["x0", "x1", "x2"]
    for array, shape in ((w.background, (4, 3)), (w.X, (4, 3))):
        assert array.shape == shape and array.dtype == np.float64
        assert array.flags.c_contiguous and not array.flags.writeable
    module = importlib.import_module(name)
    np.testing.assert_array_equal(w.X, module.X)
    assert not np.shares_memory(w.X, module.X) and module.X.flags.writeable  # the team's array is left alone
    assert max(rows for rows, _ in module.CALLS) <= PROBE_ROWS  # validation calls predict on a few rows only


def test_any_object_with_the_attributes_is_accepted(monkeypatch):
    import explainers.workloads as package

    toy = SimpleNamespace(
        name="ns", predict=lambda rows: rows[:, :2] * 0.1, background=np.ones((3, 4)), X=np.zeros((5, 4)),
        groups=[np.array([3, 0]), (1, 2)], group_names=("outer", "inner"),
    )
    monkeypatch.setattr(package, "toy_factory", lambda: toy, raising=False)
    w = load_workload("explainers.workloads:toy_factory")
    assert w.groups == [[3, 0], [1, 2]] and all(type(j) is int for g in w.groups for j in g)
    assert w.group_names == ["outer", "inner"] and w.link == "identity"


def test_groups_without_names_are_named_by_index(write_module):
    name = write_module(TOY_MODULE + "ATTRS['groups'] = [[0, 2], [1]]\n")
    assert load_workload(f"{name}:make").group_names == ["0", "1"]


def test_a_dotted_callable_path_and_a_workload_instance(write_module):
    name = write_module(
        TOY_MODULE
        + """
from explainers.workloads.workload import Workload

class Factory:
    @staticmethod
    def build():
        return Workload(name="built", predict=predict, background=BACKGROUND, X=X, link="logit")
"""
    )
    w = load_workload(f"  {name}:Factory.build ")
    assert w.name == "built" and w.link == "logit"


def test_the_default_spec_is_the_adult_workload():
    assert DEFAULT_WORKLOAD == "explainers.workloads.adult:workload"
    module, _, attribute = DEFAULT_WORKLOAD.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))


# --------------------------------------------------------------------------- bad specs


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("mypkg.mod", "expected MODULE:CALLABLE"),
        ("mypkg.mod:", "expected MODULE:CALLABLE"),
        (":make", "expected MODULE:CALLABLE"),
        ("a:b:c", "expected MODULE:CALLABLE"),
        ("no_such_team_pkg.mod:make", "module 'no_such_team_pkg.mod' cannot be imported: No module named 'no_such_team_pkg'"),
        ("explainers.workloads.workload:DEFAULT_WORKLOAD", "'DEFAULT_WORKLOAD' is not callable (a str)"),
        ("explainers.workloads.workload:no_such_factory", "module 'explainers.workloads.workload' has no attribute 'no_such_factory'"),
        ("explainers.workloads.workload:Workload.nope", "'explainers.workloads.workload.Workload' has no attribute 'nope'"),
        ("explainers.workloads.workload:Workload..x", "is not a dotted attribute path"),
    ],
)
def test_bad_spec_syntax_and_names(spec, problem):
    assert problem in _error(spec)


def test_a_module_whose_own_import_fails_reports_the_import_error(write_module):
    name = write_module("import team_dependency_that_is_not_installed\n")
    message = _error(f"{name}:make")
    assert f"module {name!r} cannot be imported" in message
    assert "No module named 'team_dependency_that_is_not_installed'" in message


def test_a_module_that_raises_on_import_is_reported(write_module):
    name = write_module("raise RuntimeError('set TEAM_TOKEN first')\n")
    assert f"importing module {name!r} raised RuntimeError: set TEAM_TOKEN first" in _error(f"{name}:make")


def test_a_callable_that_raises_is_reported_with_its_type_and_message(write_module):
    name = write_module("def make():\n    raise FileNotFoundError('model.pkl is missing')\n")
    assert "calling it raised FileNotFoundError: model.pkl is missing" in _error(f"{name}:make")


@pytest.mark.parametrize(
    "change, problem",
    [
        ("del ATTRS['X']", "has no attribute 'X'"),
        ("del ATTRS['predict']; del ATTRS['name']", "has no attribute 'name', 'predict'"),
        ("ATTRS['name'] = ''", "name must be a non-empty string"),
        ("ATTRS['predict'] = 'model.pkl'", "predict must be callable, got str"),
        ("ATTRS['background'] = np.arange(3.0)", "background must be 2-D (rows, columns), got shape (3,)"),
        ("ATTRS['X'] = np.zeros((2, 2, 3))", "X must be 2-D (rows, columns), got shape (2, 2, 3)"),
        ("ATTRS['X'] = np.zeros((2, 4))", "X has 4 columns but background has 3"),
        ("ATTRS['background'] = np.array([['a', 'b', 'c']])", "background must hold real numbers, got dtype <U1"),
        ("BACKGROUND[1, 2] = np.nan", "background contains NaN or inf (first at row 1, column 2)"),
        ("ATTRS['X'] = np.full((2, 3), np.inf)", "X contains NaN or inf (first at row 0, column 0)"),
        ("ATTRS['X'] = np.zeros((0, 3))", "X is empty (shape (0, 3))"),
        ("ATTRS['background'] = np.zeros((0, 3))", "background is empty (shape (0, 3))"),
        ("ATTRS['groups'] = [[0, 1], [3]]", "group 1 holds column 3, not a valid index for 3 columns"),
        ("ATTRS['groups'] = [[0, -1], [1, 2]]", "group 0 holds column -1, not a valid index"),
        ("ATTRS['groups'] = [[0, 1], [1, 2]]", "column 1 is in groups 0 and 1: groups must not overlap"),
        ("ATTRS['groups'] = [[0], [2]]", "columns [1] are in no group: groups must cover all 3 columns"),
        ("ATTRS['groups'] = [[0, 1.0, 2]]", "group 0 holds 1.0: column indices must be integers"),
        ("ATTRS['groups'] = [[0, 1, 2], []]", "group 1 is empty"),
        ("ATTRS['groups'] = {'a': [0, 1, 2]}", "groups must be a list of lists of column indices, got dict"),
        ("ATTRS['groups'] = []", "groups is empty"),
        ("ATTRS['group_names'] = ['a', 'b']", "2 group_names for 3 groups"),
        ("ATTRS['group_names'] = ['a', 'b', 'a']", "group_names has duplicates ['a']"),
        ("ATTRS['link'] = 'probit'", "unknown link 'probit': use one of ['identity', 'logit']"),
        ("ATTRS['predict'] = lambda rows: 1 / 0", "predict raised ZeroDivisionError on 2 rows of the background: division by zero"),
        ("ATTRS['predict'] = lambda rows: rows[:1, 0]", "predict returned shape (1,) on 2 rows of the background: expected (2,) or (2, K)"),
        ("ATTRS['predict'] = lambda rows: rows[None]", "predict returned shape (1, 2, 3) on 2 rows of the background"),
        ("ATTRS['predict'] = lambda rows: np.where(rows[:, 0] > 1, 1.0, np.nan)", "predict returned NaN or inf on 2 rows of the background"),
        ("ATTRS['predict'] = lambda rows: np.array(['yes'] * len(rows))", "predict returned non-numeric output (dtype <U3)"),
        ("ATTRS['predict'] = lambda rows: rows[:, 0] + 1j", "predict returned non-numeric output (dtype complex128)"),
        ("ATTRS['predict'] = lambda rows: rows[:, 0] if rows[0, 0] < 1 else rows[:, :2]",
         "predict returns shape (rows,) for the background but shape (rows, 2) for X"),
        ("ATTRS['link'] = 'logit'; ATTRS['predict'] = lambda rows: rows.sum(axis=1)",
         "predict returned values outside (0, 1) on 2 rows of the background (min 3, max 12): link 'logit' needs probabilities"),
        ("ATTRS['link'] = 'logit'; ATTRS['predict'] = lambda rows: np.ones((len(rows), 2))",
         "predict returned values outside (0, 1) on 2 rows of the background"),
    ],
)
def test_bad_workloads_name_the_spec_and_the_problem(write_module, change, problem):
    name = write_module(TOY_MODULE + change + "\n")
    assert problem in _error(f"{name}:make")


def test_logit_outputs_outside_the_unit_interval_in_X_are_caught(write_module):
    name = write_module(TOY_MODULE + "ATTRS['link'] = 'logit'; ATTRS['predict'] = lambda rows: (rows[:, 0] + 1) / 10\n")
    assert "predict returned values outside (0, 1) on 2 rows of X" in _error(f"{name}:make")


def test_a_non_string_spec_is_refused():
    with pytest.raises(WorkloadError, match="must be a string MODULE:CALLABLE, got int"):
        load_workload(3)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- check_instances


def test_check_instances():
    w = SimpleNamespace(name="breast-cancer", X=np.zeros((569, 30)))
    check_instances(w, 1)
    check_instances(w, 569)
    with pytest.raises(WorkloadError, match=r"--n-instances 3000 is above the 569 instances of workload 'breast-cancer'"):
        check_instances(w, 3000)
    with pytest.raises(WorkloadError, match=r"--n-instances 570 is above"):
        check_instances(w, 570)
    with pytest.raises(WorkloadError, match=r"--n-instances 0 is below 1: use an integer from 1 to 569"):
        check_instances(w, 0)


# --------------------------------------------------------------------------- the Adult workload


@pytest.fixture(scope="module")
def adult_reference(adult_data_dir, tmp_path_factory):
    """``adult.workload()`` with the test's Adult files and a private model cache and signing key."""
    with pytest.MonkeyPatch.context() as mp:
        private = tmp_path_factory.mktemp("adult-cache")
        mp.setenv(adult.CACHE_DIR_ENV, str(private))
        mp.setenv(adult.CACHE_KEY_ENV, str(private / "model-cache.key"))
        if adult_data_dir is not None:
            mp.setenv("ADULT_DATA_DIR", str(adult_data_dir))
        yield adult.workload(), load_workload(DEFAULT_WORKLOAD)


def test_adult_workload_fields_and_shapes(adult_reference):
    w, loaded = adult_reference
    assert isinstance(w, Workload) and w.name == "adult" and w.link == "logit"
    assert w.background.shape == (100, 49) and w.X.shape == (adult.N_EXPLAIN, 49) == (2560, 49)
    assert w.group_names == list(adult.GROUP_NAMES)
    assert [len(g) for g in w.groups] == list(adult.GROUP_WIDTHS)
    assert sorted(j for g in w.groups for j in g) == list(range(49))
    assert w.predict(w.X[:3]).shape == (3, 2)
    assert loaded.name == "adult" and loaded.groups == w.groups and loaded.group_names == w.group_names
    np.testing.assert_array_equal(loaded.X, w.X)
    np.testing.assert_array_equal(loaded.background, w.background)


# --------------------------------------------------------------------------- the breast cancer workload


def test_breast_cancer_shapes_and_groups():
    w = breast_cancer.workload()
    assert isinstance(w, Workload) and w.name == "breast-cancer" and w.link == "logit"
    assert w.X.shape == (breast_cancer.N_EXPLAIN, 30) and w.background.shape == (breast_cancer.N_BACKGROUND, 30)
    assert 40 <= len(w.background) <= 60
    assert len(w.groups) == 10 and sorted(j for g in w.groups for j in g) == list(range(30))
    assert all(len(g) == 3 for g in w.groups)
    names = breast_cancer.fitted().feature_names
    radius = w.groups[w.group_names.index("radius")]
    assert [names[j] for j in radius] == ["mean radius", "radius error", "worst radius"]
    assert w.group_names[:3] == ["radius", "texture", "perimeter"] and "fractal dimension" in w.group_names
    loaded = load_workload(BREAST_CANCER)
    assert loaded.groups == w.groups and loaded.group_names == w.group_names


def test_breast_cancer_split_model_and_cache():
    fit = breast_cancer.fitted()
    assert breast_cancer.fitted() is fit  # fitted once per process
    assert len(fit.X_train) + len(fit.X_explain) == 569
    train_rows = {row.tobytes() for row in fit.X_train}
    assert not any(row.tobytes() in train_rows for row in fit.X_explain)  # X is held out
    assert all(row.tobytes() in train_rows for row in fit.background)
    assert fit.accuracy() > 0.9
    assert not fit.X_explain.flags.writeable and not fit.background.flags.writeable
    breast_cancer.fitted.cache_clear()
    refit = breast_cancer.fitted()
    assert refit is not fit
    np.testing.assert_array_equal(refit.X_explain, fit.X_explain)
    np.testing.assert_array_equal(refit.model.predict_proba(fit.X_explain), fit.model.predict_proba(fit.X_explain))


def test_measurement_groups_refuses_other_feature_names():
    with pytest.raises(ValueError, match="differ from the expected 30 names"):
        breast_cancer.measurement_groups(("mean radius", "radius error"))


def _logit(p: np.ndarray) -> np.ndarray:
    return np.log(p / (1.0 - p))


def _brute_force_shapley(w: Workload, x: np.ndarray) -> np.ndarray:
    """Exact Shapley values of ``x`` (``(D,)``) for class 1 by the Shapley formula: ``(M,)``."""
    m = len(w.groups)

    def value(players: tuple[int, ...]) -> float:
        rows = np.array(w.background)
        for g in players:
            rows[:, w.groups[g]] = x[w.groups[g]]
        return float(_logit(w.predict(rows)[:, 1].mean()))

    values = {s: value(s) for k in range(m + 1) for s in combinations(range(m), k)}
    phi = np.zeros(m)
    for i in range(m):
        for s, v in values.items():
            if i not in s:
                with_i = tuple(sorted(s + (i,)))
                phi[i] += factorial(len(s)) * factorial(m - len(s) - 1) / factorial(m) * (values[with_i] - v)
    return phi


def test_kernelshap_explains_breast_cancer_exactly():
    w = load_workload(BREAST_CANCER)
    engine = KernelShap(w.predict, w.background, groups=w.groups, group_names=w.group_names, link=w.link)
    assert engine.exact and engine.n_groups == 10 and engine.group_names == w.group_names
    X = w.X[:4]
    phi = engine.explain(X)
    assert phi.shape == (4, 10, 2)
    gap = phi.sum(axis=1) - (_logit(w.predict(X)) - engine.expected_value)
    assert np.abs(gap).max() < 1e-10
    np.testing.assert_allclose(phi[0, :, 1], _brute_force_shapley(w, X[0]), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- through the plugin


@pytest.mark.slow
def test_suite_runs_the_breast_cancer_workload(pytester, monkeypatch):
    """Starts a local Ray (run under ``flock /tmp/ray.lock``)."""
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    pytester.makepyfile(test_scaling=SUITE.read_text())
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "--workload", BREAST_CANCER, "--backends", "pool", "--workers", "1",
        "--batch-sizes", "4", "--n-instances", "8", "--nruns", "1", "--benchmark-json=out.json",
        timeout=600,
    )
    assert result.ret == pytest.ExitCode.OK, result.stdout.str()[-3000:] + result.stderr.str()[-3000:]
    outcomes = result.parseoutcomes()
    assert outcomes.get("passed", 0) >= 2 and not outcomes.get("failed") and not outcomes.get("errors")
    saved = json.loads((pytester.path / "out.json").read_text())
    assert saved["machine_info"]["workload"] == "breast-cancer"
    assert {b["param"] for b in saved["benchmarks"]} >= {"serial", "pool-w1-b4"}
    assert all(b["extra_info"]["workload"] == "breast-cancer" for b in saved["benchmarks"])


def test_a_bad_workload_is_a_usage_error_at_start(pytester, monkeypatch):
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)
    monkeypatch.setenv("PYTHONPATH", str(pytester.path), prepend=os.pathsep)
    pytester.makepyfile(
        team_bad_workload="""
        import numpy as np
        from types import SimpleNamespace

        def make():
            return SimpleNamespace(name="bad", predict=lambda rows: rows[:, 0],
                                   background=np.zeros((5, 3)), X=np.zeros((5, 4)))
        """,
        test_x="def test_x():\n    pass\n",
    )
    start = time.monotonic()
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--workload", "team_bad_workload:make", timeout=30)
    assert time.monotonic() - start < 30
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()[-2000:] + result.stderr.str()[-2000:]
    stderr = result.stderr.str()
    assert "team_bad_workload:make" in stderr and "X has 4 columns but background has 3" in stderr
