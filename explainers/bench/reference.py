"""The reference study's published times (``explainers/data/reference_results.csv``).

The study explained 2560 Adult instances, sampled (2072 coalitions), on one 32-vCPU machine
and on a two-machine Kubernetes cluster; its times were read off its charts.
"""
from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from explainers.bench.saved_runs import ReportError

__all__ = ["REFERENCE_INSTANCES", "REFERENCE_SETTINGS", "REFERENCE_LABELS", "ReferenceRow", "load_reference",
           "reference_serial", "reference_speedups"]

# the reference study (see explainers/data/reference_results.csv)
REFERENCE_INSTANCES = 2560
REFERENCE_SETTINGS = ("pool", "serve", "k8s_pool", "k8s_serve_ray", "k8s_serve_default")
REFERENCE_LABELS = {
    "pool": "study pool, 1 node",
    "serve": "study serve, 1 node",
    "k8s_pool": "study pool, 2 nodes (k8s)",
    "k8s_serve_ray": "study serve ray, 2 nodes (k8s)",
    "k8s_serve_default": "study serve default, 2 nodes (k8s)",
}


@dataclass(frozen=True)
class ReferenceRow:
    """One published number of the reference study: seconds for 2560 instances."""

    setting: str
    workers: int
    batch_size: int
    seconds: float


def load_reference(path: str | Path | None = None) -> list[ReferenceRow]:
    """The study's published times (packaged ``explainers/data/reference_results.csv`` by default)."""
    if path is None:
        text = resources.files("explainers").joinpath("data/reference_results.csv").read_text("utf-8")
        source = "explainers/data/reference_results.csv"
    else:
        text, source = Path(path).read_text(encoding="utf-8"), str(path)
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    rows = []
    for row in csv.DictReader(io.StringIO("\n".join(lines))):
        try:
            for key in row:
                if key.startswith("batch_"):
                    rows.append(ReferenceRow(row["setting"], int(row["workers"]),
                                             int(key.removeprefix("batch_")), float(row[key])))
        except (TypeError, ValueError) as exc:
            raise ReportError(f"{source}: bad row {row!r} ({exc})") from exc
    return rows


def reference_serial(ref: Sequence[ReferenceRow]) -> float:
    """The study's serial time (seconds for its 2560 instances)."""
    return next(r.seconds for r in ref if r.setting == "serial")


def reference_speedups(ref: Sequence[ReferenceRow], setting: str) -> list[tuple[int, float]]:
    """(workers, serial / time averaged over the batch sizes) for one study setting."""
    base = reference_serial(ref)
    by_w: dict[int, list[float]] = {}
    for r in ref:
        if r.setting == setting:
            by_w.setdefault(r.workers, []).append(base / r.seconds)
    return [(w, sum(v) / len(v)) for w, v in sorted(by_w.items())]

