"""Shared fixtures of the test suite (fixtures only; helpers live in the test modules), and the
gRPC setting of every process the suite starts (:data:`GRPC_FORK_SUPPORT`)."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_ADULT_DIR = REPO_ROOT.parent / "shared" / "data" / "adult"

#: gRPC's fork handlers off in this process and every process it starts (Ray heads, Ray Client
#: servers, inner pytest sessions): in a process whose gRPC threads are busy they crash the
#: forked child ("Check failed: next_worker->state == KICKED") about once in ten forks. The Ray
#: Client server forks one server per connection, so ``ray.init("ray://...")`` failed after
#: ~40 s about once in ten (then was retried: a test took 40 s more). Ray's processes fork only
#: to exec, which needs no fork handlers. Set before anything imports gRPC.
GRPC_FORK_SUPPORT = ("GRPC_ENABLE_FORK_SUPPORT", "false")
os.environ.setdefault(*GRPC_FORK_SUPPORT)


@pytest.fixture(scope="session")
def adult_data_dir() -> Path | None:
    """The UCI Adult directory the tests use: ``$ADULT_DATA_DIR``, else ``../shared/data/adult``
    when it exists, else None (``load_workload`` then downloads into the user cache)."""
    if os.environ.get("ADULT_DATA_DIR", "").strip():
        return Path(os.environ["ADULT_DATA_DIR"]).expanduser()
    return SHARED_ADULT_DIR if SHARED_ADULT_DIR.is_dir() else None


@pytest.fixture(scope="session")
def adult_workload(request: pytest.FixtureRequest, adult_data_dir, tmp_path_factory):
    """The reference Adult workload, loaded once per session.

    The fitted model is cached in ``$EXPLAINERS_CACHE_DIR`` when set, else in pytest's
    cache directory (``.pytest_cache``), never in the user's cache.
    """
    from explainers.workloads.adult import CACHE_DIR_ENV, load_workload

    cache_dir = os.environ.get(CACHE_DIR_ENV, "").strip() or None
    if cache_dir is None:
        cache = getattr(request.config, "cache", None)
        cache_dir = cache.mkdir("explainers-models") if cache is not None else tmp_path_factory.mktemp("models")
    return load_workload(adult_data_dir, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray per test module (4 logical CPUs, small object store, no dashboard); per module,
    not per session, because other modules (the k8s attach tests) need Ray disconnected.

    Reuses a Ray that is already initialised (and then leaves it running); otherwise
    starts one and shuts it (and Serve, if a test started it) down at the end.
    """
    import ray

    from explainers.cluster.ray_client import RayAuthEnv

    if ray.is_initialized():
        yield ray
        return
    # without token auth, whatever an earlier module's token connection left in Ray's memory
    with RayAuthEnv(None).connecting():
        ray.init(
            address="local",  # never attach to another cluster on this machine (`ray start`)
            num_cpus=4,
            object_store_memory=400 * 1024**2,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    try:
        yield ray
    finally:
        from explainers.cluster.leftovers import end_leftovers, ray_processes

        processes = ray_processes()
        try:
            from ray import serve

            serve.shutdown()
        finally:
            ray.shutdown()
            end_leftovers(processes)


@pytest.fixture(autouse=True)
def _no_ray_auth_environment(monkeypatch):
    """Each test starts without Ray token-auth variables and leaves none behind.

    A local Ray started with ``RAY_AUTH_MODE=token`` and no token dies at start; the k8s
    attach tests set these variables, and nothing they set may reach later tests.
    """
    for var in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.setenv(var, "")  # records the variable, so teardown removes it again
        monkeypatch.delenv(var)
