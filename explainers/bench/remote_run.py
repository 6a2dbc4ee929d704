"""``--ray-address k8s`` through Ray Jobs: this pytest selection, run inside a KubeRay cluster.

:class:`RemoteRun` does what the local pytest does instead of collecting and running tests:

1. finds the RayCluster's head service and token through the Kubernetes API and runs
   ``kubectl port-forward`` to its dashboard (:func:`explainers.cluster.kuberay.connect_k8s`);
2. with ``--k8s-scale`` and ``--workers``, scales the worker group up until the RayCluster asks
   for the CPUs of the largest worker count, and waits for the pods (restored at the end);
3. stages the selection (the test paths, their ``conftest.py`` files, the ini file and a
   ``--workload`` module of the project) as the job's ``working_dir`` (:func:`stage_working_dir`);
4. submits ``python -m explainers.bench.job_entry`` with the same options
   (:func:`remote_pytest_args`: ``--ray-address auto``, without the options only this side
   uses) and shows its log live;
5. reads the job's results block back (:mod:`explainers.bench.job_entry`) and hands its
   benchmarks to pytest-benchmark's own session (:func:`benchmarks_from_json`), so
   ``--benchmark-autosave``, ``--benchmark-save``, ``--benchmark-json``,
   ``--benchmark-compare(-fail)`` and ``--report-dir`` work as for a local run.

Ctrl-C, a dead forward and ``--k8s-timeout`` stop the job; nothing stays behind.
"""
from __future__ import annotations

import importlib.util
import os
import platform
import shlex
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import pytest

from explainers.bench.job_entry import ResultsError, ResultsFilter, parse_results
from explainers.bench.options import PluginOptions

#: options of this side only, and how many values each takes: 0, 1, or "?" (an optional value,
#: taken when the next argument does not start with "-", as argparse does)
LOCAL_ONLY_OPTIONS: dict[str, Any] = {
    "--ray-address": 1, "--k8s-namespace": 1, "--k8s-cluster": 1, "--kubeconfig": 1,
    "--k8s-scale": 0, "--k8s-transport": 1, "--k8s-timeout": 1, "--report-dir": 1,
    "--benchmark-autosave": 0, "--benchmark-save": 1, "--benchmark-save-data": 0,
    "--benchmark-json": 1, "--benchmark-compare": "?", "--benchmark-compare-fail": 1,
    "--benchmark-storage": 1, "--benchmark-netrc": 1, "--benchmark-histogram": "?",
    "--benchmark-cprofile-dump": "?", "--junitxml": 1, "--junit-xml": 1,
}
#: files and folders never staged into the job's working_dir
STAGE_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".benchmarks")
#: the command the job runs (the image has the project installed)
ENTRYPOINT = "python -m explainers.bench.job_entry"


def remote_pytest_args(args: Sequence[str]) -> list[str]:
    """``args`` without :data:`LOCAL_ONLY_OPTIONS` (either form, ``--opt value`` or ``--opt=value``),
    with ``--ray-address auto`` (the cluster the job runs in) and ``--benchmark-quiet`` (the
    table is shown here, once, by pytest-benchmark's own session)."""
    out: list[str] = []
    i = 0
    while i < len(args):
        arg = str(args[i])
        name = arg.split("=", 1)[0]
        if name in LOCAL_ONLY_OPTIONS:
            arity = LOCAL_ONLY_OPTIONS[name]
            if "=" not in arg:
                if arity == 1:
                    i += 1
                elif arity == "?" and i + 1 < len(args) and not str(args[i + 1]).startswith("-"):
                    i += 1
            i += 1
            continue
        out.append(arg)
        i += 1
    return [*out, "--ray-address", "auto", "--benchmark-quiet"]


def _test_paths(config: pytest.Config) -> list[Path]:
    """The files and folders of ``config.args`` (``path::node`` ids cut at ``::``), absolute."""
    base = Path(config.invocation_params.dir)
    return [(base / str(arg).split("::", 1)[0]).resolve() for arg in config.args]


def _module_path(module: str, rootdir: Path) -> Optional[Path]:
    """The file or package folder of ``module``'s top-level package when it lies in ``rootdir``."""
    top = module.split(".", 1)[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        candidate = rootdir / top
        for path in (candidate, candidate.with_suffix(".py")):
            if path.exists():
                return path
        return None
    origin = Path(spec.origin) if spec.origin else None
    if origin is None:
        return None
    path = origin.parent if origin.name == "__init__.py" else origin
    return path if rootdir in path.resolve().parents else None


def stage_working_dir(config: pytest.Config, options: PluginOptions, dest: Path) -> Path:
    """Copy what the job needs into ``dest`` (mirroring the rootdir); ``dest``.

    The ini file, every test path of the selection with the ``conftest.py`` files of the
    folders above it, and the ``--workload`` module when it belongs to the project. The
    installed ``explainers`` package is not copied: the image provides it. A test path outside
    the rootdir is a ``pytest.UsageError``.
    """
    rootdir = Path(config.rootpath).resolve()
    picked: set[Path] = set()
    if config.inipath is not None and rootdir in Path(config.inipath).resolve().parents:
        picked.add(Path(config.inipath).resolve())
    for path in _test_paths(config):
        if path != rootdir and rootdir not in path.parents:
            raise pytest.UsageError(f"--ray-address k8s: test path {path} is outside the rootdir "
                                    f"{rootdir}; run pytest from the project that holds it")
        if not path.exists():
            raise pytest.UsageError(f"--ray-address k8s: test path {path} does not exist")
        if path == rootdir:
            raise pytest.UsageError("--ray-address k8s: name the test paths to run in the cluster "
                                    "(e.g. perf/), not the whole project")
        picked.add(path)
        for folder in [path.parent, *path.parent.parents]:
            if folder != rootdir and rootdir not in folder.parents:
                break
            if (folder / "conftest.py").exists():
                picked.add(folder / "conftest.py")
    workload_module = options.workload.split(":", 1)[0]
    if not workload_module.startswith("explainers."):
        module_path = _module_path(workload_module, rootdir)
        if module_path is not None:
            picked.add(module_path)
    for path in sorted(picked):
        target = dest / path.relative_to(rootdir)
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_dir():
            shutil.copytree(path, target, ignore=STAGE_IGNORE, dirs_exist_ok=True)
        else:
            shutil.copy2(path, target)
    return dest


def benchmarks_from_json(output_json: dict[str, Any]) -> list[Any]:
    """pytest-benchmark ``Metadata`` objects of a saved run's benchmarks, their stats rebuilt
    from the raw ``stats.data`` (so comparisons and tables are pytest-benchmark's own)."""
    from pytest_benchmark.stats import Metadata

    out = []
    for bench in output_json.get("benchmarks") or []:
        stats = bench.get("stats") or {}
        data = stats.get("data")
        if not data:
            raise ResultsError(f"benchmark {bench.get('fullname')!r} came back without its rounds")
        fixture = SavedFixture(name=bench["name"], fullname=bench["fullname"], group=bench.get("group"),
                               param=bench.get("param"), params=bench.get("params"),
                               extra_info=dict(bench.get("extra_info") or {}))
        meta = Metadata(fixture, iterations=int(stats.get("iterations", 1)), options=bench.get("options") or {})
        for duration in data:
            meta.stats.update(duration)
        out.append(meta)
    return out


@dataclass
class SavedFixture:
    """What pytest-benchmark's ``Metadata`` reads of a benchmark fixture, for a benchmark
    measured elsewhere."""

    name: str
    fullname: str
    group: Optional[str]
    param: Any
    params: Any
    extra_info: dict[str, Any]
    cprofile_stats: Any = None
    has_error: bool = False


@dataclass
class RemoteOutcome:
    """What came back from the job: its id and status, pytest's ``exit_status`` there, its
    ``counts`` (collected, passed, failed, skipped, errors) and benchmark JSON (or ``None``)."""

    job_id: str
    status: str
    exit_status: int
    counts: dict[str, int]
    benchmark_json: Optional[dict[str, Any]]
    machine_info: dict[str, Any] = field(default_factory=dict)
    reports: list[dict[str, Any]] = field(default_factory=list)


class RemoteRun:
    """One Ray Job of the suite on the RayCluster the options name (see the module docstring)."""

    def __init__(self, config: pytest.Config, options: PluginOptions) -> None:
        self.config = config
        self.options = options
        self.outcome: Optional[RemoteOutcome] = None

    def entrypoint(self) -> str:
        """The job's shell command: ``python -m explainers.bench.job_entry ARGS`` (in the folder
        pytest was started from, relative to the rootdir)."""
        args = list(shlex.split(os.environ.get("PYTEST_ADDOPTS", "")))
        args += [str(a) for a in self.config.invocation_params.args]
        command = f"{ENTRYPOINT} {shlex.join(remote_pytest_args(args))}"
        rootdir = Path(self.config.rootpath).resolve()
        here = Path(self.config.invocation_params.dir).resolve()
        if here != rootdir and rootdir in here.parents:
            command = f"cd {shlex.quote(str(here.relative_to(rootdir)))} && {command}"
        return command

    def needed_cpus(self) -> Optional[int]:
        """CPUs the run needs when the worker counts are given (``--workers``), else ``None``."""
        return max(self.options.workers) if self.options.workers else None

    def run(self, show: Callable[[str], None]) -> RemoteOutcome:
        """Submit the job, pass its log to ``show`` as it comes, and return what came back.

        Raises :class:`explainers.cluster.kuberay.K8sError` for what went wrong on the way
        (lookups, token, forward, deadline); the job is stopped and the forward closed on
        every way out, Ctrl-C included.
        """
        from explainers.cluster.kuberay import connect_k8s

        k8s = self.options.k8s
        deadline = time.monotonic() + k8s.job_timeout
        conn = connect_k8s(k8s.namespace, k8s.cluster, k8s.kubeconfig, timeout=k8s.timeout,
                           port="dashboard")
        job_id: Optional[str] = None
        jobs = conn.jobs()
        try:
            jobs.client()  # token and reachability, before anything is changed
            needed = self.needed_cpus()
            if self.options.k8s_scale and needed is not None:
                conn.ensure_cpus(needed)
            with tempfile.TemporaryDirectory(prefix="kernelshap-ray-job-") as tmp:
                working_dir = stage_working_dir(self.config, self.options, Path(tmp))
                job_id = jobs.submit(self.entrypoint(), runtime_env={"working_dir": str(working_dir)},
                                     metadata={"submitted_by": "kernelshap-ray",
                                               "host": socket.gethostname()})
            show(f"kernelshap-ray: submitted Ray Job {job_id} to {k8s.namespace}/{k8s.cluster} "
                 f"(dashboard forwarded at {conn.address})\n")
            log_filter = ResultsFilter()
            ended = jobs.follow(job_id, on_output=lambda text: show(log_filter.feed(text)),
                                deadline=deadline)
            show(log_filter.flush())
            if ended.status == "STOPPED":
                raise ResultsError(f"job {job_id} was stopped on the cluster: {ended.message}")
            results = parse_results(ended.log)
            benchmark_json = results.get("benchmark_json")
            self.outcome = RemoteOutcome(
                job_id=job_id, status=ended.status, exit_status=int(results["exit_status"]),
                counts=dict(results["counts"]), benchmark_json=benchmark_json,
                reports=list(results.get("reports") or []),
                machine_info=self._machine_info(conn, jobs, job_id, benchmark_json))
            job_id = None  # over: nothing to stop
            return self.outcome
        finally:
            try:
                if job_id is not None:
                    jobs.stop(job_id)
            finally:
                conn.close()

    @staticmethod
    def _machine_info(conn: Any, jobs: Any, job_id: str,
                      benchmark_json: Optional[dict[str, Any]]) -> dict[str, Any]:
        """The machine info of the run: the job's own (the node pytest ran on in the cluster, its
        Ray fields) with the RayCluster's ``k8s_*`` fields and where it was submitted from."""
        remote = dict((benchmark_json or {}).get("machine_info") or {})
        remote.update({k: v for k, v in conn.describe().items() if k.startswith("k8s_")})
        remote["ray_transport"] = "jobs"
        remote["ray_job_id"] = job_id
        remote.setdefault("ray_version", jobs.cluster_ray_version())
        remote["submitted_from"] = {"node": platform.node(), "python_version": platform.python_version()}
        return remote


def run_as_job(session: pytest.Session, remote: RemoteRun) -> None:
    """Run ``remote`` for this pytest session: its log on the terminal, its benchmarks in
    pytest-benchmark's session, its counts in ``session`` (the exit status is set by the
    plugin's ``pytest_sessionfinish`` from :attr:`RemoteRun.outcome`).

    A problem on the way is ``pytest.exit`` with its message: exit status 4 for a lookup or
    token problem found before the job ran, 3 for a forward lost or a deadline passed.
    """
    from explainers.cluster.kuberay import K8sError
    from explainers.cluster.kuberay.jobs import ForwardLost, JobTimeout

    config = session.config
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    capman = config.pluginmanager.get_plugin("capturemanager")

    def show(text: str) -> None:
        if text and reporter is not None:
            reporter.write(text)
            reporter.flush()

    try:
        if capman is not None:
            with capman.global_and_fixture_disabled():
                outcome = remote.run(show)
        else:
            outcome = remote.run(show)
    except (ForwardLost, JobTimeout) as exc:
        pytest.exit(f"kernelshap-ray: {exc}; the job was stopped", returncode=pytest.ExitCode.INTERNAL_ERROR)
    except (K8sError, ResultsError) as exc:
        pytest.exit(f"kernelshap-ray: {exc}", returncode=pytest.ExitCode.USAGE_ERROR)
    session.testscollected = outcome.counts.get("collected", 0)
    session.testsfailed = outcome.counts.get("failed", 0) + outcome.counts.get("errors", 0)
    if reporter is not None:
        replay_reports(config, reporter, outcome.reports)
    bs = getattr(config, "_benchmarksession", None)
    if bs is not None and outcome.benchmark_json is not None:
        bs.benchmarks.extend(benchmarks_from_json(outcome.benchmark_json))


def replay_reports(config: pytest.Config, reporter: Any, reports: list[dict[str, Any]]) -> None:
    """Put the job's test reports in the terminal reporter's counts, so that its short summary and
    last line ("1 failed, 2 passed in ...") tell the job's outcome (the tracebacks are in its log)."""
    for fields in reports:
        longrepr = fields.get("longrepr")
        report = pytest.TestReport(
            nodeid=fields["nodeid"], location=tuple(fields["location"]), keywords={},
            outcome=fields["outcome"], when=fields["when"], duration=float(fields.get("duration") or 0.0),
            longrepr=tuple(longrepr) if isinstance(longrepr, list) else longrepr)
        category = config.hook.pytest_report_teststatus(report=report, config=config)[0]
        if category:
            reporter.stats.setdefault(category, []).append(report)
