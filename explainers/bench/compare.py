"""Noise-aware comparison of two saved runs: regressed, improved or unchanged within noise.

For every benchmark in both runs (matched by pytest node id and the work it did: workload,
``n_instances``, ``nsamples``) three metrics are judged, each NEW against BASE:

- ``time``: the timed rounds (lower is better);
- ``speedup``: the paired speedup, each serial round over the timed round run right after it
  (higher is better; machine-independent: a slow minute slows both rounds of a pair);
- ``cpu:<role>``: CPU-seconds per call of the workers, the driver and Ray's own processes
  (lower is better; the machine's other tenants, role ``other``, are not ours to judge).

Statistics, on raw rounds (pytest-benchmark's ``stats.data``, saved with
``--benchmark-save-data``; the paired serial rounds are the record's ``serial_rounds``):

- the effect is the ratio NEW/BASE of the medians; its uncertainty a percentile bootstrap
  interval (:data:`CONFIDENCE`, :data:`BOOTSTRAP_RESAMPLES` resamples of each run's rounds, seed
  :data:`BOOTSTRAP_SEED`, so the same files always print the same interval);
- the test is a one-sided Mann-Whitney U test (scipy) in the direction of the effect;
- a metric *regressed* when the test's p <= ``alpha`` **and** the ratio is at least
  ``1 + min_effect`` in the bad direction; *improved* likewise in the good one; else it is
  *unchanged within noise*. The minimum effect guards against what a rank test cannot see:
  the machine's drift between runs minutes or hours apart shifts every round of a benchmark.

Runs saved without raw rounds are compared on their summaries and say so (basis
``summaries``): the ratio of the medians (means where no median), Welch's t test on the log
scale with each run's coefficient of variation (stddev / mean) as the log standard deviation,
and the t interval of the log ratio. The paired speedup's summary is ``paired_efficiency x
workers`` with the spread of the serial and the timed rounds combined. CPU-seconds are one
value per run (the median over rounds), and so is the time of a benchmark of one round: judged
by the ratio alone (and, for CPU, an absolute floor), basis ``single value``.

:func:`compare_runs` compares two parsed runs, :func:`gate_against` gives the plugin's gate
messages, :func:`noise_residuals` measures a machine's round noise from saved runs and
:func:`simulate` is the power simulation of ``docs/compare.md``.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats as scipy_stats

from explainers.bench.grid import SERIAL
from explainers.bench.saved_runs import SavedBenchmark, SavedRun, parse_run

__all__ = [
    "DEFAULT_ALPHA", "DEFAULT_MIN_EFFECT", "DEFAULT_SPEEDUP_MIN_EFFECT", "DEFAULT_CPU_MIN_EFFECT", "DEFAULT_CPU_FLOOR_SECONDS",
    "BOOTSTRAP_RESAMPLES", "BOOTSTRAP_SEED", "CONFIDENCE", "JUDGED_CPU_ROLES",
    "REGRESSED", "IMPROVED", "UNCHANGED", "ROUNDS", "SUMMARIES", "SINGLE_VALUE",
    "Thresholds", "Sample", "Judgement", "Comparison", "Power", "ratio_interval", "judge",
    "samples_of", "compare_runs", "gate_against", "noise_residuals", "synthetic_run", "simulate",
]

#: the Mann-Whitney (or, on summaries, Welch) test's one-sided level
DEFAULT_ALPHA = 0.05
#: the smallest ratio NEW/BASE of time that counts (50%: two CI smokes of one commit on this machine,
#: minutes apart, differed by x1.40 in time and by x0.995 in paired speedup; docs/compare.md)
DEFAULT_MIN_EFFECT = 0.50
#: the paired speedup's: each of its rounds is a ratio of two noisy rounds (noise x sqrt 2 when independent)
DEFAULT_SPEEDUP_MIN_EFFECT = 0.20
#: the smallest relative change of a role's CPU-seconds that counts (they drift with time: x1.43 in the same pair)
DEFAULT_CPU_MIN_EFFECT = 0.50
#: and the smallest absolute change, CPU-seconds per call (the process accounting's resolution is 0.01 s)
DEFAULT_CPU_FLOOR_SECONDS = 0.05
BOOTSTRAP_RESAMPLES = 2000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95
#: the roles of ``machine_cpu_seconds`` that are judged (``other`` is the machine's other tenants)
JUDGED_CPU_ROLES = ("workers", "driver", "ray")

REGRESSED, IMPROVED, UNCHANGED = "regressed", "improved", "unchanged"
#: the basis of a judgement: raw rounds, pytest-benchmark's summaries, one value per run
ROUNDS, SUMMARIES, SINGLE_VALUE = "rounds", "summaries", "single value"
TIME, SPEEDUP, CPU_PREFIX = "time", "speedup", "cpu:"


@dataclass(frozen=True)
class Thresholds:
    """When a change counts. ``min_effect``: time, as a fraction (0.15 = 15%); ``speedup_min_effect``
    the paired speedup's;
    ``resamples``: the bootstrap's (0 skips the interval; the verdict does not use it)."""

    alpha: float = DEFAULT_ALPHA
    min_effect: float = DEFAULT_MIN_EFFECT
    speedup_min_effect: float = DEFAULT_SPEEDUP_MIN_EFFECT
    cpu_min_effect: float = DEFAULT_CPU_MIN_EFFECT
    cpu_floor_seconds: float = DEFAULT_CPU_FLOOR_SECONDS
    resamples: int = BOOTSTRAP_RESAMPLES

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"alpha is {self.alpha!r}; expected a level between 0 and 1")
        for name in ("min_effect", "speedup_min_effect", "cpu_min_effect", "cpu_floor_seconds"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"{name} is {getattr(self, name)!r}; expected a number >= 0")
        if self.resamples < 0:
            raise ValueError(f"resamples is {self.resamples!r}; expected an integer >= 0")


@dataclass(frozen=True)
class Sample:
    """One metric of one benchmark in one run: its raw ``values`` (basis :data:`ROUNDS`), or a
    summary: ``center`` (median), ``cv`` (stddev / mean; None for a single value) and ``n``."""

    basis: str
    center: float
    n: int
    values: tuple[float, ...] | None = None
    cv: float | None = None

    @classmethod
    def of_rounds(cls, values: Sequence[float]) -> Sample:
        return cls(basis=ROUNDS, center=float(np.median(values)), n=len(values), values=tuple(map(float, values)))

    def summary(self) -> Sample:
        """The same sample without its raw values (to compare with a run that has none)."""
        if self.values is None:
            return self
        return Sample(basis=SUMMARIES, center=self.center, n=self.n, cv=_cv(self.values) or 0.0)


@dataclass(frozen=True)
class Judgement:
    """The verdict on one metric of one benchmark. ``ratio``: NEW/BASE of the centers;
    ``low``/``high``: its interval (None if not computed); ``p_value``: the one-sided test's in
    the direction of the effect (None for a single value)."""

    benchmark: str
    metric: str
    verdict: str
    ratio: float
    low: float | None
    high: float | None
    p_value: float | None
    basis: str
    n_base: int
    n_new: int
    lower_is_better: bool

    def describe(self) -> str:
        """One line: verdict, benchmark, metric, effect, interval, p and rounds."""
        interval = f" [{self.low:.3f}, {self.high:.3f}]" if self.low is not None and self.high is not None else ""
        p = f"  p={self.p_value:.3g}" if self.p_value is not None else ""
        better = "lower" if self.lower_is_better else "higher"
        return (f"{self.verdict.upper():<10} {self.benchmark}  {self.metric} ({better} is better): "
                f"x{self.ratio:.3f}{interval}{p}  [{self.basis}, {self.n_base} vs {self.n_new}]")


@dataclass(frozen=True)
class Comparison:
    """Every judgement of two runs, the benchmarks only one run has, and those that did other work."""

    base: str
    new: str
    judgements: tuple[Judgement, ...]
    only_in_base: tuple[str, ...] = ()
    only_in_new: tuple[str, ...] = ()
    not_comparable: tuple[str, ...] = ()
    thresholds: Thresholds = field(default_factory=Thresholds)

    @property
    def regressions(self) -> tuple[Judgement, ...]:
        return tuple(j for j in self.judgements if j.verdict == REGRESSED)

    @property
    def bases(self) -> frozenset[str]:
        """The bases the judgements used (``rounds``, ``summaries``, ``single value``)."""
        return frozenset(j.basis for j in self.judgements)

    def min_effect_of(self, metric: str) -> float:
        """The minimum effect that applies to ``metric``."""
        t = self.thresholds
        return t.cpu_min_effect if metric.startswith(CPU_PREFIX) else \
            t.speedup_min_effect if metric == SPEEDUP else t.min_effect

    def failures(self) -> list[str]:
        """One message per regression (empty: no regression beyond the thresholds)."""
        t = self.thresholds
        return [f"{j.benchmark}: {j.metric} regressed x{j.ratio:.3f} vs {self.base} (beyond "
                + (f"{t.cpu_min_effect:.0%} and {t.cpu_floor_seconds:g} CPU-s" if j.metric.startswith(CPU_PREFIX)
                   else f"{self.min_effect_of(j.metric):.0%} at p <= {t.alpha:g}")
                + f"; p={j.p_value:.3g}" * (j.p_value is not None) + f"; {j.basis})"
                for j in self.regressions]

    def report(self) -> str:
        """The comparison as text: a header on the bases used, then one line per judgement."""
        lines = [f"BASE {self.base}", f"NEW  {self.new}"]
        if SUMMARIES in self.bases:
            lines.append("note: some benchmarks have no raw rounds (saved without --benchmark-save-data): "
                         "they were compared on their summaries (min/median/stddev/rounds), not on rounds")
        if ROUNDS in self.bases:
            lines.append("raw rounds compared where both runs saved them")
        t = self.thresholds
        lines.append(f"thresholds: alpha {t.alpha:g}, min effect {t.min_effect:.0%} (time), "
                     f"{t.speedup_min_effect:.0%} (paired speedup), "
                     f"CPU {t.cpu_min_effect:.0%} and {t.cpu_floor_seconds:g} CPU-s")
        lines.extend(j.describe() for j in self.judgements)
        for title, names in (("only in BASE", self.only_in_base), ("only in NEW", self.only_in_new),
                             ("not comparable (other work)", self.not_comparable)):
            lines.extend(f"{title}: {name}" for name in names)
        regressions = len(self.regressions)
        lines.append(f"{regressions} regression{'s' * (regressions != 1)}, "
                     f"{sum(j.verdict == IMPROVED for j in self.judgements)} improved, "
                     f"{sum(j.verdict == UNCHANGED for j in self.judgements)} unchanged within noise")
        return "\n".join(lines)


# --------------------------------------------------------------------------- statistics


def ratio_interval(base: Sequence[float], new: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES,
                   seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of median(new) / median(base): each run's rounds resampled
    with replacement, ``resamples`` times, from ``numpy.random.default_rng(seed)``."""
    rng = np.random.default_rng(seed)
    b, n = np.asarray(base, float), np.asarray(new, float)
    mb = np.median(rng.choice(b, (resamples, b.size)), axis=1)
    mn = np.median(rng.choice(n, (resamples, n.size)), axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(mn / mb, [tail, 100 - tail])
    return float(low), float(high)


def _verdict(ratio: float, p_value: float | None, lower_is_better: bool, alpha: float, min_effect: float) -> str:
    worse = ratio > 1 if lower_is_better else ratio < 1
    size = ratio if ratio >= 1 else 1 / ratio
    if size < 1 + min_effect or (p_value is not None and p_value > alpha):
        return UNCHANGED
    return REGRESSED if worse else IMPROVED


def judge(benchmark: str, metric: str, base: Sample, new: Sample, *, lower_is_better: bool,
          thresholds: Thresholds = Thresholds()) -> Judgement:
    """The verdict on one metric (see the module's docstring for the statistics)."""
    ratio = new.center / base.center
    low = high = p_value = None
    if (base.values is None) != (new.values is None):
        base, new = base.summary(), new.summary()
    if base.values is not None and new.values is not None:
        basis = ROUNDS
        alternative = "greater" if ratio >= 1 else "less"
        p_value = float(scipy_stats.mannwhitneyu(new.values, base.values, alternative=alternative).pvalue)
        if thresholds.resamples:
            low, high = ratio_interval(base.values, new.values, resamples=thresholds.resamples)
    elif base.cv is not None and new.cv is not None:
        basis = SUMMARIES
        p_value, low, high = _welch_log(ratio, base, new)
    else:
        basis = SINGLE_VALUE
    effect = thresholds.cpu_min_effect if metric.startswith(CPU_PREFIX) else \
        thresholds.speedup_min_effect if metric == SPEEDUP else thresholds.min_effect
    verdict = _verdict(ratio, p_value, lower_is_better, thresholds.alpha, effect)
    if metric.startswith(CPU_PREFIX) and abs(new.center - base.center) < thresholds.cpu_floor_seconds:
        verdict = UNCHANGED
    return Judgement(benchmark=benchmark, metric=metric, verdict=verdict, ratio=ratio, low=low, high=high,
                     p_value=p_value, basis=basis,
                     n_base=base.n, n_new=new.n, lower_is_better=lower_is_better)


def _welch_log(ratio: float, base: Sample, new: Sample) -> tuple[float, float, float]:
    """Welch's t test of the log ratio from summaries: (one-sided p, interval low, high)."""
    vb, vn = (base.cv or 0.0) ** 2 / base.n, (new.cv or 0.0) ** 2 / new.n
    se = math.sqrt(vb + vn)
    d = math.log(ratio)
    if se == 0:
        return (0.0 if d else 0.5), ratio, ratio
    terms = (vb ** 2 / (base.n - 1) if base.n > 1 else math.inf) + (vn ** 2 / (new.n - 1) if new.n > 1 else math.inf)
    df = max(1.0, (vb + vn) ** 2 / terms) if math.isfinite(terms) and terms > 0 else 1.0
    p = float(scipy_stats.t.sf(abs(d) / se, df))
    q = float(scipy_stats.t.ppf(0.5 + CONFIDENCE / 2, df))
    return p, math.exp(d - q * se), math.exp(d + q * se)


# --------------------------------------------------------------------------- runs


def _cv(values: Sequence[float]) -> float | None:
    return float(np.std(values, ddof=1) / np.mean(values)) if len(values) > 1 else None


def samples_of(bench: SavedBenchmark) -> dict[str, tuple[Sample, bool]]:
    """Every metric one saved benchmark gives: name -> (sample, lower is better)."""
    stats, record = bench.stats, bench.record
    out: dict[str, tuple[Sample, bool]] = {}
    data = stats.data
    if data is not None:
        out[TIME] = (Sample.of_rounds(data), True)
    else:
        center = stats.median if stats.median is not None else stats.mean
        out[TIME] = (Sample(basis=SUMMARIES, center=center, n=stats.rounds, cv=stats.stddev / stats.mean)
                     if stats.rounds > 1 else Sample(basis=SINGLE_VALUE, center=center, n=1), True)
    serial = record.serial_rounds
    if serial and record.backend != SERIAL:
        if data is not None and len(serial) >= len(data):
            pairs = [s / t for s, t in zip(serial[-len(data):], data) if t > 0]
            out[SPEEDUP] = (Sample.of_rounds(pairs), False)
        else:
            center = record.paired_efficiency * (record.workers or 1) if record.paired_efficiency is not None \
                else record.speedup
            if center and stats.rounds > 1:
                cv_serial = _cv(serial) or 0.0
                out[SPEEDUP] = (Sample(basis=SUMMARIES, center=center, n=stats.rounds,
                                       cv=math.hypot(cv_serial, stats.stddev / stats.mean)), False)
    cpu = record.machine_cpu_seconds
    if cpu is not None:
        for role in JUDGED_CPU_ROLES:
            if cpu[role] > 0:
                out[CPU_PREFIX + role] = (Sample(basis=SINGLE_VALUE, center=cpu[role], n=1), True)
    return out


def _work(bench: SavedBenchmark) -> tuple[Any, ...]:
    r = bench.record
    return r.workload, r.n_instances, r.nsamples


def compare_runs(base: SavedRun, new: SavedRun, thresholds: Thresholds = Thresholds()) -> Comparison:
    """Judge every metric of every benchmark both runs have (by node id, then the work done).
    A ``cpu:<role>`` sample that is 0 in one run (not measured) is left out."""
    base_by = {b.fullname: b for b in base.benchmarks}
    new_by = {b.fullname: b for b in new.benchmarks}
    judgements: list[Judgement] = []
    not_comparable = []
    for name, nb in new_by.items():
        bb = base_by.get(name)
        if bb is None:
            continue
        if _work(bb) != _work(nb):
            not_comparable.append(f"{name} (workload, n_instances, nsamples: {_work(bb)} vs {_work(nb)})")
            continue
        base_samples, new_samples = samples_of(bb), samples_of(nb)
        for metric, (new_sample, lower) in new_samples.items():
            if metric in base_samples:
                judgements.append(judge(name, metric, base_samples[metric][0], new_sample,
                                        lower_is_better=lower, thresholds=thresholds))
    return Comparison(base=_label(base), new=_label(new), judgements=tuple(judgements),
                      only_in_base=tuple(n for n in base_by if n not in new_by),
                      only_in_new=tuple(n for n in new_by if n not in base_by),
                      not_comparable=tuple(not_comparable), thresholds=thresholds)


def _label(run: SavedRun) -> str:
    commit = (run.commit or "unversioned")[:12]
    return f"{run.source} (commit {commit}, {run.cpu or 'CPU ?'}, {run.datetime or 'date ?'})"


def gate_against(base_json: Mapping[str, Any], new_json: Mapping[str, Any],
                 thresholds: Thresholds | None = None, *, base_source: str = "<base>",
                 new_source: str = "<session>") -> list[str]:
    """The plugin's gate: one message per regression of ``new_json`` (pytest-benchmark's
    ``output_json`` of this session) against ``base_json`` (a saved run); empty: it passes.
    Raises :class:`explainers.bench.saved_runs.ReportError` for a malformed run."""
    comparison = compare_runs(parse_run(base_json, base_source), parse_run(new_json, new_source),
                              thresholds or Thresholds())
    return comparison.failures()


# --------------------------------------------------------------------------- noise and power


def noise_residuals(runs: Iterable[SavedRun]) -> np.ndarray:
    """The machine's round noise measured in ``runs``: log residuals of repeated rounds of the
    same work around their benchmark's mean log, scaled by sqrt(m / (m - 1)) for m rounds.
    Repeats are each benchmark's raw rounds (``stats.data``), its paired serial rounds
    (``serial_rounds``) and plain-process rounds (``processes_rounds``), where >= 3 are saved."""
    residuals: list[np.ndarray] = []
    for run in runs:
        for bench in run.benchmarks:
            for rounds in (bench.stats.data, bench.record.serial_rounds, bench.record.processes_rounds):
                if rounds and len(rounds) >= 3 and min(rounds) > 0:
                    logs = np.log(np.asarray(rounds, float))
                    residuals.append((logs - logs.mean()) * math.sqrt(len(logs) / (len(logs) - 1)))
    return np.concatenate(residuals) if residuals else np.empty(0)


def synthetic_run(template: Mapping[str, Any], residuals: np.ndarray, rounds: int, rng: np.random.Generator,
                  slowdown: Mapping[str, float] | None = None) -> dict[str, Any]:
    """A copy of the saved run ``template`` re-measured: every benchmark's timed rounds (and its
    paired serial rounds, where it has them) are its median times ``exp`` of ``rounds`` residuals
    drawn from ``residuals``; a benchmark named (by fullname) in ``slowdown`` has its timed rounds
    multiplied by that factor. Machine CPU seconds are copied unchanged."""
    slowdown = slowdown or {}
    benches = []
    for bench in template["benchmarks"]:
        stats, info = dict(bench["stats"]), dict(bench.get("extra_info") or {})
        center = stats.get("median") or stats["mean"]
        data = center * slowdown.get(bench["fullname"], 1.0) * np.exp(rng.choice(residuals, rounds))
        stats.update(data=data.tolist(), rounds=rounds, min=float(data.min()), max=float(data.max()),
                     mean=float(data.mean()), median=float(np.median(data)),
                     stddev=float(data.std(ddof=1)) if rounds > 1 else 0.0)
        if info.get("serial_rounds"):
            serial = float(np.median(info["serial_rounds"])) * np.exp(rng.choice(residuals, rounds))
            info["serial_rounds"] = serial.tolist()
        benches.append({**bench, "stats": stats, "extra_info": info})
    return {**template, "benchmarks": benches}


@dataclass(frozen=True)
class Power:
    """:func:`simulate`'s result: the share of trials where the re-measurement raised no alarm,
    where the slowed benchmark was flagged and no other, and where it was flagged at all."""

    clean: float
    only_target: float
    target_flagged: float


def simulate(template: Mapping[str, Any], residuals: np.ndarray, *, rounds: int, target: str, slowdown: float,
             trials: int, seed: int = 0, thresholds: Thresholds = Thresholds(resamples=0)) -> Power:
    """The power simulation: ``trials`` pairs of synthetic copies of ``template``
    (:func:`synthetic_run`), BASE and NEW drawn independently; in each trial the same pair is
    judged once as is (no alarm expected) and once with ``target`` slowed by ``slowdown``."""
    rng = np.random.default_rng(seed)
    clean = only = flagged = 0
    for _ in range(trials):
        base = parse_run(synthetic_run(template, residuals, rounds, rng), "<base>")
        state = rng.bit_generator.state
        same = parse_run(synthetic_run(template, residuals, rounds, rng), "<new>")
        rng.bit_generator.state = state
        slow = parse_run(synthetic_run(template, residuals, rounds, rng, {target: slowdown}), "<new>")
        clean += not compare_runs(base, same, thresholds).regressions
        names = {j.benchmark for j in compare_runs(base, slow, thresholds).regressions}
        flagged += target in names
        only += names == {target}
    return Power(clean=clean / trials, only_target=only / trials, target_flagged=flagged / trials)
