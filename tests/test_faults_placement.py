"""Faults of the Ray backends that used to hang or mislead (issue 20, items 3 and 9).

- item 3, a busy cluster: workers that cannot be placed (another actor holds every CPU) are a
  :class:`PlacementError` within ``placement_timeout_s``, naming what was asked, what is free and
  what holds it; nothing of the attempt is left running, and the explainer works once CPUs are free;
- item 9, messages: a model that cannot be unpickled on the workers (its module exists only on
  the driver) is an error that names the workers' exception, on every backend, not a retry count
  or a generic Serve / Ray Data error.

Every call runs in a thread joined with a bound, so a hang fails the test instead of the run.
"""
from __future__ import annotations

import importlib
import math
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from test_distributed import wait_until  # noqa: E402

ray = pytest.importorskip("ray")

import explainers.kernelshap.distributed as distributed  # noqa: E402
from explainers.kernelshap.distributed import DistributedKernelShap  # noqa: E402

ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

pytestmark = pytest.mark.usefixtures("ray_session")

#: a bound on one call in these tests: placement_timeout_s (3 s) plus starting and removing workers
CALL_BOUND_S = 60.0
PLACEMENT_TIMEOUT_S = 3.0

BACKENDS = [
    pytest.param(dict(backend="pool"), id="pool"),
    pytest.param(dict(backend="data"), id="data"),
    pytest.param(dict(backend="serve", serve_mode="ray"), id="serve-ray"),
]


# ------------------------------------------------------------------------ helpers
@pytest.fixture(scope="module")
def problem():
    """A small logistic model: ``(predict_proba, engine kwargs, X (12, 5))``."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(3)
    data = rng.normal(size=(200, 5))
    y = (data[:, 0] - data[:, 2] > 0).astype(int)
    model = LogisticRegression().fit(data, y)
    return model, dict(background=data[:10], nsamples=32, seed=1), data[100:112]


def bounded(fn, timeout: float = CALL_BOUND_S) -> dict:
    """Run ``fn()`` in a thread; fail if it has not returned after ``timeout`` s.

    Returns ``{"value" | "error": ..., "seconds": ...}``.
    """
    box: dict = {}

    def target() -> None:
        t0 = time.monotonic()
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc
        finally:
            box["seconds"] = time.monotonic() - t0

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still waiting after {timeout:g} s (it would hang)"
    return box


def our_leftovers() -> list[str]:
    """Our actors (pool actors, Serve replicas, Ray Data map actors, queues) and Serve apps still up."""
    from ray._private import state

    left = [
        f"{a['ActorClassName']} {a['Name']} {a['State']}"
        for a in state.actors().values()
        if a["State"] != "DEAD" and (
            "KernelShap" in a["ActorClassName"] or a["Name"].startswith("kernelshap")
            or "kernelshap-" in a["ActorClassName"] or "MapWorker" in a["ActorClassName"])
    ]
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return left
    left += [f"serve app {name}" for name in serve.status().applications if name.startswith("kernelshap")]
    return left


@pytest.fixture()
def no_leftovers():
    yield
    left = wait_until(lambda: not our_leftovers(), timeout=20) is None and our_leftovers()
    assert not left, f"left running: {left}"


class CpuBlocker:
    """Another user's actor that holds CPUs."""

    def ready(self) -> bool:
        return True


@pytest.fixture()
def busy_cluster():
    """An actor holding every CPU of the cluster, killed after the test."""
    cpus = float(ray.cluster_resources()["CPU"])
    blocker = ray.remote(CpuBlocker).options(num_cpus=cpus, name=f"blocker-{uuid.uuid4().hex[:6]}").remote()
    ray.get(blocker.ready.remote(), timeout=60)
    try:
        yield blocker
    finally:
        ray.kill(blocker)
        assert wait_until(lambda: ray.available_resources().get("CPU", 0) >= cpus, timeout=30), \
            "the blocker's CPUs did not come back"


# ------------------------------------------------------------------ item 3: a busy cluster
@pytest.mark.parametrize("placement_timeout_s", [0, -1, "3", True, math.nan, math.inf])
def test_placement_timeout_must_be_a_positive_finite_number(placement_timeout_s, problem):
    model, kwargs, _ = problem
    with pytest.raises(ValueError, match="placement_timeout_s must be a finite number > 0"):
        DistributedKernelShap(model.predict_proba, **kwargs, placement_timeout_s=placement_timeout_s)


@pytest.mark.parametrize("config", BACKENDS)
def test_busy_cluster_is_a_placement_error(config, problem, busy_cluster, no_leftovers):
    """``explain`` (temporary workers) on a cluster whose CPUs are all held: a clear error, soon."""
    model, kwargs, X = problem
    explainer = DistributedKernelShap(model.predict_proba, **kwargs, **config, workers=2, batch_size=6,
                                      placement_timeout_s=PLACEMENT_TIMEOUT_S, progress=False)
    box = bounded(lambda: explainer.explain(X))
    err = box.get("error")
    assert isinstance(err, distributed.PlacementError), repr(err)
    assert isinstance(err, TimeoutError)
    message = str(err)
    assert "2 workers x 1 CPU" in message, message
    assert "available" in message, message
    assert "CpuBlocker" in message, message  # what holds the CPUs
    assert "placement_timeout_s" in message, message
    assert box["seconds"] < PLACEMENT_TIMEOUT_S + 30, box["seconds"]


def test_busy_cluster_start_is_a_placement_error_and_the_explainer_recovers(problem, busy_cluster,
                                                                           no_leftovers):
    """``start()`` fails the same way; once the CPUs are free, the same explainer works."""
    model, kwargs, X = problem
    explainer = DistributedKernelShap(model.predict_proba, **kwargs, backend="pool", workers=2,
                                      placement_timeout_s=PLACEMENT_TIMEOUT_S, progress=False)
    box = bounded(explainer.start)
    assert isinstance(box.get("error"), distributed.PlacementError), repr(box.get("error"))
    assert explainer._workers is None
    assert wait_until(lambda: not our_leftovers(), timeout=20), our_leftovers()
    ray.kill(busy_cluster)
    assert wait_until(lambda: ray.available_resources().get("CPU", 0) >= 2, timeout=30)
    box = bounded(lambda: explainer.explain(X))
    assert "error" not in box, box.get("error")
    expected = distributed.KernelShap(model.predict_proba, **kwargs).explain(X)
    assert np.array_equal(box["value"], expected)


def test_partly_free_cluster_is_a_placement_error(problem, no_leftovers):
    """One CPU free of the two asked: the actor that is placed is removed as well."""
    model, kwargs, X = problem
    cpus = float(ray.cluster_resources()["CPU"])
    blocker = ray.remote(CpuBlocker).options(num_cpus=cpus - 1).remote()
    ray.get(blocker.ready.remote(), timeout=60)
    try:
        explainer = DistributedKernelShap(model.predict_proba, **kwargs, backend="pool", workers=2,
                                          batch_size=6, placement_timeout_s=PLACEMENT_TIMEOUT_S,
                                          progress=False)
        box = bounded(lambda: explainer.explain(X))
        err = box.get("error")
        assert isinstance(err, distributed.PlacementError), repr(err)
        assert "1 of 2" in str(err), str(err)
    finally:
        ray.kill(blocker)


# ------------------------------------------------------------------ item 9: the root cause
DRIVER_ONLY_SOURCE = '''
class DriverOnlyPredict:
    """A predict function whose module exists only on the driver's sys.path."""

    def __init__(self, model):
        self.model = model

    def __call__(self, X):
        return self.model.predict_proba(X)
'''


@pytest.fixture()
def driver_only_predict(tmp_path, problem, monkeypatch):
    """A picklable predict function whose module the workers cannot import (cloudpickle
    pickles it by reference, as it does every importable module)."""
    name = f"driver_only_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(DRIVER_ONLY_SOURCE)
    monkeypatch.syspath_prepend(str(tmp_path))  # after ray.init: the workers' sys.path lacks it
    module = importlib.import_module(name)
    yield module.DriverOnlyPredict(problem[0]), name
    sys.modules.pop(name, None)


@pytest.mark.parametrize("config", BACKENDS + [
    pytest.param(dict(backend="serve", serve_mode="default"), id="serve-default")])
def test_model_that_does_not_unpickle_on_workers_names_the_cause(config, problem, driver_only_predict,
                                                                 no_leftovers):
    predict, module_name = driver_only_predict
    _, kwargs, X = problem
    explainer = DistributedKernelShap(predict, **kwargs, **config, workers=2, batch_size=6,
                                      progress=False)
    box = bounded(lambda: explainer.explain(X))
    err = box.get("error")
    assert err is not None, "explain worked though the workers cannot import the model"
    message = str(err)
    assert isinstance(err, distributed.WorkerStartError), f"{type(err).__name__}: {message}"
    assert f"ModuleNotFoundError: No module named '{module_name}'" in message, message
    assert "died more than" not in message, message  # the actors never ran: no restarts happened
    assert len(message) < 2000, message  # the cause, not pages of tracebacks


class RaisesOnLoad:
    """Pickles fine; unpickling (on a worker) raises."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, X: np.ndarray) -> np.ndarray:
        return self.model.predict_proba(X)

    def __reduce__(self):
        return (_refuse_to_load, ("the model file is corrupt",))


def _refuse_to_load(why: str):
    raise OSError(why)


def test_start_names_the_workers_exception(problem, no_leftovers):
    """``start()`` of a pool whose actors' constructor fails: the exception, at once."""
    model, kwargs, _ = problem
    explainer = DistributedKernelShap(RaisesOnLoad(model), **kwargs, backend="pool", workers=2,
                                      progress=False)
    box = bounded(explainer.start)
    err = box.get("error")
    assert isinstance(err, distributed.WorkerStartError), repr(err)
    assert "OSError: the model file is corrupt" in str(err), str(err)
    assert box["seconds"] < 20, box["seconds"]
