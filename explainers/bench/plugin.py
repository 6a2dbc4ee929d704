"""pytest plugin of distributed-kernelshap (registered through the ``pytest11`` entry point).

Hooks and fixtures only. The options are in :mod:`explainers.bench.options` (``pytest --help``,
group "kernelshap-ray"; each has an ini twin ``kernelshap_<option>``), the state of a run in one
:class:`explainers.bench.session.KernelShapRaySession` per config (``get_session(config)``), the
configurations in :mod:`explainers.bench.grid`, the records in :mod:`explainers.bench.records`.

Parametrisation: a test that takes ``scaling_config``, ``backend_config`` or ``mission_config``
gets one item per configuration the options select (see :mod:`explainers.bench.grid`).

Fixtures (session scope unless noted): ``kernelshap_ray`` (the session object), ``ray_cluster``
(connects on first use; closed at the end), ``workload`` (the ``--workload``, an
:class:`explainers.workloads.workload.Workload`), ``adult_workload`` (the reference Adult
workload object), ``explain_instances`` (the first ``--n-instances`` rows of ``workload.X``,
``(n, D)``), ``serial_reference`` (their serial KernelSHAP values, ``(n, M)`` or ``(n, M, K)``,
computed once), ``explainer_factory`` (``factory(config)`` -> an object with ``explain(X)``) and
``serial_rounds`` (function scope: serial rounds to pair a benchmark's rounds with).

Nothing here imports Ray or starts a cluster unless a test asks for the cluster: plain
``pytest tests/`` runs, and other projects that have this package installed, only pay for
option parsing.
"""
from __future__ import annotations

import os
import shlex
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pytest

from explainers.bench.factory import ExplainerFactory
from explainers.bench.grid import SERIAL, ScalingConfig
from explainers.bench.options import PluginOptions, add_options
from explainers.bench.pairing import SerialRounds
from explainers.bench.records import fill_speedups
from explainers.bench.session import KernelShapRaySession
from explainers.cluster.session import ClusterSession
from explainers.kernelshap.backends import PlacementError
from explainers.workloads.workload import Workload

#: the benchmark table defaults set for grid runs (unless given on the command line)
DEFAULT_GROUP_BY = "group"
DEFAULT_SORT = "name"
#: fixtures the plugin parametrises, and the session method that lists their configurations
CONFIG_FIXTURES = {
    "scaling_config": KernelShapRaySession.scaling_configs,
    "backend_config": KernelShapRaySession.backend_configs,
    "mission_config": KernelShapRaySession.mission_configs,
}

_SESSION_KEY = pytest.StashKey[KernelShapRaySession]()


def get_session(config: pytest.Config) -> KernelShapRaySession:
    """The plugin's session object of this pytest run."""
    return config.stash[_SESSION_KEY]


# --------------------------------------------------------------------------- hooks
def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    """The session object; saved runs keep their raw rounds (before pytest-benchmark reads the option)."""
    if getattr(config.option, "benchmark_save_data", None) is False:
        config.option.benchmark_save_data = True
    session = KernelShapRaySession(config, PluginOptions.from_config(config))
    config.stash[_SESSION_KEY] = session
    if not session.options.runs_as_job:  # the workload is loaded in the cluster
        session.load_workload_early()


@pytest.hookimpl(tryfirst=True)
def pytest_collection(session: pytest.Session) -> bool | None:
    """``--ray-address k8s`` through Ray Jobs: nothing is collected here; the job collects."""
    if not get_session(session.config).options.runs_as_job:
        return None
    session.items = []
    return True


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> bool | None:
    """``--ray-address k8s`` through Ray Jobs: run the selection as a Ray Job in the cluster."""
    ks = get_session(session.config)
    if not ks.options.runs_as_job:
        return None
    from explainers.bench.remote_run import run_as_job

    run_as_job(session, ks.remote_run())
    return True


def pytest_unconfigure(config: pytest.Config) -> None:
    session = config.stash.get(_SESSION_KEY, None)
    if session is not None:
        session.close()


def pytest_sessionstart(session: pytest.Session) -> None:
    """Find the saved run of ``--compare-gate`` now, so a wrong one is an error before anything runs."""
    ks = get_session(session.config)
    bs = getattr(session.config, "_benchmarksession", None)
    if ks.compare_gate is not None and bs is not None:
        ks.compare_gate.resolve(Path(bs.storage.path))


def pytest_report_header(config: pytest.Config) -> list[str]:
    return get_session(config).header_lines()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One item per configuration the options select, for each config fixture the test takes
    (a test that parametrises the fixture itself keeps its own configurations)."""
    own = {arg for mark in metafunc.definition.iter_markers("parametrize")
           for arg in (mark.args[0].split(",") if isinstance(mark.args[0], str) else mark.args[0])}
    for name, configs_of in CONFIG_FIXTURES.items():
        if name in metafunc.fixturenames and name not in {a.strip() for a in own}:
            configs = configs_of(get_session(metafunc.config))
            metafunc.parametrize(name, configs, ids=[c.id for c in configs])


def _config_of(item: pytest.Item) -> ScalingConfig | None:
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in CONFIG_FIXTURES:
        if isinstance(params.get(name), ScalingConfig):
            return params[name]
    return None


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Run the serial baselines first (speedups need them); set the table defaults for grid runs."""
    configs = [_config_of(i) for i in items]
    if not any(c is not None for c in configs):
        return
    serial = [i for i, c in zip(items, configs) if c is not None and c.backend == SERIAL]
    items[:] = serial + [i for i in items if i not in serial]
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None:
        if not _given(config, "--benchmark-group-by"):
            bs.group_by = DEFAULT_GROUP_BY
        if not _given(config, "--benchmark-sort"):
            bs.sort = DEFAULT_SORT


def placement_failure(exc: BaseException) -> PlacementError | None:
    """The :class:`PlacementError` behind ``exc``: itself, or the cause a Ray task error carries."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, PlacementError):
            return exc
        cause = getattr(exc, "cause", None)
        exc = cause if isinstance(cause, BaseException) else exc.__cause__
    return None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A configuration the cluster cannot place in time is skipped with the reason, not failed."""
    report = yield
    if call.excinfo is not None and report.failed:
        placement = placement_failure(call.excinfo.value)
        if placement is not None:
            path, line, _ = item.location
            report.outcome = "skipped"
            report.longrepr = (str(item.path), (line or 0) + 1, f"Skipped: cannot be placed: {placement}")
    return report


def _given(config: pytest.Config, flag: str) -> bool:
    """Whether ``flag`` was given on the command line, in ``PYTEST_ADDOPTS`` or in ini ``addopts``."""
    args = list(config.invocation_params.args)
    args += shlex.split(os.environ.get("PYTEST_ADDOPTS", ""))
    try:
        args += list(config.getini("addopts"))
    except (ValueError, KeyError):  # pragma: no cover
        pass
    return any(str(a) == flag or str(a).startswith(flag + "=") for a in args)


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict[str, Any]) -> None:
    """The Ray fields, or for a Ray Job the machine info of the cluster node it ran on."""
    machine_info.update(get_session(config).machine_info())


@pytest.hookimpl(optionalhook=True)
def pytest_benchmark_update_json(config: pytest.Config, benchmarks: Any, output_json: dict[str, Any]) -> None:
    """Fill speedups the tests could not (no serial baseline before them) from this run's serial one."""
    fill_speedups(output_json)


def pytest_terminal_summary(terminalreporter: Any, exitstatus: int, config: pytest.Config) -> None:
    outcome = get_session(config).remote_outcome()
    if outcome is not None:
        counts = ", ".join(f"{n} {k}" for k, n in outcome.counts.items() if n and k != "collected")
        terminalreporter.write_line(
            f"kernelshap-ray: Ray Job {outcome.job_id} {outcome.status}: {counts or 'nothing ran'} "
            f"(pytest exit status {outcome.exit_status} in the cluster)")
    info = get_session(config).cluster_info()
    if info is not None:
        terminalreporter.write_line(
            f"kernelshap-ray: ran on {info['address_mode']} cluster {info['address']}: {info['nodes']} node(s), "
            f"CPUs per node {info['cpus_per_node']}, ray {info['ray_version']}"
        )


def _session_output(config: pytest.Config, bs: Any, benchmarks: list[Any]) -> dict[str, Any]:
    """pytest-benchmark's JSON of ``benchmarks`` (with their rounds), speedups filled."""
    output = config.hook.pytest_benchmark_generate_json(
        config=config, benchmarks=benchmarks, include_data=True,
        machine_info=bs.get_machine_info(),
        commit_info=config.hook.pytest_benchmark_generate_commit_info(config=config),
    )
    fill_speedups(output)
    return output


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """The exit status of a Ray Job run; the ``--compare-gate``; the report (``--report-dir``)."""
    config = session.config
    ks = get_session(config)
    outcome = ks.remote_outcome()
    if outcome is not None and session.exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = outcome.exit_status
    bs = getattr(config, "_benchmarksession", None)
    if bs is None:
        return
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    measured = [b for b in bs.benchmarks if b and not b.has_error]
    if ks.compare_gate is not None and ks.compare_gate.path is not None and measured:
        failures = ks.compare_gate.failures(_session_output(config, bs, measured))
        if reporter is not None:
            reporter.write_line(f"kernelshap-ray: --compare-gate against {ks.compare_gate.path}: "
                                f"{len(failures) or 'no'} regression(s) beyond the noise",
                                red=bool(failures), green=not failures)
            for line in failures:
                reporter.write_line(f"  {line}", red=True)
        if failures:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    if ks.options.report_dir is None:
        return
    # the report charts the explainers' records; other benchmarks of the session (the engine
    # against shap, the model alone) are in the saved run but not in its figures
    benchmarks = [b for b in measured if "backend" in (b.extra_info or {})]
    if not benchmarks:
        return
    output = _session_output(config, bs, benchmarks)
    from explainers.bench.report import ReportError, write_report

    try:
        result = write_report(output, ks.options.report_dir)
    except ReportError as exc:  # the benchmarks are saved; only the pictures are missing
        if reporter is not None:
            reporter.write_line(f"kernelshap-ray: no report written: {exc}", red=True)
        return
    if reporter is not None:
        files = getattr(result, "files", None) or {}
        listed = ", ".join(str(p) for p in files.values()) or str(ks.options.report_dir)
        reporter.write_line(f"kernelshap-ray: report written: {listed}")


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def kernelshap_ray(pytestconfig: pytest.Config) -> KernelShapRaySession:
    """The plugin's session object (options, workload, cluster, serial baseline); does not start Ray."""
    return get_session(pytestconfig)


@pytest.fixture(scope="session")
def ray_cluster(kernelshap_ray: KernelShapRaySession) -> Iterable[ClusterSession]:
    """The Ray cluster of the run: started (``local``) or attached once; closed at the end."""
    cluster = kernelshap_ray.connect()
    try:
        yield cluster
    finally:
        kernelshap_ray.close()


@pytest.fixture(scope="session")
def workload(kernelshap_ray: KernelShapRaySession) -> Workload:
    """The ``--workload`` every benchmark explains (default: the reference Adult workload)."""
    return kernelshap_ray.workload()


@pytest.fixture(scope="session")
def adult_workload() -> Any:
    """The reference Adult workload object (``explainers.workloads.adult.load_workload()``)."""
    from explainers.workloads.adult import load_workload

    return load_workload()


@pytest.fixture(scope="session")
def explain_instances(kernelshap_ray: KernelShapRaySession) -> np.ndarray:
    """The first ``--n-instances`` rows of ``workload.X``: ``(n, D)`` float64."""
    return kernelshap_ray.explain_instances()


@pytest.fixture(scope="session")
def explainer_factory(kernelshap_ray: KernelShapRaySession) -> ExplainerFactory:
    """``factory(config)`` -> an explainer (``explain(X)``) for a :class:`ScalingConfig` or a backend name."""
    return ExplainerFactory(kernelshap_ray)


@pytest.fixture
def serial_rounds(explain_instances: np.ndarray, kernelshap_ray: KernelShapRaySession) -> SerialRounds:
    """A fresh :class:`SerialRounds` on the plugin's own serial engine (built once per session)."""
    if kernelshap_ray.serial_engine is None:
        kernelshap_ray.serial_engine = ExplainerFactory(kernelshap_ray)(SERIAL)
    return SerialRounds(kernelshap_ray.serial_engine, explain_instances)


@pytest.fixture(scope="session")
def serial_reference(explain_instances: np.ndarray, kernelshap_ray: KernelShapRaySession) -> np.ndarray:
    """Serial KernelSHAP values of ``explain_instances``: ``(n, M)`` or ``(n, M, K)``, computed once.

    Built with the plugin's own factory (not the ``explainer_factory`` fixture, which a
    test suite may override), so the reference is always the engine's.
    """
    start = time.perf_counter()
    engine = ExplainerFactory(kernelshap_ray)(SERIAL)
    values = np.asarray(engine.explain(explain_instances))
    kernelshap_ray.serial_reference_seconds = time.perf_counter() - start
    kernelshap_ray.nsamples, kernelshap_ray.exact = int(engine.nsamples_), bool(engine.exact)
    values.setflags(write=False)
    return values
