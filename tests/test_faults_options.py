"""Issue 20, item 9: an impossible ``--n-instances`` is one usage error at start.

Before, ``--n-instances 99999`` was accepted at configure time and every test that used
``explain_instances`` errored from inside the fixture. The plugin now checks it against the
number of rows the Adult workload explains (``explainers.workloads.adult.N_EXPLAIN``, fixed by the
recipe: rows 30001..32560 of the permuted data) when pytest configures, without loading
the data.
"""
from __future__ import annotations

import time

import pytest

from explainers.workloads import adult

pytest_plugins = ["pytester"]


@pytest.fixture
def no_data_load(monkeypatch):
    """The check must not load (or download) the workload: loading it fails the inner run."""
    def refuse(*args, **kwargs):
        raise AssertionError("the workload was loaded to validate --n-instances")

    monkeypatch.setattr(adult, "load_workload", refuse)
    monkeypatch.delenv("PYTEST_ADDOPTS", raising=False)


USES_INSTANCES = """
def test_a(explain_instances):
    pass

def test_b(explain_instances):
    pass
"""


@pytest.mark.parametrize("source", ["command line", "ini"])
@pytest.mark.parametrize("n", ["99999", "2561"])
def test_too_many_instances_is_one_usage_error_at_start(pytester, no_data_load, source, n):
    pytester.makepyfile(USES_INSTANCES)
    if source == "ini":
        pytester.makeini(f"[pytest]\nkernelshap_n_instances = {n}\n")
        args: list[str] = []
    else:
        args = ["--n-instances", n]
    start = time.monotonic()
    result = pytester.runpytest(*args)
    assert time.monotonic() - start < 30
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    err = result.stderr.str()
    assert f"--n-instances: {n} is not allowed" in err
    assert "use an integer from 1 to 2560" in err  # what is allowed
    assert "test_a" not in result.stdout.str()  # nothing ran, nothing errored per test


def test_the_limit_is_the_workloads_explain_set():
    assert adult.N_EXPLAIN == 2560 == adult.N_ROWS - adult.EXPLAIN_START


def test_the_whole_explain_set_is_allowed(pytester, no_data_load):
    pytester.makepyfile(
        """
        def test_n(kernelshap_ray):
            assert kernelshap_ray.options.n_instances == 2560
        """
    )
    result = pytester.runpytest("--n-instances", "2560")
    result.assert_outcomes(passed=1)
