"""``kernelshap-compare BASE NEW``: compare two saved runs, noise-aware (:mod:`explainers.bench.compare`).

BASE and NEW are saved-run files, or pytest-benchmark ids (``0019``: the ``0019_*.json`` under
``--storage``, default ``.benchmarks``, searched recursively). ``--machine CPU_MODEL`` keeps only
runs whose ``machine_info['cpu']['brand_raw']`` is CPU_MODEL; with it, BASE may be left out and is
then the newest run of that CPU model (by its saved datetime) other than NEW.

Exit status: 0 no regression beyond the thresholds, 1 a regression, 2 an error in the arguments
or the files.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from explainers.bench.compare import (
    DEFAULT_ALPHA,
    DEFAULT_CPU_FLOOR_SECONDS,
    DEFAULT_CPU_MIN_EFFECT,
    DEFAULT_MIN_EFFECT,
    DEFAULT_SPEEDUP_MIN_EFFECT,
    BOOTSTRAP_RESAMPLES,
    Thresholds,
    compare_runs,
)
from explainers.bench.saved_runs import DEFAULT_RESULTS, ReportError, SavedRun, parse_run, read_json

__all__ = ["EXIT_OK", "EXIT_REGRESSION", "EXIT_ERROR", "CompareError", "build_parser", "find_run", "newest_run", "main"]

EXIT_OK, EXIT_REGRESSION, EXIT_ERROR = 0, 1, 2


class CompareError(ValueError):
    """A run cannot be found or chosen."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelshap-compare",
        description="Compare two saved pytest-benchmark runs of perf/: for every benchmark in both, "
                    "time, paired speedup and CPU-seconds by role are regressed, improved or unchanged "
                    "within noise. Exit 1 on a regression beyond the thresholds.")
    parser.add_argument("runs", nargs="+", metavar="RUN",
                        help="BASE NEW: saved-run files or pytest-benchmark ids (0019); with --machine, "
                             "NEW alone compares it with the newest run of that CPU model")
    parser.add_argument("--storage", default=DEFAULT_RESULTS,
                        help=f"where ids are looked up, recursively (default {DEFAULT_RESULTS})")
    parser.add_argument("--machine", metavar="CPU_MODEL",
                        help="only runs of this CPU model (machine_info cpu brand_raw, e.g. 'AMD EPYC')")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA,
                        help=f"the one-sided test's level (default {DEFAULT_ALPHA:g})")
    parser.add_argument("--min-effect", type=float, default=DEFAULT_MIN_EFFECT,
                        help=f"smallest change of time that counts, a fraction (default {DEFAULT_MIN_EFFECT:g})")
    parser.add_argument("--speedup-min-effect", type=float, default=DEFAULT_SPEEDUP_MIN_EFFECT,
                        help=f"smallest change of the paired speedup that counts (default "
                             f"{DEFAULT_SPEEDUP_MIN_EFFECT:g})")
    parser.add_argument("--cpu-min-effect", type=float, default=DEFAULT_CPU_MIN_EFFECT,
                        help=f"smallest relative change of a role's CPU-seconds (default {DEFAULT_CPU_MIN_EFFECT:g})")
    parser.add_argument("--cpu-floor", type=float, default=DEFAULT_CPU_FLOOR_SECONDS,
                        help=f"smallest absolute change of a role's CPU-seconds per call "
                             f"(default {DEFAULT_CPU_FLOOR_SECONDS:g})")
    parser.add_argument("--resamples", type=int, default=BOOTSTRAP_RESAMPLES,
                        help=f"bootstrap resamples of the interval, 0 for none (default {BOOTSTRAP_RESAMPLES})")
    return parser


def _load(path: Path) -> SavedRun:
    rel = path.parent.name
    return parse_run(read_json(path), str(path), rel)


def _cpu_of(path: Path) -> str | None:
    info = read_json(path)
    machine = info.get("machine_info") if isinstance(info, dict) else None
    cpu = machine.get("cpu") if isinstance(machine, dict) else None
    return cpu.get("brand_raw") if isinstance(cpu, dict) else None


def _candidates(storage: Path, machine: str | None) -> list[Path]:
    if not storage.is_dir():
        raise CompareError(f"--storage {storage}: no such directory")
    paths = sorted(p for p in storage.rglob("*.json") if p.is_file())
    return [p for p in paths if machine is None or _cpu_of(p) == machine]


def find_run(spec: str, storage: Path, machine: str | None = None) -> Path:
    """The file of ``spec``: an existing file as is, else the one ``<spec>_*.json`` under ``storage``
    (of CPU model ``machine`` if given). Raises :class:`CompareError` if none or several match."""
    path = Path(spec)
    if path.is_file():
        return path
    if not spec.isdigit():
        raise CompareError(f"{spec}: no such file, and not a pytest-benchmark id (digits such as 0019)")
    matches = [p for p in _candidates(storage, machine) if p.name.startswith(f"{int(spec):04d}_")]
    where = f"{storage}" + (f" for CPU model {machine!r}" if machine else "")
    if not matches:
        raise CompareError(f"run {spec}: no {int(spec):04d}_*.json in {where}")
    if len(matches) > 1:
        listed = ", ".join(map(str, matches))
        raise CompareError(f"run {spec} is ambiguous in {where}: {listed} (pass a file, or --machine)")
    return matches[0]


def newest_run(storage: Path, machine: str, exclude: Path | None = None) -> Path:
    """The newest run (by its saved ``datetime``) of CPU model ``machine`` under ``storage``."""
    paths = [p for p in _candidates(storage, machine) if exclude is None or p.resolve() != exclude.resolve()]
    if not paths:
        raise CompareError(f"no saved run of CPU model {machine!r} in {storage}")
    return max(paths, key=lambda p: (str(read_json(p).get("datetime") or ""), p.name))


def main(argv: Sequence[str] | None = None) -> int:
    """The console script; returns the exit status (see the module's docstring)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    storage = Path(args.storage)
    try:
        thresholds = Thresholds(alpha=args.alpha, min_effect=args.min_effect,
                                speedup_min_effect=args.speedup_min_effect, cpu_min_effect=args.cpu_min_effect,
                                cpu_floor_seconds=args.cpu_floor, resamples=args.resamples)
        if len(args.runs) == 2:
            base_path = find_run(args.runs[0], storage, args.machine)
            new_path = find_run(args.runs[1], storage, args.machine)
        elif len(args.runs) == 1 and args.machine:
            new_path = find_run(args.runs[0], storage, args.machine)
            base_path = newest_run(storage, args.machine, exclude=new_path)
        else:
            raise CompareError("expected BASE NEW (or NEW alone with --machine)")
        base, new = _load(base_path), _load(new_path)
        if args.machine and new.cpu != args.machine:
            raise CompareError(f"{new_path}: CPU model {new.cpu!r}, not --machine {args.machine!r}")
        comparison = compare_runs(base, new, thresholds)
    except (CompareError, ReportError, ValueError) as exc:
        print(f"kernelshap-compare: error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    print(comparison.report())
    if not comparison.judgements:
        print("no benchmark is in both runs", file=sys.stderr)
    return EXIT_REGRESSION if comparison.regressions else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
