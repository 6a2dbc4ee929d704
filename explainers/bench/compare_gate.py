"""``--compare-gate RUN``: this session's benchmarks against a saved run, beyond the noise.

The judgement is :mod:`explainers.bench.compare`'s (time, paired speedup and CPU-seconds by
role, each a rank test plus a minimum effect; see ``docs/compare.md``), the same as
``kernelshap-compare BASE NEW``. It complements pytest-benchmark's ``--benchmark-compare-fail``,
a threshold on one statistic.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

import pytest

from explainers.bench.compare import gate_against
from explainers.bench.compare_cli import CompareError, find_run
from explainers.bench.saved_runs import ReportError, read_json


class CompareGate:
    """The gate of one session: ``spec`` is a saved-run file or a pytest-benchmark id (``0001``)."""

    def __init__(self, spec: str) -> None:
        self.spec = spec
        self.path: Path | None = None

    def resolve(self, storage: Path) -> Path:
        """The saved run ``spec`` names (an id is looked up in ``storage``); ``pytest.UsageError`` if none."""
        try:
            self.path = find_run(self.spec, storage)
        except CompareError as exc:
            raise pytest.UsageError(f"--compare-gate: {exc}") from None
        return self.path

    def failures(self, output_json: Mapping[str, Any]) -> list[str]:
        """One message per benchmark metric of ``output_json`` (this session) that regressed."""
        if self.path is None:
            raise RuntimeError("CompareGate.resolve() was not called")
        try:
            return gate_against(read_json(self.path), output_json, base_source=str(self.path))
        except ReportError as exc:
            raise pytest.UsageError(f"--compare-gate {self.spec}: {exc}") from None
