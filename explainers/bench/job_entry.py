"""The entrypoint of a Ray Job that runs the perf suite inside a cluster, and its results block.

``--ray-address k8s`` (the Jobs transport) submits ``python -m explainers.bench.job_entry
PYTEST_ARGS...`` with the user's ``perf/`` selection as the job's ``working_dir``. This module
runs pytest there (``--ray-address auto`` is part of the arguments), writes pytest-benchmark's
JSON to a temporary file and prints it at the end of the job's log as one block between
:data:`RESULTS_BEGIN` and :data:`RESULTS_END` (zlib, base64), with the exit status and the
counts of the run. The submitting side reads it back with :func:`parse_results` and hides it
from the log it shows (:class:`ResultsFilter`).

The log is the only channel: it needs no storage shared between the cluster and the user's
machine, and it is what ``ray job logs`` shows too.
"""
from __future__ import annotations

import base64
import json
import os
import sys
import tempfile
import zlib
from typing import Any, Sequence

RESULTS_BEGIN = "<<<kernelshap-ray results>>>"
RESULTS_END = "<<<end kernelshap-ray results>>>"
#: base64 characters per line of the block (Ray's log lines stay short)
LINE_CHARS = 120


class ResultsError(ValueError):
    """The job's log has no results block, or a damaged one."""


#: characters of a failure's message sent back per report (the whole traceback is in the log)
MESSAGE_CHARS = 500


class OutcomeCounter:
    """A pytest plugin that counts what a run collected, passed, failed, skipped and errored,
    and keeps each report that the terminal summary counts (:meth:`report_fields`)."""

    def __init__(self) -> None:
        self.counts = {"collected": 0, "passed": 0, "failed": 0, "skipped": 0, "errors": 0}
        self.reports: list[dict[str, Any]] = []

    def pytest_collection_finish(self, session: Any) -> None:
        self.counts["collected"] = len(session.items)

    @staticmethod
    def report_fields(report: Any) -> dict[str, Any]:
        """What :func:`explainers.bench.remote_run.replay_reports` needs to rebuild ``report``."""
        if report.skipped and isinstance(report.longrepr, tuple):
            path, lineno, reason = report.longrepr
            longrepr: Any = [str(path), lineno, str(reason)]
        elif report.failed:
            crash = getattr(getattr(report.longrepr, "reprcrash", None), "message", None)
            lines = (report.longreprtext or "").strip().splitlines()
            message = crash or (lines[-1] if lines else "failed")
            longrepr = f"{message[:MESSAGE_CHARS]} (the traceback is in the job's log above)"
        else:
            longrepr = None
        return {"nodeid": report.nodeid, "location": list(report.location), "when": report.when,
                "outcome": report.outcome, "longrepr": longrepr, "duration": report.duration}

    def pytest_runtest_logreport(self, report: Any) -> None:
        if report.when == "call" or not report.passed:
            self.reports.append(self.report_fields(report))
        if report.when == "call" and report.passed:
            self.counts["passed"] += 1
        elif report.failed:
            self.counts["failed" if report.when == "call" else "errors"] += 1
        elif report.skipped and report.when in ("setup", "call"):
            self.counts["skipped"] += 1


def encode_results(results: dict[str, Any]) -> str:
    """``results`` as the block printed at the end of the log (lines, ends with a newline)."""
    payload = base64.b64encode(zlib.compress(json.dumps(results).encode(), 6)).decode()
    lines = [payload[i:i + LINE_CHARS] for i in range(0, len(payload), LINE_CHARS)]
    return "\n".join([RESULTS_BEGIN, *lines, RESULTS_END]) + "\n"


def parse_results(log: str) -> dict[str, Any]:
    """The results of the last block in a job's ``log``; :class:`ResultsError` without one."""
    start = log.rfind(RESULTS_BEGIN)
    end = log.find(RESULTS_END, start + 1) if start >= 0 else -1
    if start < 0 or end < 0:
        raise ResultsError("the job's log holds no results block: the entrypoint did not finish "
                           "(see the log above for why)")
    body = "".join(line.strip() for line in log[start + len(RESULTS_BEGIN):end].splitlines())
    try:
        return json.loads(zlib.decompress(base64.b64decode(body, validate=True)))
    except (ValueError, zlib.error) as exc:
        raise ResultsError(f"the job's results block is damaged: {exc}") from None


class ResultsFilter:
    """Feeds a job's log through in pieces and passes on every line but the results block."""

    def __init__(self) -> None:
        self._partial = ""
        self._inside = False

    def feed(self, text: str) -> str:
        """The complete lines of the log so far to show (results block left out); keeps a partial last line."""
        text = self._partial + text
        lines = text.split("\n")
        self._partial = lines.pop()
        return "".join(line + "\n" for line in lines if self._keep(line))

    def flush(self) -> str:
        """The partial last line (at the end of the log)."""
        rest, self._partial = self._partial, ""
        return rest if rest and self._keep(rest) else ""

    def _keep(self, line: str) -> bool:
        stripped = line.strip()
        if stripped == RESULTS_BEGIN:
            self._inside = True
        elif stripped == RESULTS_END:
            self._inside = False
            return False
        return not self._inside


def run(pytest_args: Sequence[str]) -> int:
    """Run pytest with ``pytest_args`` here, print the results block, return pytest's status."""
    import pytest

    counter = OutcomeCounter()
    fd, json_path = tempfile.mkstemp(prefix="kernelshap-ray-", suffix=".json")
    os.close(fd)
    os.unlink(json_path)  # pytest-benchmark writes it only when there are benchmarks
    try:
        status = int(pytest.main([*pytest_args, f"--benchmark-json={json_path}"],
                                 plugins=[counter]))
        sys.stdout.flush()
        benchmarks = None
        if os.path.exists(json_path):
            with open(json_path) as fh:
                benchmarks = json.load(fh)
    finally:
        if os.path.exists(json_path):
            os.unlink(json_path)
    results = {"exit_status": status, "counts": counter.counts, "reports": counter.reports,
               "benchmark_json": benchmarks}
    sys.stdout.write("\n" + encode_results(results))
    sys.stdout.flush()
    return status


def main(argv: Sequence[str] | None = None) -> int:
    return run(list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
