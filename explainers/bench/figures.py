"""The report's figures: time and speedup against workers, and the reference study's.

Plain :class:`matplotlib.figure.Figure` objects, never pyplot: ``savefig`` renders them with
the Agg canvas, no display is needed and the global matplotlib backend of the caller (e.g. a
notebook) is left alone. Each function takes the report's records
(:class:`explainers.bench.results.Record`) and returns a figure, or None if it has nothing
to draw.
"""
from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from explainers.bench.reference import (
    REFERENCE_INSTANCES,
    REFERENCE_LABELS,
    REFERENCE_SETTINGS,
    ReferenceRow,
    reference_serial,
    reference_speedups,
)
from explainers.bench.results import DEFAULT_TITLE, PANELS, Record

__all__ = ["PANEL_TITLES", "REFERENCE_FOR_PANEL", "plot_time_vs_workers", "plot_speedup", "plot_reference",
           "plot_speedup_vs_reference"]

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

_BATCH_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown")
_BATCH_MARKERS = ("o", "s", "^", "D", "v", "P")
_SETTING_STYLES = ("-", ":", "-.", (0, (5, 1)))
_REF_STYLES = {
    "pool": ("0.35", "--"),
    "serve": ("0.35", "--"),
    "k8s_pool": ("0.55", ":"),
    "k8s_serve_ray": ("0.55", ":"),
    "k8s_serve_default": ("0.55", ":"),
}


def _series(records: Sequence[Record], panel: str, setting: Any, batch: int | None) -> list[Record]:
    """The points of one line: a panel's records of one setting and batch size, by workers."""
    return sorted((r for r in records if r.panel == panel and r.setting == setting
                   and r.batch_size == batch), key=lambda r: r.workers)


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
                   into: Any = None) -> None:
    """One legend for all panels (labels deduplicated): below the panels, or in axes ``into``."""
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
        fit = int(fig.get_figwidth() * 11 // (max(map(len, labels)) + 6))
        fig.legend(handles, labels, loc="outside lower center",
                   ncols=max(1, min(ncols, fit, len(labels))), frameon=False, title=title)


def _spread_note(records: Sequence[Record]) -> str:
    rounds = sorted({r.rounds for r in records})
    n = f"{rounds[0]} rounds" if len(rounds) == 1 else f"{rounds[0]}-{rounds[-1]} rounds"
    return f"points: mean of {n}; error bars: fastest to slowest round"


def _batch_styles(records: Sequence[Record]) -> dict[int, tuple[str, str]]:
    batches = sorted({r.batch_size for r in records if r.batch_size is not None})
    return {b: (_BATCH_COLORS[i % len(_BATCH_COLORS)], _BATCH_MARKERS[i % len(_BATCH_MARKERS)])
            for i, b in enumerate(batches)}


def _setting_labels(settings: Sequence[tuple[str, int, int]]) -> dict[tuple[str, int, int], str]:
    """Label each setting by the parts that differ between the settings ('' if only one)."""
    if len(settings) < 2:
        return {s: "" for s in settings}
    varying = [i for i in range(3) if len({s[i] for s in settings}) > 1]
    fmt = (lambda v: v, lambda v: f"{v} instances", lambda v: f"nsamples {v}")
    return {s: ", ".join(fmt[i](s[i]) for i in varying) for s in settings}


def _describe(records: Sequence[Record]) -> str:
    """Title part naming instance count, nsamples and cluster(s) of the records."""
    inst = sorted({r.n_instances for r in records})
    ns = sorted({r.nsamples for r in records})
    clusters = sorted({r.cluster.label() for r in records})
    return (f"{' / '.join(map(str, inst))} instances, nsamples {' / '.join(map(str, ns))}; "
            f"{' / '.join(clusters)}")


def _grid(n: int) -> tuple[int, int]:
    return (2, 2) if n == 4 else (1, n)


def plot_time_vs_workers(records: Sequence[Record], *, title: str = DEFAULT_TITLE) -> Figure | None:
    """Time to explain against workers: one panel per backend, one line per batch size.

    Points are the mean over rounds, error bars span the fastest to the slowest round, the
    dashed line is the serial baseline. ``None`` if there is no non-serial record.
    """
    panels = [p for p in PANELS if any(r.panel == p for r in records)]
    if not panels:
        return None
    settings = sorted({r.setting for r in records})
    slabel = _setting_labels(settings)
    styles = _batch_styles(records)
    nrows, ncols = _grid(len(panels))
    fig = Figure(figsize=(5.2 * ncols, 3.9 * nrows + 1.0), layout="constrained")
    axes = fig.subplots(nrows, ncols, sharey=True, squeeze=False).ravel()
    all_workers = [r.workers for r in records if r.workers and r.panel != "serial"]
    top = max(max(r.max for r in records), max(r.mean for r in records)) * 1.06
    for ax, panel in zip(axes, panels):
        for si, setting in enumerate(settings):
            ls = _SETTING_STYLES[si % len(_SETTING_STYLES)]
            suffix = f" ({slabel[setting]})" if slabel[setting] else ""
            for batch, (color, marker) in styles.items():
                pts = _series(records, panel, setting, batch)
                if not pts:
                    continue
                x = [r.workers for r in pts]
                y = [r.mean for r in pts]
                err = [[r.mean - r.min for r in pts], [r.max - r.mean for r in pts]]
                ax.errorbar(x, y, yerr=err, color=color, marker=marker, linestyle=ls, capsize=3,
                            markersize=5, label=f"batch size {batch}{suffix}")
            for r in records:
                if r.panel == "serial" and r.setting == setting:
                    ax.axhline(r.mean, color="black", linestyle="--", linewidth=1.2,
                               alpha=1.0 - 0.35 * si, label=f"serial baseline, no Ray{suffix}")
        ax.set_title(PANEL_TITLES[panel])
        _log2_axis(ax, all_workers)
        ax.set_ylim(0, top)
        ax.set_xlabel("workers (log$_2$ scale)")
        ax.set_ylabel("time to explain (s)")
        ax.tick_params(labelleft=True)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
    fig.suptitle(f"{title}: time to explain against workers\n{_describe(records)}")
    _figure_legend(fig, axes[: len(panels)],
                   title=_spread_note([r for r in records if r.panel != "serial"]))
    return fig


def plot_speedup(records: Sequence[Record], *, title: str = DEFAULT_TITLE) -> Figure | None:
    """Speedup (top row) and parallel efficiency (bottom row) against workers, ideal lines dashed.

    Speedup = serial mean / mean (serial baseline of the same session), efficiency =
    speedup / workers. ``None`` if no record has a speedup.
    """
    recs = [r for r in records if r.panel != "serial" and r.speedup is not None and r.workers]
    panels = [p for p in PANELS if any(r.panel == p for r in recs)]
    if not panels:
        return None
    settings = sorted({r.setting for r in recs})
    slabel = _setting_labels(settings)
    styles = _batch_styles(recs)
    workers = sorted({r.workers for r in recs})
    fig = Figure(figsize=(4.6 * len(panels), 7.6), layout="constrained")
    axes = fig.subplots(2, len(panels), sharey="row", squeeze=False)
    top = max(max(workers), max(r.speedup for r in recs))
    for col, panel in enumerate(panels):
        ax_s, ax_e = axes[0, col], axes[1, col]
        ax_s.plot(workers, workers, color="0.35", linestyle="--", linewidth=1.2, label="ideal")
        ax_e.axhline(1.0, color="0.35", linestyle="--", linewidth=1.2, label="ideal")
        for si, setting in enumerate(settings):
            ls = _SETTING_STYLES[si % len(_SETTING_STYLES)]
            suffix = f" ({slabel[setting]})" if slabel[setting] else ""
            for batch, (color, marker) in styles.items():
                pts = _series(recs, panel, setting, batch)
                if not pts:
                    continue
                x = [r.workers for r in pts]
                kw = dict(color=color, marker=marker, linestyle=ls, markersize=5,
                          label=f"batch size {batch}{suffix}")
                ax_s.plot(x, [r.speedup for r in pts], **kw)
                ax_e.plot(x, [r.efficiency if r.efficiency is not None else r.speedup / r.workers
                              for r in pts], **kw)
        ax_s.set_title(PANEL_TITLES[panel])
        for ax in (ax_s, ax_e):
            _log2_axis(ax, workers)
            ax.set_xlabel("workers (log$_2$ scale)")
            ax.tick_params(labelleft=True)
        ax_s.set_ylim(0, top * 1.1)
        ax_e.set_ylim(0, max(1.15, max(r.efficiency or 0 for r in recs) * 1.1))
        ax_s.set_ylabel("speedup (serial time / time)")
        ax_e.set_ylabel("parallel efficiency\n(speedup / workers)")
    fig.suptitle(f"{title}: speedup and parallel efficiency against workers\n{_describe(recs)}")
    _figure_legend(fig, list(axes.ravel()))
    return fig


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
                ax.plot([r.workers for r in pts], [r.seconds for r in pts],
                        color=_BATCH_COLORS[i], marker=_BATCH_MARKERS[i], markersize=4,
                        label=f"batch size {batch}")
            ax.axhline(serial, color="black", linestyle="--", linewidth=1.2,
                       label=f"serial baseline ({serial:.0f} s)")
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


def plot_speedup_vs_reference(records: Sequence[Record], ref: Sequence[ReferenceRow], *,
                              title: str = DEFAULT_TITLE) -> Figure | None:
    """Our speedups (coloured, per batch size) beside the study's (grey, mean over batch sizes)."""
    recs = [r for r in records if r.panel != "serial" and r.speedup is not None and r.workers]
    panels = [p for p in PANELS if any(r.panel == p for r in recs)]
    if not panels:
        return None
    styles = _batch_styles(recs)
    settings = sorted({r.setting for r in recs})
    slabel = _setting_labels(settings)
    fig = Figure(figsize=(4.6 * len(panels), 5.0), layout="constrained")
    axes = fig.subplots(1, len(panels), sharey=True, squeeze=False)[0]
    ref_workers = sorted({r.workers for r in ref})
    workers = sorted({r.workers for r in recs} | set(ref_workers))
    speedups = [r.speedup for r in recs] + [s for st in REFERENCE_SETTINGS
                                            for _, s in reference_speedups(ref, st)]
    lo = 2.0 ** math.floor(math.log2(min(min(speedups), 1.0)))
    hi = 2.0 ** math.ceil(math.log2(max(max(speedups), max(workers))))
    for ax, panel in zip(axes, panels):
        for si, setting in enumerate(settings):
            suffix = f" ({slabel[setting]})" if slabel[setting] else ""
            for batch, (color, marker) in styles.items():
                pts = _series(recs, panel, setting, batch)
                if pts:
                    ax.plot([r.workers for r in pts], [r.speedup for r in pts], color=color,
                            marker=marker, markersize=5, zorder=3,
                            linestyle=_SETTING_STYLES[si % len(_SETTING_STYLES)],
                            label=f"this run, batch size {batch}{suffix}")
        ax.plot(workers, workers, color="0.35", linestyle="-", linewidth=0.8, alpha=0.6, label="ideal")
        for setting in REFERENCE_FOR_PANEL[panel]:
            color, ls = _REF_STYLES[setting]
            pts = reference_speedups(ref, setting)
            ax.plot([w for w, _ in pts], [s for _, s in pts], color=color, linestyle=ls,
                    marker=".", label=REFERENCE_LABELS[setting])
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
    fig.suptitle(f"{title}: speedup, this run ({_describe(recs)}) vs the reference study "
                 f"({REFERENCE_INSTANCES} instances, mean over batch sizes 1/5/10)\n"
                 "compare the shapes, not absolute values: machines and instance counts differ")
    _figure_legend(fig, list(axes), ncols=4)
    return fig

