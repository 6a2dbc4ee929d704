"""Ray Data backend: one streaming pipeline per set of workers, fed minibatches through a queue.

The pipeline is ``read_datasource(MinibatchSource) -> map_batches(KernelShapDataWorker,
compute=ActorPoolStrategy(size=workers))``. Ray Data fuses the read into the map actors
(both ask for the same resources), so each of the ``workers`` actors runs one reader that
takes the next minibatch from a :class:`MinibatchQueue` actor whenever it is free (or
ahead, while the last is explained, as long as enough wait for every other reader): the
work balances itself, as in an actor pool. A row of the dataset is one minibatch,
``{"call", "start", "x": (b, D)}``, and the map turns it into
``{"call", "start", "values": (b, M) or (b, M, K), "error"}``; the driver places values by
``start``, so the order Ray Data yields them in does not matter.

Why a queue: Ray Data keeps no actors between executions (ray-project/ray#46479), and a
fresh actor pool (new processes importing Ray Data and the model's library) costs
seconds. This way the pipeline, and its actors, start with the workers
(``DistributedKernelShap.start``) like the pool's actors and Serve's replicas, and end
with :meth:`Workers.close`.

While a call has no minibatch left to hand out, idle readers yield heartbeat rows (see
:meth:`MinibatchQueue.take`), so Ray Data's executor passes the last values on at once.

A map actor that dies takes its minibatch with it. When Ray Data restarts it, its
reader registers again and the queue stops the pipeline; ``explain`` then starts a new
one and sends the minibatches still missing (values are deterministic and placed by
index, so nothing is lost or counted twice). A pipeline that fails is replaced the same
way, at most ``max_retries`` times per call.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import time
import uuid
from collections import deque
from typing import Any, Iterator

import numpy as np
import ray

from explainers.kernelshap.backends import common
from explainers.kernelshap.backends.common import (
    WORKER_COUNTERS,
    Assembler,
    BackendConfig,
    ExplanationError,
    actor_error_text,
    could_place,
    engine_counters,
    explain_range,
    limit_blas_threads,
    minibatches,
    placement_error,
    start_error,
    worker_id,
)

#: once placed, how long the map actors may take to start (see ``placement_timeout_s``)
READY_TIMEOUT_S = common.READY_TIMEOUT_S
CLOSE_TIMEOUT_S = 60.0
#: how often a reader with nothing to do says so while a call is in progress (see
#: :meth:`MinibatchQueue.take`)
IDLE_HEARTBEAT_S = 0.02
#: ``call`` of an idle heartbeat row
IDLE = -1
#: :meth:`MinibatchQueue.take_ahead`'s answer when the reader should ask again once it is free
LATER = -2


class MinibatchQueue:
    """Async actor: the minibatches waiting for a reader, FIFO; items are ``(call, start, stop, X_ref)``.

    Readers (the map actors' read tasks) register when they start. One more reader than
    the pipeline has means a map actor was restarted or replaced, so the minibatches
    some reader held are lost: the queue then stops every reader and the pipeline ends,
    and the driver starts a new one. (Letting Ray retry a reader is no use: a retried
    streaming task's first outputs are dropped as already seen, and these differ.)
    """

    def __init__(self, readers: int) -> None:
        self._expected = readers
        self._items: deque = deque()
        self._changed = asyncio.Condition()
        self._registered = 0
        self._stopping = False
        self._calls: set[int] = set()  # calls in progress: put, not yet finished or dropped

    async def register(self) -> None:
        async with self._changed:
            self._registered += 1
            if self._registered > self._expected:
                self._stopping = True
            self._changed.notify_all()

    async def wait_readers(self, timeout: float) -> int:
        """How many readers have registered, once all have (or after ``timeout`` s)."""
        async with self._changed:
            try:
                await asyncio.wait_for(self._changed.wait_for(lambda: self._registered >= self._expected),
                                       timeout)
            except asyncio.TimeoutError:
                pass
            return self._registered

    async def put(self, items: list) -> None:
        async with self._changed:
            self._calls.update(item[0] for item in items)
            self._items.extend(items)
            self._changed.notify_all()

    async def take(self) -> tuple | int | None:
        """The next item; ``None`` once stopping.

        While a call is in progress but has no minibatch left to hand out, returns
        :data:`IDLE` after :data:`IDLE_HEARTBEAT_S`, and the reader yields a heartbeat
        row. Ray Data's executor waits until every running read task has output, or
        0.1 s, once to collect a block and once more to pass it on: without heartbeats
        from the readers that are done, a call's last minibatches would wait for both
        timeouts.
        """
        async with self._changed:
            ready = lambda: self._items or self._stopping  # noqa: E731
            if self._calls:
                try:
                    await asyncio.wait_for(self._changed.wait_for(ready), IDLE_HEARTBEAT_S)
                except asyncio.TimeoutError:
                    return IDLE
            else:
                await self._changed.wait_for(ready)
            return None if self._stopping else self._items.popleft()

    async def take_ahead(self) -> tuple | int | None:
        """The next item for a reader still busy with one, or :data:`LATER`; ``None`` once stopping.

        A reader asks while its current minibatch is explained, so the next one is there when
        it is done, not a round trip later. It gets one only while at least as many wait as
        there are readers: every other reader still finds one when it asks, so no reader holds
        a minibatch that an idle reader could have run.
        """
        async with self._changed:
            if self._stopping:
                return None
            return self._items.popleft() if len(self._items) >= self._expected else LATER

    async def finish(self, call: int) -> None:
        """``call`` has all its values: no more heartbeats for it."""
        async with self._changed:
            self._calls.discard(call)

    async def drop(self, call: int) -> None:
        """Forget the waiting minibatches of ``call`` (it failed)."""
        async with self._changed:
            self._calls.discard(call)
            self._items = deque(item for item in self._items if item[0] != call)

    async def stop(self) -> None:
        async with self._changed:
            self._stopping = True
            self._changed.notify_all()


def read_minibatches(minibatch_queue: Any) -> Iterator[Any]:
    """A reader: one-row blocks ``{"call", "start", "x": (1, b, D)}`` taken from the queue
    (``call`` is :data:`IDLE` in a heartbeat row); asks for the next while the map explains
    the last (:meth:`MinibatchQueue.take_ahead`)."""
    from ray.data.block import BlockAccessor

    ray.get(minibatch_queue.register.remote())
    call, X = None, None
    ahead = None
    while True:
        item = LATER if ahead is None else ray.get(ahead)
        ahead = None
        if item == LATER:
            item = ray.get(minibatch_queue.take.remote())
        if item is None:
            return
        if item == IDLE:
            yield BlockAccessor.batch_to_block(
                {"call": np.array([IDLE]), "start": np.array([IDLE]), "x": np.zeros((1, 1, 1))})
            continue
        if item[0] != call:
            call, X = item[0], ray.get(item[3])
        start, stop = item[1], item[2]
        ahead = minibatch_queue.take_ahead.remote()  # answered while this minibatch is explained
        yield BlockAccessor.batch_to_block(
            {"call": np.array([call]), "start": np.array([start]), "x": X[start:stop][None]})


def _source_class() -> type:
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class MinibatchSource(Datasource):
        """``readers`` read tasks, each running :func:`read_minibatches` until the queue stops."""

        def __init__(self, minibatch_queue: Any, readers: int) -> None:
            self.minibatch_queue, self.readers = minibatch_queue, readers

        def estimate_inmemory_data_size(self) -> None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list:
            q = self.minibatch_queue
            meta = BlockMetadata(num_rows=None, size_bytes=None, input_files=None, exec_stats=None)
            return [ReadTask(lambda: read_minibatches(q), meta) for _ in range(self.readers)]

    return MinibatchSource


class KernelShapDataWorker:
    """Callable class for ``map_batches``: minibatch rows -> their values (or the error)."""

    def __init__(self, engine_box: list, num_cpus: float) -> None:
        self._limits = limit_blas_threads(num_cpus)
        self.engine = ray.get(engine_box[0])
        self.worker = worker_id()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """``{"call": (k,), "start": (k,), "x": (k, b, D)}`` -> ``values`` (k, b, M[, K]),
        ``error`` (k,) str, empty where it worked (not an object array: Ray Data pickles those
        element by element, about 1 ms per block each way), ``worker`` (k,) str, this actor's
        id, and ``counters`` (k, len(WORKER_COUNTERS)), its engine's counters after each."""
        if batch["call"].tolist() == [IDLE]:  # a heartbeat: passed on as it is
            return {"call": batch["call"], "start": batch["start"], "values": np.zeros((1, 1, 1)),
                    "error": np.array([""]), "worker": np.array([""]),
                    "counters": np.zeros((1, len(WORKER_COUNTERS)))}
        values, errors, counters = [], [], []
        for start, x in zip(batch["start"].tolist(), batch["x"]):
            x = np.asarray(x)
            try:
                values.append(explain_range(self.engine, x, start))
                errors.append("")
            except ExplanationError as exc:
                # Returned as data: Ray Data re-raises UDF errors without their cause, and
                # the pipeline outlives this call.
                shape = (len(x), self.engine.n_groups) + np.shape(self.engine.expected_value)
                values.append(np.zeros(shape))
                errors.append(exc.cause_text)
            counters.append(engine_counters(self.engine))
        return {"call": batch["call"], "start": batch["start"], "values": np.stack(values),
                "error": np.array(errors), "worker": np.array([self.worker] * len(values)),
                "counters": np.stack(counters)}


class Workers:
    """A running Ray Data pipeline of ``config.workers`` map actors, until :meth:`close`."""

    def __init__(self, engine_ref: Any, config: BackendConfig) -> None:
        self.config = config
        self._engine_ref = engine_ref
        self._calls = itertools.count()
        self._lock = threading.Lock()
        self._pipeline: _Pipeline | None = _Pipeline(engine_ref, config)

    def wait_ready(self) -> None:
        """Block until every map actor has started and its reader waits for work."""
        self._running_pipeline()

    def _running_pipeline(self) -> _Pipeline:
        """The pipeline, ready; started again if a failed restart left none."""
        if self._pipeline is None:
            self._pipeline = _Pipeline(self._engine_ref, self.config)
        self._pipeline.wait_ready()
        return self._pipeline

    def explain(self, X: np.ndarray, assembler: Assembler) -> dict:
        """Explain ``X`` (n, D); returns ``{"resent": minibatches sent again, "pipeline_restarts": n}``."""
        with self._lock:
            call = next(self._calls)
            X_ref = ray.put(X)
            todo = dict(minibatches(len(X), self.config.batch_size))  # start -> stop, until placed
            self._running_pipeline().send(call, X_ref, todo)
            try:
                result = self._collect(call, X_ref, todo, assembler)
            except BaseException:
                if self._pipeline is not None and self._pipeline.thread.is_alive():
                    self._pipeline.drop(call)  # its minibatches still waiting are of no use now
                raise
            self._pipeline.finish(call)
            return result

    def _collect(self, call: int, X_ref: Any, todo: dict[int, int], assembler: Assembler) -> dict:
        config, pipeline = self.config, self._pipeline
        resent = restarts = 0
        while todo:
            kind, payload = pipeline.outputs.get()  # the iterating thread always ends with "stopped"
            if kind == "batch":
                for c, start, values, error, worker, counters in zip(
                        payload["call"].tolist(), payload["start"].tolist(), payload["values"], payload["error"],
                        payload["worker"].tolist(), payload["counters"]):
                    if c != call or start not in todo:
                        continue  # a heartbeat, an earlier failed call's, or a minibatch sent twice
                    if error:
                        raise ExplanationError(range(start, todo[start]), str(error))
                    assembler.put(slice(start, todo.pop(start)), values)
                    assembler.count(worker, counters)
                continue
            # the pipeline stopped (payload: its exception, or None if it ended)
            if restarts >= config.max_retries:
                raise RuntimeError(f"the Ray Data pipeline stopped {restarts + 1} times; giving up "
                                   f"({actor_error_text(payload) if payload is not None else 'it ended'})"
                                   ) from payload
            restarts += 1
            self._pipeline = None
            pipeline.close()
            pipeline = self._running_pipeline()
            pipeline.send(call, X_ref, todo)
            resent += len(todo)
        return {"resent": resent, "pipeline_restarts": restarts}

    def close(self) -> None:
        pipeline, self._pipeline = self._pipeline, None
        if pipeline is not None:
            pipeline.close()


def _check_fused(dataset: Any) -> None:
    """Refuse a plan whose reads would run as tasks: they would hold CPUs forever, waiting."""
    import contextlib
    import io

    plan = io.StringIO()
    with contextlib.redirect_stdout(plan):
        dataset.explain()
    optimized = plan.getvalue().rpartition("Physical Plan (Optimized)")[2]
    if "ReadMinibatchSource->MapBatches(KernelShapDataWorker)" not in optimized:
        raise RuntimeError(f"Ray Data did not fuse the minibatch reads into the map actors:{optimized}")


class _Pipeline:
    """The queue actor, the dataset and the driver thread that iterates it."""

    def __init__(self, engine_ref: Any, config: BackendConfig) -> None:
        self.config = config
        self.ready = False  # every reader has registered (see wait_ready)
        self.outputs: queue.Queue = queue.Queue()
        self._executor: Any = None  # Ray Data's streaming executor, once the thread started it
        self.queue = ray.remote(MinibatchQueue).options(
            name=f"kernelshap-data-queue-{config.tag}-{uuid.uuid4().hex[:6]}", num_cpus=0, max_restarts=0).remote(config.workers)
        try:
            self.dataset = self._build(engine_ref, config)
        except BaseException:
            ray.kill(self.queue)
            raise
        self.thread = threading.Thread(target=self._iterate, name=f"kernelshap-data-{config.tag}", daemon=True)
        self.thread.start()

    def _build(self, engine_ref: Any, config: BackendConfig) -> Any:
        from ray.data import ActorPoolStrategy, DataContext

        ctx = DataContext.get_current()
        saved = (ctx.target_max_block_size, ctx.enable_progress_bars, ctx.execution_no_progress_timeout_s)
        try:
            # Datasets copy the current context when created: set, build, restore.
            # Blocks of one row flush at once (the default buffers 128 MiB), and the
            # pipeline may sit idle between calls.
            ctx.target_max_block_size = 1
            ctx.enable_progress_bars = False
            ctx.execution_no_progress_timeout_s = -1
            ds = ray.data.read_datasource(_source_class()(self.queue, config.workers),
                                          override_num_blocks=config.workers, num_cpus=config.num_cpus)
            ds = ds.map_batches(
                KernelShapDataWorker,
                batch_size=None,  # a block, one minibatch: Ray Data fuses no read into a batching map
                batch_format="numpy",
                compute=ActorPoolStrategy(size=config.workers, max_tasks_in_flight_per_actor=1),
                num_cpus=config.num_cpus,
                fn_constructor_args=([engine_ref], config.num_cpus),
            )
        finally:
            ctx.target_max_block_size, ctx.enable_progress_bars, ctx.execution_no_progress_timeout_s = saved
        _check_fused(ds)
        self._capture_executor(ds)
        return ds

    def _capture_executor(self, ds: Any) -> None:
        """Keep the executor the dataset creates, to shut it down in :meth:`close` if the
        pipeline never started (Ray Data only records it once the first output arrives)."""
        create = getattr(ds, "_create_executor", None)
        if create is None:
            return

        def create_and_keep() -> Any:
            self._executor = create()
            return self._executor

        try:
            ds._create_executor = create_and_keep
        except Exception:  # noqa: BLE001 - best effort: close then only waits, bounded
            pass

    def _iterate(self) -> None:
        try:
            for batch in self.dataset.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=0):
                self.outputs.put(("batch", batch))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller of explain
            self.outputs.put(("stopped", exc))
        else:
            self.outputs.put(("stopped", None))

    def wait_ready(self) -> None:
        """Block until every reader has registered (once: later calls return at once)."""
        config = self.config
        place_by = time.monotonic() + config.placement_timeout_s
        ready_by = place_by + READY_TIMEOUT_S
        while not self.ready:
            readers = ray.get(self.queue.wait_readers.remote(0.2), timeout=60)
            if readers >= config.workers:
                self.ready = True
                return
            if not self.thread.is_alive():
                kind, payload = self.outputs.get(timeout=10)
                if payload is None:
                    raise RuntimeError("the Ray Data pipeline ended while starting")
                raise start_error("the Ray Data map actors", payload) from None
            now = time.monotonic()
            if now > place_by and not could_place(config.workers - readers, config.num_cpus):
                raise placement_error(config, readers, "Ray Data map actors")
            if now > ready_by:
                raise TimeoutError(f"{readers} of {config.workers} Ray Data actors started "
                                   f"in {config.placement_timeout_s + READY_TIMEOUT_S:g} s")

    def send(self, call: int, X_ref: Any, todo: dict[int, int]) -> None:
        """Queue the minibatches ``todo`` (start -> stop) of ``call``, whose rows are ``X_ref``."""
        ray.get(self.queue.put.remote([(call, start, stop, X_ref) for start, stop in todo.items()]))

    def drop(self, call: int) -> None:
        ray.get(self.queue.drop.remote(call))

    def finish(self, call: int) -> None:
        self.queue.finish.remote(call)  # not awaited: the caller has its values

    def close(self) -> None:
        """Stop the readers (the pipeline then ends, and Ray Data removes its actors)."""
        try:
            ray.get(self.queue.stop.remote(), timeout=10)
        except Exception:  # noqa: BLE001 - the queue is gone: the readers fail and stop
            pass
        # readers that run end at once; a pipeline whose actors never started (not placed,
        # or failed) has no reader to stop: its executor is shut down, which removes them
        self.thread.join(timeout=CLOSE_TIMEOUT_S if self.ready else 2.0)
        if self.thread.is_alive() and self._executor is not None:
            try:
                self._executor.shutdown(force=True)
            except Exception:  # noqa: BLE001 - never mask the real error
                pass
        ray.kill(self.queue)
        self.thread.join(timeout=CLOSE_TIMEOUT_S)
