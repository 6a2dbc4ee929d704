"""The report's figures: one per setting, the headline's, the reference study's, the history's.

Plain :class:`matplotlib.figure.Figure` objects, never pyplot: ``savefig`` renders them with
the Agg canvas, no display is needed and the global matplotlib backend of the caller (e.g. a
notebook) is left alone. The setting figures take the report's records
(:class:`explainers.bench.results.Record`) of **one** setting (Ray cluster, instances,
nsamples; a :class:`ValueError` otherwise) and return a figure, or None if they have nothing to
draw: every axis is scaled to its own setting and draws that setting's serial baseline.

Every artist drawn from a setting's records carries the setting in its ``gid``
(:func:`setting_gid`); :func:`axes_settings` reads them back and :func:`mixed_axes` names the
axes that hold more than one setting (none should). The reference study's published values,
drawn for comparison, carry :data:`REFERENCE_GID` instead.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.transforms import Bbox
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullFormatter, NullLocator

from explainers.bench.grid import SERIAL
from explainers.bench.history import STEP_FACTOR, MachineHistory, Step
from explainers.bench.reference import (
    REFERENCE_INSTANCES,
    REFERENCE_LABELS,
    REFERENCE_SETTINGS,
    ReferenceRow,
    reference_serial,
    reference_speedups,
)
from explainers.bench.results import DEFAULT_TITLE, PANELS, Record, Setting

__all__ = ["PANEL_TITLES", "REFERENCE_FOR_PANEL", "SETTING_GID", "REFERENCE_GID", "setting_gid",
           "describe_setting", "axes_settings", "mixed_axes", "plot_time_vs_workers", "plot_speedup",
           "plot_headline", "plot_reference", "plot_speedup_vs_reference", "plot_history"]

#: each panel's title (panels: :data:`explainers.bench.results.PANELS`)
PANEL_TITLES = {
    "pool": "pool (actor pool)",
    "serve-ray": "serve, mode ray",
    "serve-default": "serve, mode default",
    "data": "data (Ray Data)",
}
#: the reference study's settings drawn beside each panel
REFERENCE_FOR_PANEL = {
    "pool": ("pool", "k8s_pool"),
    "serve-ray": ("serve", "k8s_serve_ray"),
    "serve-default": ("serve", "k8s_serve_default"),
    "data": (),
}
#: the prefix of the ``gid`` of every artist drawn from one setting's records
SETTING_GID = "setting: "
#: the ``gid`` of the reference study's published values drawn for comparison
REFERENCE_GID = "reference study"

_BATCH_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_BATCH_MARKERS = ("o", "s", "^", "D", "v", "P")
_FAMILY_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown",
                  "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
_REF_STYLES = {
    "pool": ("0.35", "--"),
    "serve": ("0.35", "--"),
    "k8s_pool": ("0.55", ":"),
    "k8s_serve_ray": ("0.55", ":"),
    "k8s_serve_default": ("0.55", ":"),
}
_ENGINE_COLORS = {False: "tab:blue", True: "tab:orange"}
_ENGINE_LABELS = {False: "default engine", True: "reuse_coalitions=True"}


# --------------------------------------------------------------------------- settings on axes


def setting_gid(setting: Setting) -> str:
    """The ``gid`` of an artist drawn from ``setting``'s records."""
    return SETTING_GID + describe_setting(setting)


def describe_setting(setting: Setting) -> str:
    """``40 instances, nsamples 2072; local, 1 node, 2 CPUs``."""
    cluster, n, nsamples = setting
    return f"{n} instances, nsamples {nsamples}; {cluster}"


def _artists(ax: Any) -> list[Any]:
    return [*ax.get_lines(), *ax.collections, *ax.patches]


def axes_settings(ax: Any) -> set[str]:
    """The settings (their :func:`setting_gid`) whose records an axis draws."""
    return {gid for gid in (a.get_gid() for a in _artists(ax)) if gid and gid.startswith(SETTING_GID)}


def mixed_axes(fig: Figure) -> list[str]:
    """One message per axis of ``fig`` that draws more than one setting (empty: the figure is fine)."""
    out = []
    for i, ax in enumerate(fig.axes):
        settings = axes_settings(ax)
        if len(settings) > 1:
            out.append(f"axis {i} ({ax.get_title() or 'untitled'}) shows {len(settings)} settings: "
                       + "; ".join(sorted(s.removeprefix(SETTING_GID) for s in settings)))
    return out


def _one_setting(records: Sequence[Record]) -> Setting:
    settings = {r.setting for r in records}
    if len(settings) != 1:
        raise ValueError(f"a figure shows one setting; got {len(settings)}: "
                         + "; ".join(describe_setting(s) for s in sorted(settings)))
    return next(iter(settings))


def _tag(artists: Iterable[Any], gid: str) -> None:
    for artist in artists:
        artist.set_gid(gid)


# --------------------------------------------------------------------------- axes helpers


def _ticks(values: Iterable[float], min_octaves: float = 0.45) -> list[float]:
    """Tick positions among ``values`` at least ``min_octaves`` apart (keeps the largest)."""
    vals = sorted(set(values))
    if not vals:
        return []
    keep = [vals[-1]]
    for v in reversed(vals[:-1]):
        if math.log2(keep[-1] / v) >= min_octaves:
            keep.append(v)
    return sorted(keep)


def _log2_axis(ax: Any, workers: Iterable[float]) -> None:
    ws = sorted(set(workers))
    ax.set_xscale("log", base=2)
    ax.xaxis.set_major_locator(FixedLocator(_ticks(ws)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(ws[0] / 1.35, ws[-1] * 1.35)
    ax.grid(True, which="major", alpha=0.3)


def _figure_legend(fig: Figure, axes: Sequence[Any], ncols: int = 6, title: str | None = None,
                   into: Any = None, fit: bool = True) -> None:
    """One legend for all panels (labels deduplicated): below the panels (in as many of ``ncols``
    columns as fit the figure's width, or exactly ``ncols`` without ``fit``), or in axes ``into``."""
    handles, labels = [], []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles.append(h)
                labels.append(lab)
    if not handles:
        return
    if into is not None:
        into.axis("off")
        into.legend(handles, labels, loc="center", title=title, frameon=False)
    else:
        # as many columns as fit the figure's width (about 11 characters per inch at 10 pt)
        fits = int(fig.get_figwidth() * 11 // (max(map(len, labels)) + 6)) if fit else ncols
        fig.legend(handles, labels, loc="outside lower center",
                   ncols=max(1, min(ncols, fits, len(labels))), frameon=False, title=title)


def _spread_note(records: Sequence[Record]) -> str:
    rounds = sorted({r.rounds for r in records})
    n = f"{rounds[0]} rounds" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]} rounds"
    return f"points: mean of {n}; error bars: fastest to slowest round"


def _batch_styles(records: Sequence[Record]) -> dict[int, tuple[str, str]]:
    batches = sorted({r.batch_size for r in records if r.batch_size is not None})
    return {b: (_BATCH_COLORS[i % len(_BATCH_COLORS)], _BATCH_MARKERS[i % len(_BATCH_MARKERS)])
            for i, b in enumerate(batches)}


def _panels(records: Sequence[Record]) -> list[str]:
    return [p for p in PANELS if any(r.panel == p for r in records)]


def _speedup_panels(records: Sequence[Record]) -> tuple[list[Record], list[str], dict[int, tuple[str, str]]]:
    """The distributed records with a speedup, their panels and their batch sizes' styles."""
    recs = [r for r in records if r.panel != SERIAL and r.speedup is not None and r.workers]
    return recs, _panels(recs), _batch_styles(recs)


def _grid(n: int) -> tuple[int, int]:
    """Rows and columns of ``n`` panels: two by two for four, else one row."""
    return (2, 2) if n == 4 else (1, n)


def _serial(records: Sequence[Record]) -> Record | None:
    return next((r for r in records if r.panel == SERIAL), None)


def _serial_label(serial: Record) -> str:
    source = " (the engine alone)" if serial.suite == "engine" else ""
    return f"serial baseline{source}, no Ray: {serial.mean:.3g} s"


def _draw_batches(ax: Any, records: Sequence[Record], panel: str, styles: dict[int, tuple[str, str]],
                  value: Callable[[Record], float], *, errors: bool = False, label_prefix: str = "") -> None:
    """One line per batch size of ``panel``'s records against workers, tagged with their setting;
    with ``errors``, error bars from the fastest to the slowest round."""
    for batch, (color, marker) in styles.items():
        pts = sorted((r for r in records if r.panel == panel and r.batch_size == batch), key=lambda r: r.workers)
        if not pts:
            continue
        gid = setting_gid(pts[0].setting)
        x, y = [r.workers for r in pts], [value(r) for r in pts]
        kw = dict(color=color, marker=marker, markersize=5, label=f"{label_prefix}batch size {batch}", zorder=3)
        if errors:
            cont = ax.errorbar(x, y, yerr=[[r.mean - r.min for r in pts], [r.max - r.mean for r in pts]],
                               capsize=3, **kw)
            _tag([cont.lines[0], *cont.lines[1], *cont.lines[2]], gid)
        else:
            _tag(ax.plot(x, y, **kw), gid)


# --------------------------------------------------------------------------- one setting


def plot_time_vs_workers(records: Sequence[Record], *, title: str = DEFAULT_TITLE) -> Figure | None:
    """One setting's time to explain against workers: one panel per backend (two by two for
    four), one line per batch size, the setting's serial baseline dashed in each panel.

    Points are the mean over rounds, error bars span the fastest to the slowest round; the y axes
    (shared by the panels) run from 0 to the setting's slowest round. ``None`` if there is no
    non-serial record.
    """
    setting = _one_setting(records)
    panels = _panels(records)
    if not panels:
        return None
    styles = _batch_styles(records)
    serial = _serial(records)
    nrows, ncols = _grid(len(panels))
    fig = Figure(figsize=(max(7.0, 4.6 * ncols), 3.6 * nrows + 1.1), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    workers = [r.workers for r in records if r.workers and r.panel != SERIAL]
    top = max(max(r.max for r in records), max(r.mean for r in records)) * 1.08
    for ax, panel in zip(axes, panels):
        _draw_batches(ax, records, panel, styles, lambda r: r.mean, errors=True)
        if serial is not None:
            _tag([ax.axhline(serial.mean, color="black", linestyle="--", linewidth=1.2,
                             label=_serial_label(serial))], setting_gid(setting))
        ax.set_title(PANEL_TITLES[panel])
        _log2_axis(ax, workers)
        ax.set_ylim(0, top)
        ax.set_xlabel("workers (log$_2$ scale)")
        ax.set_ylabel("time to explain (s)")
        ax.tick_params(labelleft=True)
    fig.suptitle(f"{title}: time to explain against workers\n{describe_setting(setting)}")
    _figure_legend(fig, list(axes), title=_spread_note([r for r in records if r.panel != SERIAL]))
    return fig


def plot_speedup(records: Sequence[Record], *, title: str = DEFAULT_TITLE) -> Figure | None:
    """One setting's speedup (top row) and parallel efficiency (bottom row) against workers, one
    panel per backend, ideal lines dashed.

    Speedup = serial time / time (as the benchmark recorded it), efficiency = speedup / workers.
    ``None`` if no record has a speedup.
    """
    setting = _one_setting(records)
    recs, panels, styles = _speedup_panels(records)
    if not panels:
        return None
    workers = sorted({r.workers for r in recs})
    fig = Figure(figsize=(max(7.0, 3.9 * len(panels)), 7.2), layout="constrained")
    axes = fig.subplots(2, len(panels), sharey="row", squeeze=False)
    top = max(max(workers), max(r.speedup for r in recs))
    for col, panel in enumerate(panels):
        ax_s, ax_e = axes[0, col], axes[1, col]
        ax_s.plot(workers, workers, color="0.35", linestyle="--", linewidth=1.2, label="ideal")
        _tag([ax_s.axhline(1.0, color="black", linestyle=":", linewidth=1.2,
                           label="serial baseline, no Ray (speedup 1)")], setting_gid(setting))
        ax_e.axhline(1.0, color="0.35", linestyle="--", linewidth=1.2, label="ideal")
        _draw_batches(ax_s, recs, panel, styles, lambda r: r.speedup)
        _draw_batches(ax_e, recs, panel, styles,
                      lambda r: r.efficiency if r.efficiency is not None else r.speedup / r.workers)
        ax_s.set_title(PANEL_TITLES[panel])
        for ax in (ax_s, ax_e):
            _log2_axis(ax, workers)
            ax.set_xlabel("workers (log$_2$ scale)")
            ax.tick_params(labelleft=True)
        ax_s.set_ylim(0, top * 1.1)
        ax_e.set_ylim(0, max(1.15, max(r.efficiency or 0 for r in recs) * 1.1))
        ax_s.set_ylabel("speedup (serial time / time)")
        ax_e.set_ylabel("parallel efficiency\n(speedup / workers)")
    fig.suptitle(f"{title}: speedup and parallel efficiency against workers\n{describe_setting(setting)}")
    _figure_legend(fig, list(axes.ravel()))
    return fig


def _study_best(ref: Sequence[ReferenceRow]) -> list[tuple[str, float]]:
    """The study's best published times: on one machine and on its two-node cluster."""
    one = min(r.seconds for r in ref if r.setting in ("pool", "serve"))
    two = min(r.seconds for r in ref if r.setting.startswith("k8s_"))
    return [(f"study's best, one 32-vCPU machine (sampled): {one:.0f} s", one),
            (f"study's best, two machines on Kubernetes (sampled): {two:.0f} s", two)]


def plot_headline(records: Sequence[Record], *, title: str = DEFAULT_TITLE,
                  reference: Sequence[ReferenceRow] | None = None) -> Figure | None:
    """The headline (``perf/test_mission.py``, exact values of every instance) of one setting:
    one group of bars per backend (its workers and batch size under it), the default engine
    beside ``reuse_coalitions=True``, error bars from the fastest to the slowest round, the
    setting's serial baseline dashed. At the study's instance count, with ``reference``, the
    study's best published times are drawn too. ``None`` without headline records."""
    setting = _one_setting(records)
    heads = [r for r in records if r.headline]
    if not heads:
        return None
    gid = setting_gid(setting)
    serial = _serial(records)
    panels = _panels(heads)
    variants = sorted({bool(r.reuse_coalitions) for r in heads})
    width = 0.8 / len(variants)
    fig = Figure(figsize=(max(7.5, 2.2 * len(panels) + 1.5), 5.4), layout="constrained")
    ax = fig.subplots()
    tops = [r.max for r in heads] + ([serial.mean] if serial is not None else [])
    for vi, reuse in enumerate(variants):
        for pi, panel in enumerate(panels):
            rec = next((r for r in heads if r.panel == panel and bool(r.reuse_coalitions) == reuse), None)
            if rec is None:
                continue
            x = pi + (vi - (len(variants) - 1) / 2) * width
            bars = ax.bar([x], [rec.mean], width=width * 0.92, color=_ENGINE_COLORS[reuse],
                          label=_ENGINE_LABELS[reuse], zorder=2)
            _tag(bars.patches, gid)
            cont = ax.errorbar([x], [rec.mean], yerr=[[rec.mean - rec.min], [rec.max - rec.mean]],
                               color="black", capsize=3, linestyle="none", zorder=3)
            _tag([cont.lines[0], *cont.lines[1], *cont.lines[2]], gid)
            ax.annotate(f"{rec.mean:.3g} s", (x, 0), xytext=(0, 4), textcoords="offset points",
                        ha="center", va="bottom", fontsize=9, color="white", fontweight="bold", zorder=4)
    if serial is not None:
        _tag([ax.axhline(serial.mean, color="black", linestyle="--", linewidth=1.2,
                         label=_serial_label(serial))], gid)
    if reference and setting[1] == REFERENCE_INSTANCES:
        for (label, seconds), ls in zip(_study_best(reference), ("-.", ":")):
            ax.axhline(seconds, color="0.45", linestyle=ls, linewidth=1.2, label=label, gid=REFERENCE_GID)
            tops.append(seconds)
    ax.set_xticks(range(len(panels)))
    ax.set_xticklabels([f"{PANEL_TITLES[p]}\n" + ", ".join(sorted({f"{r.workers} workers, batch {r.batch_size}"
                                                                  for r in heads if r.panel == p}))
                        for p in panels])
    ax.set_xlim(-0.6, len(panels) - 0.4)
    ax.set_ylim(0, max(tops) * 1.12)
    ax.set_ylabel("time to explain (s)")
    ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(f"{title}: the headline (perf/test_mission.py), exact Shapley values of every instance\n"
                 f"{describe_setting(setting)}")
    _figure_legend(fig, [ax], ncols=2, title=_spread_note(heads).replace("points", "bars"), fit=False)
    return fig


def plot_speedup_vs_reference(records: Sequence[Record], ref: Sequence[ReferenceRow], *,
                              title: str = DEFAULT_TITLE) -> Figure | None:
    """One setting's speedups (coloured, per batch size) beside the study's published ones (grey,
    mean over batch sizes), one panel per backend, log scales. ``None`` without speedups."""
    setting = _one_setting(records)
    recs, panels, styles = _speedup_panels(records)
    if not panels:
        return None
    fig = Figure(figsize=(max(7.0, 3.9 * len(panels)), 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ref_workers = sorted({r.workers for r in ref})
    workers = sorted({r.workers for r in recs} | set(ref_workers))
    speedups = [r.speedup for r in recs] + [s for st in REFERENCE_SETTINGS for _, s in reference_speedups(ref, st)]
    lo = 2.0 ** math.floor(math.log2(min(min(speedups), 1.0)))
    hi = 2.0 ** math.ceil(math.log2(max(max(speedups), max(workers))))
    for ax, panel in zip(axes, panels):
        _draw_batches(ax, recs, panel, styles, lambda r: r.speedup, label_prefix="this run, ")
        ax.plot(workers, workers, color="0.35", linestyle="-", linewidth=0.8, alpha=0.6, label="ideal")
        for ref_setting in REFERENCE_FOR_PANEL[panel]:
            color, ls = _REF_STYLES[ref_setting]
            pts = reference_speedups(ref, ref_setting)
            ax.plot([w for w, _ in pts], [s for _, s in pts], color=color, linestyle=ls, marker=".",
                    label=REFERENCE_LABELS[ref_setting], gid=REFERENCE_GID)
        if not REFERENCE_FOR_PANEL[panel]:
            ax.text(0.04, 0.96, "no counterpart in the study", transform=ax.transAxes,
                    va="top", fontsize=9, color="0.3")
        ax.set_title(PANEL_TITLES[panel])
        _log2_axis(ax, workers)
        ax.set_yscale("log", base=2)
        ax.yaxis.set_major_locator(FixedLocator(
            [2.0 ** k for k in range(int(math.log2(lo)), int(math.log2(hi)) + 1)]))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_ylim(lo / 1.2, hi * 1.2)
        ax.set_xlabel("workers (log$_2$ scale)")
        ax.set_ylabel("speedup (serial time / time, log$_2$ scale)")
        ax.tick_params(labelleft=True)
    fig.suptitle(f"{title}: speedup, this run ({describe_setting(setting)}) vs the reference study\n"
                 f"({REFERENCE_INSTANCES} instances, mean over batch sizes 1/5/10): "
                 "compare the shapes, not absolute values: machines and instance counts differ")
    _figure_legend(fig, list(axes), ncols=4)
    return fig


# --------------------------------------------------------------------------- the study


def plot_reference(ref: Sequence[ReferenceRow]) -> Figure:
    """The study's published times (2560 instances): one panel per study setting."""
    layout = [["pool", "serve", None], ["k8s_pool", "k8s_serve_ray", "k8s_serve_default"]]
    fig = Figure(figsize=(14, 8), layout="constrained")
    axes = fig.subplots(2, 3, sharey=True)
    batches = sorted({r.batch_size for r in ref})
    serial = reference_serial(ref)
    top = max(r.seconds for r in ref) * 1.05
    for row, names in enumerate(layout):
        for col, setting in enumerate(names):
            ax = axes[row, col]
            if setting is None:
                continue
            rows = [r for r in ref if r.setting == setting]
            for i, batch in enumerate(batches):
                pts = sorted((r for r in rows if r.batch_size == batch), key=lambda r: r.workers)
                ax.plot([r.workers for r in pts], [r.seconds for r in pts], color=_BATCH_COLORS[i],
                        marker=_BATCH_MARKERS[i], markersize=4, label=f"batch size {batch}", gid=REFERENCE_GID)
            ax.axhline(serial, color="black", linestyle="--", linewidth=1.2,
                       label=f"serial baseline ({serial:.0f} s)", gid=REFERENCE_GID)
            _log2_axis(ax, [r.workers for r in rows])
            ax.set_ylim(0, top)
            ax.set_title(REFERENCE_LABELS[setting].removeprefix("study "))
            ax.set_xlabel("workers (log$_2$ scale)")
            ax.set_ylabel("time to explain (s)")
            ax.tick_params(labelleft=True)
    fig.suptitle(f"Reference study (published): time to explain {REFERENCE_INSTANCES} Adult instances\n"
                 "one node = one 32-vCPU machine; 2 nodes = two on Kubernetes (56 usable vCPUs); "
                 "values read off the study's charts (mean + 1 sd)")
    _figure_legend(fig, [axes[0, 0]], into=axes[0, 2], title="the study's published times")
    return fig


# --------------------------------------------------------------------------- history


def _segments(points: Sequence[Any]) -> list[list[Any]]:
    """Consecutive runs of points with the same work (a line is not joined across a change)."""
    out: list[list[Any]] = []
    for point in points:
        if not out or out[-1][-1].work != point.work:
            out.append([])
        out[-1].append(point)
    return out


def _mark_work_changes(ax: Any, history: MachineHistory, suite: str, index: Mapping[str, int]) -> None:
    """A dotted vertical line where the suite's work (instances, nsamples) changes, labelled."""
    works: dict[str, set[Any]] = {}
    for point in history.points:
        if point.suite == suite:
            works.setdefault(point.run.run, set()).update(point.work)
    previous = None
    for run in history.runs:
        work = works.get(run.run)
        if work is None:
            continue
        if previous is not None and work != previous:
            x = index[run.run] - 0.5
            ax.axvline(x, color="0.4", linestyle=":", linewidth=1.2)
            instances = " / ".join(str(n) for n in sorted({n for n, _ in work}))
            ax.text(x - 0.08, 0.97, f"work changed:\n{instances} instances", color="0.3", fontsize=8,
                    transform=ax.get_xaxis_transform(), va="top", ha="right",
                    bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8))
        previous = work


#: the most steps of one run labelled one by one in a history panel (more are summed up)
MAX_STEP_LINES = 3


def steps_label(marked: Sequence[tuple[Step, str]]) -> str:
    """The label of one run's steps (each with its family), top to bottom: one line each, or,
    past :data:`MAX_STEP_LINES`, one line per direction with the count and the range of ratios."""
    if len(marked) <= MAX_STEP_LINES:
        return "\n".join(f"{step.label} ({family})" for step, family in marked)
    lines = []
    for word, slower in (("faster", False), ("slower", True)):
        factors = sorted(max(s.ratio, 1 / s.ratio) for s, _ in marked if (s.ratio > 1) == slower)
        if factors:
            lines.append(f"{len(factors)} {word}: x{factors[0]:.2f}-x{factors[-1]:.2f}")
    return "\n".join(lines)


def plot_history(history: MachineHistory, steps: Sequence[Step]) -> Figure | None:
    """The trend of every benchmark family across the runs of one CPU model: one panel per suite
    (stacked), one line per family (median milliseconds per instance, log scale, each panel scaled
    to its families), the runs on the x axis (autosave number over commit). ``steps`` (those of
    this CPU model are used) are ringed in red with their label; a change of the suite's work
    (instances, nsamples) is a dotted vertical line, and lines are not joined across it.
    ``None`` without families."""
    suites = history.suites()
    if not suites:
        return None
    index = {run.run: i for i, run in enumerate(history.runs)}
    mine = {(s.family, s.run): s for s in steps if s.cpu == history.cpu}
    fig = Figure(figsize=(max(9.0, 0.5 * len(history.runs) + 5.0), 3.0 * len(suites) + 1.2), layout="constrained")
    axes = fig.subplots(len(suites), 1, squeeze=False)[:, 0]
    step_labels: list[list[Any]] = []  # per panel, left to right
    for ax, suite in zip(axes, suites):
        families = history.families(suite)
        values = []
        # the steps of one run, one label for all of them: per-family labels at one x overlap
        steps_at: dict[int, list[tuple[float, str]]] = {}
        for fi, family in enumerate(families):
            color = _FAMILY_COLORS[fi % len(_FAMILY_COLORS)]
            series = history.series(family)
            for si, seg in enumerate(_segments(series)):
                ax.plot([index[p.run.run] for p in seg], [p.ms_per_instance for p in seg], color=color,
                        marker="o", markersize=3.5, linewidth=1.3,
                        label=family.removeprefix(f"{suite} ") if si == 0 else None)
            for point in series:
                values.append(point.ms_per_instance)
                step = mine.get((family, point.run.run))
                if step is None:
                    continue
                x = index[point.run.run]
                ax.plot([x], [point.ms_per_instance], marker="o", markersize=13, markerfacecolor="none",
                        markeredgecolor="red", markeredgewidth=1.8, linestyle="none")
                steps_at.setdefault(x, []).append((point.ms_per_instance,
                                                   (step, family.removeprefix(f"{suite} "))))
        labels = []
        for x, marked in sorted(steps_at.items()):
            marked.sort(reverse=True)  # top to bottom, as the rings
            # runs in the right third are labelled to their left, inside the axes; more than
            # MAX_STEP_LINES steps in one run are summed up (docs/report/history.md lists each)
            right_side = x < 2 * len(history.runs) / 3
            labels.append(ax.annotate(
                steps_label([step for _, step in marked]), (x, marked[0][0]),
                xytext=(9 if right_side else -9, -4), textcoords="offset points", color="red",
                fontsize=8, fontweight="bold", va="top", ha="left" if right_side else "right",
                bbox=dict(boxstyle="round,pad=0.15", facecolor="white", edgecolor="none", alpha=0.8)))
        step_labels.append(labels)
        _mark_work_changes(ax, history, suite, index)
        lo, hi = min(values), max(values)
        ax.set_yscale("log")
        ax.set_ylim(lo / 1.3, hi * 1.3)
        ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1, 2, 5) if hi / lo > 6 else (1, 1.5, 2, 3, 5, 7)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xticks(range(len(history.runs)))
        ax.set_xticklabels([run.tick for run in history.runs], fontsize=7.5)
        ax.set_xlim(-0.6, len(history.runs) - 0.4)
        ax.grid(True, which="major", alpha=0.3)
        ax.set_title(suite, loc="left", fontweight="bold")
        ax.set_ylabel("median ms per instance\n(log scale)")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.005, 1.0), frameon=False,
                  title="family", title_fontsize=8)
    fig.suptitle(f"History on {history.cpu}: every benchmark family, run by run\n"
                 "(x: run number over commit; y: median of the family's median rounds)\n"
                 f"red rings: steps, median time x{STEP_FACTOR:g} or more either way from the run before, same work")
    separate_labels(fig, step_labels)
    return fig


#: half the size of a step's ring, in pixels, for :func:`separate_labels`
RING_PX = 9.0


def separate_labels(fig: Figure, groups: Sequence[Sequence[Any]], gap_px: float = 2.0,
                    max_shifts: int = 8) -> None:
    """Place labels (annotations with offsets in points) so that none of a group overlaps an
    earlier one of its group, nor a ring of the points they label, as the figure lays them out
    (neighbouring runs' steps sit side by side): each keeps its place if it can, else goes to the other side of its point, else the
    least number of its own heights down or up (either side), inside its axes."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    if not any(groups):
        return
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    renderer = canvas.get_renderer()
    fig.draw(renderer)  # the constrained layout places the axes
    points_per_px = 72.0 / fig.dpi
    flipped = {"left": "right", "right": "left", "center": "center"}
    for labels in groups:
        # the rings the labels point at are in the way too
        placed: list[Any] = []
        for label in labels:
            x, y = label.axes.transData.transform(label.xy)
            placed.append(Bbox.from_extents(x - RING_PX, y - RING_PX, x + RING_PX, y + RING_PX))
        for label in labels:
            (dx, dy), ha = label.xyann, label.get_ha()
            frame = label.axes.get_window_extent(renderer)
            step = (label.get_window_extent(renderer).height + gap_px) * points_per_px
            tries = [(0, side) for side in (1, -1)] + [(sign * k, side) for k in range(1, max_shifts + 1)
                                                      for side in (1, -1) for sign in (-1, 1)]
            for shift, side in tries:
                label.xyann = (dx * side, dy + shift * step)
                label.set_ha(ha if side == 1 else flipped[ha])
                box = label.get_window_extent(renderer)
                inside = frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1
                if inside and not any(box.overlaps(b) for b in placed):
                    break
            else:  # nowhere free: where it was
                label.xyann, box = (dx, dy), None
                label.set_ha(ha)
                box = label.get_window_extent(renderer)
            placed.append(box)
