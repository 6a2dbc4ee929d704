"""DistributedKernelShap on Ray: every backend equals the serial engine, survives a dead
worker, names the rows a failing model broke, and leaves nothing running.

One Ray session for the whole run (``ray_session`` in conftest.py); the reference Adult
workload with a sampled ``nsamples=200`` keeps each explain call short.
"""
from __future__ import annotations

import pickle
import sys
import threading
import time

import numpy as np
import psutil
import pytest

ray = pytest.importorskip("ray")

from ray import cloudpickle  # noqa: E402

from explainers.kernelshap.backends.common import (  # noqa: E402
    ExplanationError,
    contiguous_runs,
    describe_rows,
    explain_indexed,
    minibatches,
)
from explainers.kernelshap.backends.serve import DEPLOYMENT_NAME  # noqa: E402
from explainers.kernelshap.distributed import DistributedKernelShap, explain_in_cluster  # noqa: E402
from explainers.kernelshap.engine import KernelShap  # noqa: E402
from explainers.bench.machine_cpu import take_snapshot  # noqa: E402

# Models defined here travel to workers by value (workers cannot import this test module).
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

NSAMPLES = 200
N_ROWS = 67  # 67 rows in batches of 10: six full minibatches and one of 7
POISON = 1e6  # a value no real row has; the raising model trips on it

pytestmark = pytest.mark.usefixtures("ray_session")


# ------------------------------------------------------------------------ helpers
class SlowModel:
    """``predict_proba`` that sleeps per call, so a run lasts long enough to kill a worker."""

    def __init__(self, model, seconds: float) -> None:
        self.model, self.seconds = model, seconds

    def __call__(self, X: np.ndarray) -> np.ndarray:
        time.sleep(self.seconds)
        return self.model.predict_proba(X)


class RaisingModel:
    """Raises for any row carrying :data:`POISON` in column 0."""

    def __init__(self, model) -> None:
        self.model = model

    def __call__(self, X: np.ndarray) -> np.ndarray:
        if np.any(X[:, 0] == POISON):
            raise FloatingPointError("model exploded on a poisoned row")
        return self.model.predict_proba(X)


def alive_actors() -> list[dict]:
    """ALIVE actors from the GCS (the state API needs the dashboard, which is off here)."""
    from ray._private import state

    return [a for a in state.actors().values() if a["State"] == "ALIVE"]


def our_leftovers() -> list[str]:
    """Actors, Serve applications and Ray Data workers of ours still running."""
    left = [
        f"{a['ActorClassName']} {a['Name']}"
        for a in alive_actors()
        if "KernelShap" in a["ActorClassName"] or a["Name"].startswith("kernelshap")
        or "kernelshap-" in a["ActorClassName"] or "MapWorker" in a["ActorClassName"]
    ]
    from ray import serve
    from ray.serve._private.constants import SERVE_CONTROLLER_NAME, SERVE_NAMESPACE

    try:
        ray.get_actor(SERVE_CONTROLLER_NAME, namespace=SERVE_NAMESPACE)
    except ValueError:
        return left  # Serve never started: no applications
    left += [f"serve app {name}" for name in serve.status().applications if name.startswith("kernelshap")]
    return left


def wait_until(predicate, timeout: float = 20.0, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    return None


@pytest.fixture()
def no_leftovers():
    """After the test, none of our actors / Serve apps / Data workers may be alive."""
    yield
    # Killed actors take a moment to be marked DEAD in the GCS.
    left = wait_until(lambda: not our_leftovers(), timeout=15) is None and our_leftovers()
    assert not left, f"left running after explain: {left}"


@pytest.fixture(scope="module")
def workload(adult_workload):
    return adult_workload


@pytest.fixture(scope="module")
def engine_kwargs(workload) -> dict:
    return dict(
        background=workload.background,
        groups=workload.groups,
        group_names=workload.group_names,
        nsamples=NSAMPLES,
        seed=7,
    )


@pytest.fixture(scope="module")
def X(workload) -> np.ndarray:
    return np.array(workload.X_explain[:N_ROWS])


@pytest.fixture(scope="module")
def serial_engine(workload, engine_kwargs) -> KernelShap:
    return KernelShap(workload.predict_proba, **engine_kwargs)


@pytest.fixture(scope="module")
def serial(serial_engine, X) -> np.ndarray:
    """The serial engine's values: the ground truth, (67, 12, 2)."""
    return serial_engine.explain(X)


@pytest.fixture(scope="module")
def slow_kwargs(engine_kwargs, serial_engine) -> dict:
    """``engine_kwargs`` with the serial engine's chunk size and row strategy, for a
    :class:`SlowModel`: a wrapped model is calibrated on its own (a sleeping one favours other
    chunks and strategies), and values are the same bits only for the same parameters."""
    return dict(engine_kwargs, chunk_rows=serial_engine.chunk_rows_, row_strategy=serial_engine.row_strategy_)


def assert_same(values: np.ndarray, serial: np.ndarray) -> None:
    assert values.shape == serial.shape
    assert np.isfinite(values).all()
    diff = float(np.max(np.abs(values - serial)))
    assert np.array_equal(values, serial), f"not bitwise identical: max |distributed - serial| = {diff:.3g}"


# ------------------------------------------------------------------ pure helpers
def test_minibatches_cover_rows_once():
    assert minibatches(67, 10)[-1] == (60, 67)
    assert len(minibatches(67, 10)) == 7
    assert minibatches(3, 10) == [(0, 3)]
    covered = np.concatenate([np.arange(a, b) for a, b in minibatches(101, 7)])
    assert covered.tolist() == list(range(101))


def test_contiguous_runs_and_row_description():
    assert contiguous_runs([3, 4, 5, 9, 10, 12]) == [(3, 6), (9, 11), (12, 13)]
    assert describe_rows([12, 3, 4, 5, 9]) == "3-5, 9, 12"


def test_explain_indexed_any_order_equals_serial(workload, engine_kwargs, X, serial):
    engine = KernelShap(workload.predict_proba, **engine_kwargs)
    idx = [9, 2, 3, 4, 40, 41, 0]
    assert_same(explain_indexed(engine, idx, X[idx]), serial[idx])


# ------------------------------------------------------------------ equality
CONFIGS = [
    pytest.param(dict(backend="pool", workers=2, batch_size=10), id="pool-w2-b10"),
    pytest.param(dict(backend="data", workers=2, batch_size=10), id="data-w2-b10"),
    pytest.param(dict(backend="serve", serve_mode="ray", workers=2, batch_size=10), id="serve-ray-w2-b10"),
    pytest.param(dict(backend="serve", serve_mode="default", workers=2, batch_size=10),
                 id="serve-default-w2-b10"),
    # more workers than minibatches (67 rows / 30 = 3 minibatches), fractional CPUs
    pytest.param(dict(backend="pool", workers=5, batch_size=30, num_cpus_per_worker=0.5), id="pool-w5-b30"),
    pytest.param(dict(backend="data", workers=5, batch_size=30, num_cpus_per_worker=0.5), id="data-w5-b30"),
    pytest.param(dict(backend="serve", serve_mode="ray", workers=5, batch_size=30, num_cpus_per_worker=0.5),
                 id="serve-ray-w5-b30"),
    # one worker, batch size 1 (ray mode: every batch one instance)
    pytest.param(dict(backend="serve", serve_mode="default", workers=1, batch_size=7), id="serve-default-w1-b7"),
]


@pytest.mark.parametrize("config", CONFIGS)
def test_backend_equals_serial(config, workload, engine_kwargs, X, serial, no_leftovers):
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, progress=False, **config)
    worker_processes: list[int] = []  # as perf/test_backends.py's CPU accounting sees them, mid-call

    def count_worker_processes(k: int) -> None:
        if not worker_processes:
            worker_processes.append(sum(role == "workers" for role, _ in take_snapshot().cpu.values()))

    values = explainer.explain(X, callback=count_worker_processes)
    assert_same(values, serial)
    assert worker_processes == [explainer.last_run["workers"]]
    # the workers' models evaluated the rows the engine would here, each row once
    local = pickle.loads(cloudpickle.dumps(explainer.engine))
    local.explain(X)
    assert explainer.model_rows_ == local.model_rows_ > 0 and explainer.reuse_stats is None
    assert 1 <= len(explainer.last_run["worker_counters"]) <= explainer.last_run["workers"]
    assert np.allclose(explainer.expected_value, KernelShap(workload.predict_proba, **engine_kwargs).expected_value)


@pytest.mark.parametrize("reuse", [True, False], ids=["reuse", "default"])
def test_benchmark_rounds_with_reuse_get_new_workers_with_empty_caches(reuse, workload, engine_kwargs, X, serial,
                                                                        no_leftovers):
    """perf/'s rounds with reuse_coalitions: the workers' caches outlive a call, so every timed round
    after the first gets new workers (FreshEachRound.before_round, the benchmark's setup)."""
    from explainers.bench.factory import FreshEachRound

    def build():
        return DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="pool", workers=1,
                                     batch_size=10, reuse_coalitions=reuse, progress=False)

    explainer = FreshEachRound(build, reuse)
    try:
        explainer.start()
        first = explainer.current
        explainer.before_round()  # before the first round: nothing explained yet, nothing renewed
        assert explainer.current is first
        def pool_workers() -> set[str]:
            return {a["ActorID"] for a in alive_actors() if "KernelShap" in a["ActorClassName"]}

        workers_before = pool_workers()
        assert workers_before
        assert np.abs(explainer.explain(X[:12]) - serial[:12]).max() <= (1e-12 if reuse else 0)
        explainer.before_round()
        if reuse:
            assert explainer.current is not first
            # killed actors take a moment to be marked DEAD
            assert wait_until(lambda: not workers_before & pool_workers(), timeout=15), \
                "the first round's workers (and their caches) are still alive"
            assert pool_workers(), "the new round has no workers"
        else:
            assert explainer.current is first
        assert np.abs(explainer.explain(X[:12]) - serial[:12]).max() <= (1e-12 if reuse else 0)
    finally:
        explainer.close()


def test_serve_requests_go_over_grpc_unless_too_large():
    from explainers.kernelshap.backends.serve import GRPC_MAX_PAYLOAD_BYTES, GRPC_OPTIONS, request_options

    assert request_options(1, 49 * 8, 12 * 2 * 8) == GRPC_OPTIONS  # one Adult instance
    assert request_options(10, 49 * 8, 12 * 2 * 8) == GRPC_OPTIONS
    assert request_options(GRPC_MAX_PAYLOAD_BYTES // 8 + 1, 8, 8) == {}  # rows too large
    assert request_options(1, 8, GRPC_MAX_PAYLOAD_BYTES + 8) == {}  # values too large


@pytest.mark.parametrize("serve_mode", ["ray", "default"])
def test_serve_sends_large_requests_as_actor_tasks(serve_mode, monkeypatch, workload, engine_kwargs, X, serial,
                                                   no_leftovers):
    """Requests too large for a replica's gRPC server go by reference, with the same values."""
    from explainers.kernelshap.backends import serve as serve_backend

    chosen: list[dict] = []

    def spy(*args):
        chosen.append(request_options(*args))
        return chosen[-1]

    request_options = serve_backend.request_options
    monkeypatch.setattr(serve_backend, "GRPC_MAX_PAYLOAD_BYTES", 8)
    monkeypatch.setattr(serve_backend, "request_options", spy)
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="serve",
                                      serve_mode=serve_mode, workers=2, batch_size=5, progress=False)
    assert_same(explainer.explain(X[:23]), serial[:23])
    assert chosen == [{}]


def test_serve_replicas_start_with_their_environment(workload, engine_kwargs, no_leftovers):
    """Every replica process has ``REPLICA_ENV_VARS``: Serve runs its methods on its own event loop."""
    from explainers.kernelshap.backends.serve import REPLICA_ENV_VARS

    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="serve", workers=2,
                                      progress=False)
    with explainer:
        replicas = [a for a in alive_actors() if a["ActorClassName"].startswith("ServeReplica:kernelshap-")]
        assert len(replicas) == 2
        for replica in replicas:
            environ = psutil.Process(replica["Pid"]).environ()
            assert {k: environ.get(k) for k in REPLICA_ENV_VARS} == REPLICA_ENV_VARS


def test_pool_keeps_the_next_minibatch_queued_on_each_actor(monkeypatch, workload, slow_kwargs, X, serial,
                                                            no_leftovers):
    """Each actor gets ``TASKS_PER_ACTOR`` minibatches at once, never more unfinished."""
    from ray.util import ActorPool

    from explainers.kernelshap.backends import pool as pool_backend

    sent: dict = {}  # actor id -> its tasks' refs
    most: dict = {}  # actor id -> most unfinished tasks seen when one was sent

    class WatchedPool(ActorPool):
        def submit(self, fn, value):
            if getattr(fn, "watched", False):  # a queued submit, sent now
                return super().submit(fn, value)

            def send(actor, v):
                ref = fn(actor, v)
                refs = sent.setdefault(actor._actor_id, [])
                refs.append(ref)
                _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0)
                most[actor._actor_id] = max(most.get(actor._actor_id, 0), len(unfinished))
                return ref

            send.watched = True
            super().submit(send, value)

    monkeypatch.setattr(pool_backend, "ActorPool", WatchedPool)
    explainer = DistributedKernelShap(SlowModel(workload.model, 0.01), **slow_kwargs, backend="pool",
                                      workers=2, batch_size=5, progress=False)
    assert_same(explainer.explain(X), serial)
    assert list(most.values()) == [pool_backend.TASKS_PER_ACTOR] * 2


def test_started_workers_serve_several_calls(workload, engine_kwargs, X, serial, no_leftovers):
    """``with`` starts the workers once; both calls use them and the engine goes to the
    object store once; each call numbers its rows from 0, like the serial engine."""
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="pool",
                                      workers=2, batch_size=16, progress=False)
    with explainer:
        names = sorted(a["Name"] for a in alive_actors() if a["Name"].startswith("kernelshap-pool-"))
        assert len(names) == 2
        first = explainer.explain(X[:20])
        ref = explainer._engine_ref
        second = explainer.explain(X)
        assert explainer._engine_ref is ref
        assert sorted(a["Name"] for a in alive_actors() if a["Name"].startswith("kernelshap-pool-")) == names
    assert_same(first, serial[:20])
    assert_same(second, serial)
    assert explainer.last_run["workers"] == 2 and explainer.last_run["n_instances"] == N_ROWS


def test_single_instance_1d_input(workload, engine_kwargs, X, serial, no_leftovers):
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="pool", progress=False)
    assert_same(explainer.explain(X[0]), serial[:1])


def test_progress_bar_counts_explanations(workload, engine_kwargs, X, capsys, no_leftovers):
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="pool",
                                      batch_size=8, progress=True)
    explainer.explain(X[:24])
    err = capsys.readouterr().err
    assert "24/24" in err and "KernelSHAP pool" in err


def test_explain_in_cluster_runs_serve_from_a_ray_task(workload, engine_kwargs, X, serial, no_leftovers):
    """The driver as a Ray task (how the Kubernetes path runs Serve)."""
    kwargs = dict(predict=workload.predict_proba, **engine_kwargs, backend="serve", serve_mode="ray",
                  workers=2, batch_size=10, progress=False)
    values, seconds = ray.get(explain_in_cluster.remote(kwargs, X), timeout=180)
    assert_same(values, serial)
    assert seconds > 0


class ReplicaName:
    """A deployment that answers with the replica that served the request, after ``seconds``."""

    async def __call__(self, seconds: float = 0.0) -> str:
        import asyncio

        from ray import serve

        await asyncio.sleep(seconds)  # requests of equal cost, whatever else loads the machine
        return serve.get_replica_context().replica_id.unique_id


def test_router_splits_a_burst_evenly(no_leftovers):
    """A burst of requests is spread over the replicas (Serve's default piles them up)."""
    from ray import serve
    from ray.serve.config import RequestRouterConfig

    from explainers.kernelshap.backends.serve import ensure_serve, wait_routable
    from explainers.kernelshap.backends.serve_router import ROUTER_PATH

    ensure_serve()
    app = serve.deployment(ReplicaName).options(
        num_replicas=3, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0},
        request_router_config=RequestRouterConfig(request_router_class=ROUTER_PATH)).bind()
    handle = serve.run(app, name="kernelshap-router-test", route_prefix=None)
    try:
        wait_routable(handle, 3, method_name="__call__")
        for _ in range(2):
            # the router hears of a completion a moment after its result arrives (measured: up
            # to 13 of 60 still counted, settled 0.2 s later): start each burst from settled counts
            time.sleep(1.0)
            served = [r.result() for r in [handle.remote(0.5) for _ in range(60)]]
            counts = sorted(served.count(r) for r in set(served))
            assert len(counts) == 3 and counts[0] >= 17 and counts[-1] <= 23, counts
    finally:
        handle.shutdown()
        serve.delete("kernelshap-router-test")


# ------------------------------------------------------------------ reliability
def _run_in_thread(explainer, X, kill_after: int):
    """Run ``explain`` in a thread; ``box["started"]`` is set once ``kill_after`` rows are done."""
    box: dict = {"started": threading.Event(), "done": 0}

    def count(k: int) -> None:
        box["done"] += k
        if box["done"] >= kill_after:
            box["started"].set()

    def target():
        try:
            box["values"] = explainer.explain(X, callback=count)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            box["error"] = exc
        finally:
            box["started"].set()

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, box


def _kill_mid_run(explainer, X, find_victims, kill_after: int = 8, held=None) -> tuple[dict, dict]:
    """Start the workers, find the victims, run ``explain`` in a thread and SIGKILL one
    victim's process (as a crash) once ``kill_after`` rows are done; returns (victim, box).

    ``held(victim)``, when given, counts the requests a victim holds: then the kill comes as
    soon as one victim holds two (one in explanation, one waiting), whatever the rows done,
    and ``box["held_at_kill"]`` is its count. (Rows are counted in request order, so the count
    can lag far behind: one slow first request holds it back while the other replica works
    through its share.) Otherwise the first victim is killed.
    The victims are looked up before the run (the GCS's actor list is slow on a loaded
    machine, long enough for a run to end), and killed by signal, not ``ray.kill``, which
    takes effect whenever the GCS gets to it: the test checks that the process was gone
    while the run still had rows to do, so the kill cannot come after the run.
    """
    explainer.start()
    try:
        victims = find_victims()
        assert victims, "no worker to kill"
        if held is not None:
            for candidate in victims:
                held(candidate)  # the first call to an actor connects to it: not mid-run
        thread, box = _run_in_thread(explainer, X, kill_after=kill_after)
        victim = victims[0]
        if held is None:
            assert box["started"].wait(timeout=120), "no explanation came back"
        else:
            def busiest() -> tuple[int, int] | None:
                count, k = max((held(candidate), k) for k, candidate in enumerate(victims))
                return (count, k) if count >= 2 else None

            found = wait_until(busiest, timeout=120, every=0.01)
            assert found, "no victim held two requests"
            box["held_at_kill"], k = found
            victim = victims[k]
        assert thread.is_alive() and box["done"] < len(X), "explain finished before the kill: slow the model"
        process = psutil.Process(victim["Pid"])
        process.kill()
        assert wait_until(lambda: not _running(process), timeout=10, every=0.01), "the victim outlived SIGKILL"
        box["done_at_kill"] = box["done"]
        thread.join(timeout=180)
        assert not thread.is_alive(), "explain hung after a worker was killed"
    finally:
        explainer.stop()
    assert "error" not in box, box.get("error")
    assert box["done_at_kill"] < len(X), "the victim died after the run had every row: the kill missed it"
    return victim, box


def _running(process: psutil.Process) -> bool:
    try:
        return process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_pool_survives_a_killed_actor(workload, slow_kwargs, X, serial, no_leftovers):
    explainer = DistributedKernelShap(SlowModel(workload.model, 0.05), **slow_kwargs, backend="pool",
                                      workers=2, batch_size=4, progress=False)
    victim, box = _kill_mid_run(
        explainer, X,
        lambda: [a for a in alive_actors() if a["Name"].startswith("kernelshap-pool-") and a["Name"].endswith("-0")])
    restarts = [a["NumRestarts"] for a in ray._private.state.actors().values() if a["Name"] == victim["Name"]]
    assert restarts and max(restarts) >= 1, "the killed actor was not restarted"
    assert_same(box["values"], serial)


def test_data_survives_a_killed_actor(workload, slow_kwargs, X, serial, no_leftovers):
    """A Ray Data map actor killed mid-run (SIGKILL, as a crash): the pipeline is replaced
    and the minibatches that did not come back are sent again."""
    explainer = DistributedKernelShap(SlowModel(workload.model, 0.05), **slow_kwargs, backend="data",
                                      workers=2, batch_size=4, progress=False)
    _, box = _kill_mid_run(
        explainer, X,
        lambda: [a for a in alive_actors() if "KernelShapDataWorker" in a["ActorClassName"]])
    assert_same(box["values"], serial)
    assert explainer.last_run["pipeline_restarts"] >= 1 and explainer.last_run["resent"] >= 1, explainer.last_run


def test_data_starts_a_pipeline_when_a_failed_restart_left_none(workload, engine_kwargs, X, serial,
                                                               no_leftovers):
    """A replacement pipeline that failed to start leaves none: the next call starts one."""
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, backend="data",
                                      workers=2, batch_size=10, progress=False)
    with explainer:
        assert_same(explainer.explain(X[:20]), serial[:20])
        workers = explainer._workers
        workers._pipeline.close()
        workers._pipeline = None  # what a replacement that raised while starting leaves
        assert_same(explainer.explain(X), serial)
        assert workers._pipeline is not None


def test_serve_survives_a_killed_replica(workload, slow_kwargs, X, serial, no_leftovers):
    """17 requests of 4 rows over 2 replicas; a replica dies holding at least two of them.

    Serve's router routes a request again itself when the replica died before replying that
    it took it; the backend re-sends the ones the replica had taken. Which of the two
    recovers a request depends on Serve's timing, so only the outcome is checked: every row,
    identical to serial.
    """
    explainer = DistributedKernelShap(SlowModel(workload.model, 0.05), **slow_kwargs, backend="serve",
                                      serve_mode="default", workers=2, batch_size=4, progress=False)
    _, box = _kill_mid_run(
        explainer, X,
        lambda: [dict(a, handle=ray.get_actor(a["Name"], namespace="serve")) for a in alive_actors()
                 if a["ActorClassName"] == f"ServeReplica:{explainer._workers.name}:{DEPLOYMENT_NAME}"],
        held=lambda victim: ray.get(victim["handle"].get_num_ongoing_requests.remote(), timeout=30))
    assert_same(box["values"], serial)


class _Response:
    """A Serve response that answers ``value`` or raises ``error``."""

    def __init__(self, value=None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self):
        if self.error is not None:
            raise self.error
        return self.value


def test_serve_resends_the_requests_a_dead_replica_took():
    """The requests that fail because their replica died are sent again, once per death, and
    every answer is placed once."""
    from explainers.kernelshap.backends.serve import _collect

    deaths = {1: 1, 3: 2}  # item -> how many sends die before one answers
    sent: list[int] = []

    def send(item: int) -> _Response:
        sent.append(item)
        if deaths.get(item, 0) > 0:
            deaths[item] -= 1
            return _Response(error=ray.exceptions.ActorDiedError())
        return _Response(np.full(2, float(item)))

    placed: list[int] = []
    resent = _collect(list(range(5)), send, lambda item, value: placed.append(item), max_retries=2)
    assert resent == 3 and sorted(placed) == [0, 1, 2, 3, 4]
    assert sent == [0, 1, 2, 3, 4, 1, 3, 3]


def test_serve_gives_up_on_requests_that_keep_dying():
    """A request lost on every one of its ``max_retries`` re-sends raises ``WorkerLostError``."""
    from explainers.kernelshap.backends.common import WorkerLostError
    from explainers.kernelshap.backends.serve import _collect

    def send(item: int) -> _Response:
        return _Response(error=ray.exceptions.ActorDiedError()) if item == 2 else _Response(np.zeros(2))

    with pytest.raises(WorkerLostError, match="1 requests still lost after 2 re-sends"):
        _collect(list(range(4)), send, lambda item, value: None, max_retries=2)


@pytest.mark.parametrize(
    "config",
    [
        pytest.param(dict(backend="pool"), id="pool"),
        pytest.param(dict(backend="data"), id="data"),
        pytest.param(dict(backend="serve", serve_mode="ray"), id="serve-ray"),
        pytest.param(dict(backend="serve", serve_mode="default"), id="serve-default"),
    ],
)
def test_raising_model_names_the_failed_rows(config, workload, engine_kwargs, X, no_leftovers):
    bad = X.copy()
    bad[23, 0] = POISON
    explainer = DistributedKernelShap(RaisingModel(workload.model), **engine_kwargs, workers=2,
                                      batch_size=10, progress=False, **config)
    t0 = time.monotonic()
    with pytest.raises(ExplanationError) as info:
        explainer.explain(bad)
    assert time.monotonic() - t0 < 120
    err = info.value
    assert 23 in err.rows
    assert "FloatingPointError" in str(err) and "model exploded" in str(err)
    if config["backend"] != "serve" or config["serve_mode"] == "default":
        assert err.rows == list(range(20, 30))
        assert "rows 20-29" in str(err)


# ------------------------------------------------------------------ bad input
def test_unserialisable_model_fails_before_any_work(workload, engine_kwargs):
    lock = threading.Lock()

    def predict(X):
        with lock:
            return workload.model.predict_proba(X)

    with pytest.raises(TypeError, match="cannot be sent to Ray workers"):
        DistributedKernelShap(predict, **engine_kwargs)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(backend="spark"), "backend must be one of 'pool', 'serve', 'data'"),
        (dict(serve_mode="fast"), "serve_mode must be one of 'ray', 'default'"),
        (dict(workers=0), "workers must be an integer >= 1"),
        (dict(workers=1.5), "workers must be an integer >= 1"),
        (dict(workers=True), "workers must be an integer >= 1"),
        (dict(batch_size=0), "batch_size must be an integer >= 1"),
        (dict(batch_size="10"), "batch_size must be an integer >= 1"),
        (dict(num_cpus_per_worker=0), "num_cpus_per_worker must be a number > 0"),
        (dict(progress="yes"), "progress must be True, False or None"),
    ],
)
def test_bad_arguments_are_value_errors(kwargs, message, workload, engine_kwargs):
    with pytest.raises(ValueError, match=message):
        DistributedKernelShap(workload.predict_proba, **engine_kwargs, **kwargs)


def test_bad_X_is_rejected_on_the_driver(workload, engine_kwargs, X, no_leftovers):
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, progress=False)
    with pytest.raises(ValueError):
        explainer.explain(X[:, :10])
    assert explainer._engine_ref is None, "nothing may be sent for an invalid X"


def test_more_cpus_than_the_cluster_has_is_refused(workload, engine_kwargs, X):
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, workers=3,
                                      num_cpus_per_worker=2, progress=False)
    with pytest.raises(ValueError, match="CPUs"):
        explainer.explain(X)


def test_uses_the_running_ray_and_leaves_it_running(workload, engine_kwargs, X, no_leftovers):
    explainer = DistributedKernelShap(workload.predict_proba, **engine_kwargs, progress=False)
    explainer.explain(X[:4])
    explainer.close()
    assert not explainer._started_ray
    assert ray.is_initialized()
