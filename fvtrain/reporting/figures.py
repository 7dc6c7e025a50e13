"""Matplotlib figures written as PNG (headless, atomic).

Each public function saves one PNG; the ``_draw_*`` builder behind it returns the
:class:`~matplotlib.figure.Figure`, so tests can measure the drawn text (no two labels overlap).

Conventions every figure follows so that a reader can trust it at a glance:

- constrained layout (titles, tick labels, colour bars and legends get their own space);
- integer ticks on layer and head axes (a layer 2.5 does not exist);
- panels that compare share one colour scale and one colour bar;
- series get distinct (colour, linestyle, marker) triples, with no colour repeated up to 60 series;
- intervals, where given, are 95% ``[lo, hi]`` pairs mirroring the values and drawn as asymmetric
  error bars (bands for the many-series layer sweep). ``None`` or a missing entry draws none.
"""

from __future__ import annotations

import math
import os
import tempfile
import textwrap
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from matplotlib.ticker import MaxNLocator

Interval = Sequence[float] | None
LINESTYLES = ("-", "--", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X")


def _figure(width: float, height: float, rows: int = 1, cols: int = 1):
    """A headless figure and its ``rows x cols`` axes array.

    No pyplot: no global figure registry to leak into and no backend switch imposed on the caller;
    the Agg canvas renders (for ``savefig`` and for tests that measure text extents)."""
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(rows, cols, squeeze=False)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


# -- shared pieces --------------------------------------------------------------------------------


def palette(n: int) -> list[tuple]:
    """``n`` distinct colours: tab10 up to 10, else tab20 (dark shades first), tab20b, tab20c.

    Colours repeat only past 60; :func:`series_styles` adds linestyles and markers on top."""
    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    t20 = colormaps["tab20"]
    colours = [t20(i) for i in range(0, 20, 2)] + [t20(i) for i in range(1, 20, 2)]
    colours += [colormaps[c](i) for c in ("tab20b", "tab20c") for i in range(20)]
    return [colours[i % len(colours)] for i in range(n)]


def series_styles(n: int) -> list[dict]:
    """Line styles for ``n`` series, no two alike in (colour, linestyle, marker).

    Each block of 10 series changes linestyle and marker together, so similar hues of tab20 (a
    dark and a light shade) also differ in style. The (linestyle, marker) pairs cycle over 28
    combinations and colours over 60, so triples are unique up to 840 series."""
    colours = palette(n)
    out = []
    for i in range(n):
        block = i // 10
        out.append({"color": colours[i], "linestyle": LINESTYLES[block % len(LINESTYLES)],
                    "marker": MARKERS[block % len(MARKERS)]})
    return out


def _yerr(values: Sequence[float], intervals: Sequence[Interval]) -> list[list[float]] | None:
    """Asymmetric ``yerr`` (``[[below...], [above...]]``) from ``[lo, hi]`` intervals; None if none."""
    below, above, any_ci = [], [], False
    for v, ci in zip(values, intervals):
        if ci is None or v is None or (isinstance(v, float) and math.isnan(v)) or len(ci) != 2 \
                or any(c is None for c in ci):
            below.append(0.0)
            above.append(0.0)
            continue
        any_ci = True
        # max(0, .): an interval that misses its point (e.g. a percentile band) still draws.
        below.append(max(0.0, float(v) - float(ci[0])))
        above.append(max(0.0, float(ci[1]) - float(v)))
    return [below, above] if any_ci else None


def _legend_outside(ax, n: int, fontsize: float = 8) -> None:
    """A legend to the right of the axes (never over the data), in as many columns as it needs."""
    if n:
        ax.legend(fontsize=fontsize, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0,
                  ncol=_legend_columns(n), frameon=False)


def _legend_columns(n: int) -> int:
    """Legend columns for ``n`` entries (18 a column); figures widen by about 1.7 in per column."""
    return max(1, math.ceil(n / 18)) if n else 0


def _wrap(text: str, width: int) -> str:
    """Long titles wrap instead of running into the neighbouring panel."""
    return textwrap.fill(str(text), width=width, break_long_words=True, break_on_hyphens=False)


def _nan(v) -> float:
    return float("nan") if v is None else float(v)


# -- AIE heatmaps ---------------------------------------------------------------------------------


def _draw_aie_heatmaps(aies: Mapping[str, torch.Tensor],
                       top: Mapping[str, Sequence] | None = None) -> Figure:
    names = list(aies)
    n = len(names)
    cols = min(n, 4 if n <= 16 else 6 if n <= 48 else 8)
    rows = math.ceil(n / cols)
    fig, axes = _figure(3.0 * cols + 1.0, 2.9 * rows + 0.6, rows, cols)
    arrays = {name: aies[name].detach().float().cpu().numpy() for name in names}
    # One symmetric scale for every panel: colours mean the same AIE in each relation.
    vmax = max((float(abs(a).max()) for a in arrays.values() if a.size), default=0.0) or 1e-12
    im = None
    for i, (ax, name) in enumerate(zip(axes.flat, names)):
        im = ax.imshow(arrays[name], aspect="auto", cmap="RdBu_r", vmin=-vmax, vmax=vmax,
                       interpolation="nearest")
        for l, h, *_ in (top or {}).get(name, []):
            ax.add_patch(Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, lw=1.2, ec="black"))
        ax.set_title(_wrap(name, 30), fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.tick_params(labelsize=7)
        # Axis names once per column / row: the bottom panel of a column, the first of a row.
        if i + cols >= n:
            ax.set_xlabel("head", fontsize=8)
        if i % cols == 0:
            ax.set_ylabel("layer", fontsize=8)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    if im is not None:
        cb = fig.colorbar(im, ax=list(axes.flat)[:n], shrink=min(1.0, 0.4 + 0.6 / rows), aspect=30)
        cb.set_label("AIE (shared scale)", fontsize=8)
        cb.ax.tick_params(labelsize=7)
    fig.suptitle("Average indirect effect (AIE) per attention head; boxes: the FV's heads")
    return fig


def aie_heatmaps(aies: Mapping[str, torch.Tensor], path: str | Path,
                 top: Mapping[str, Sequence] | None = None) -> Path:
    """One layers x heads heatmap per relation on one colour scale; the top-k heads are outlined."""
    return _save(_draw_aie_heatmaps(aies, top), path)


# -- layer sweep ----------------------------------------------------------------------------------


def _draw_layer_sweep(sweeps: Mapping[str, Sequence[float]], baselines: Mapping[str, float] | None = None,
                      layer: int | None = None, ylabel: str = "zero-shot accuracy",
                      intervals: Mapping[str, Sequence[Interval]] | None = None) -> Figure:
    ncol = _legend_columns(len(sweeps) + (layer is not None))
    fig, axes = _figure(6.5 + 1.7 * ncol, 4.2)
    ax = axes[0, 0]
    for (name, ys), style in zip(sweeps.items(), series_styles(len(sweeps))):
        xs = list(range(len(ys)))
        ys = [_nan(y) for y in ys]
        ax.plot(xs, ys, ms=3.5, lw=1.2, label=name, **style)
        cis = (intervals or {}).get(name)
        if cis:
            # A band, not error bars: a dozen series of whiskers would hide the curves.
            lo = [_nan(c[0]) if c else float("nan") for c in cis]
            hi = [_nan(c[1]) if c else float("nan") for c in cis]
            ax.fill_between(xs[:len(lo)], lo, hi, color=style["color"], alpha=0.12, lw=0)
        if baselines and name in baselines:
            ax.axhline(baselines[name], ls=":", color=style["color"], lw=0.8, alpha=0.7)
    if layer is not None:
        ax.axvline(layer, color="grey", ls="--", lw=1, label=f"layer {layer}")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("injection layer")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    _legend_outside(ax, len(sweeps) + (layer is not None), fontsize=7)
    ax.set_title("Function vector injected at each layer (dotted: no vector)", fontsize=10)
    return fig


def layer_sweep_curves(sweeps: Mapping[str, Sequence[float]], path: str | Path,
                       baselines: Mapping[str, float] | None = None, layer: int | None = None,
                       ylabel: str = "zero-shot accuracy",
                       intervals: Mapping[str, Sequence[Interval]] | None = None) -> Path:
    """Accuracy per injection layer, one curve per relation; ``intervals[name][layer] = [lo, hi]``
    draws a band, ``baselines[name]`` a dotted line (no vector)."""
    return _save(_draw_layer_sweep(sweeps, baselines, layer, ylabel, intervals), path)


# -- grouped bars ---------------------------------------------------------------------------------


def _draw_bars(values: Mapping[str, Mapping[str, float]], label: Callable[[str], str] = str,
               intervals: Mapping[str, Mapping[str, Interval]] | None = None):
    """``values[group][series]`` as side-by-side bars per group; missing values are gaps.

    Returns ``(fig, ax, number of series)``; ``intervals[group][series] = [lo, hi]`` adds asymmetric error bars."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    k = max(1, len(series))
    width = 0.8 / k
    # Each group gets room for its bars and a vertical label; very many groups cap the width.
    slot = max(0.22, 0.12 * k)
    ncol = _legend_columns(len(series))
    fig, axes = _figure(min(40.0, max(6.0, slot * len(groups) + 1.5 + 1.5 * ncol)), 4.5)
    ax = axes[0, 0]
    colours = palette(len(series))
    for j, s in enumerate(series):
        xs = [i + (j - (k - 1) / 2) * width for i in range(len(groups))]
        ys = [_nan(values[g].get(s)) for g in groups]
        cis = [((intervals or {}).get(g) or {}).get(s) for g in groups]
        yerr = _yerr(ys, cis)
        ax.bar(xs, ys, width, label=label(s), color=colours[j], yerr=yerr,
               error_kw={"elinewidth": 0.8, "capsize": 1.5, "ecolor": "black"} if yerr else None)
    ax.set_xticks(range(len(groups)))
    fs = 8 if slot * len(groups) + 3 <= 40 else max(4.0, 8 * 40 / (slot * len(groups) + 3))
    # Vertical labels: rotated at 45 degrees, long names run under their neighbours.
    ax.set_xticklabels([str(g) for g in groups], rotation=90, fontsize=fs)
    ax.set_xlim(-0.6, len(groups) - 0.4)
    return fig, ax, len(series)


def _draw_grouped_bars(values: Mapping[str, Mapping[str, float]], ylabel: str, title: str,
                       intervals: Mapping[str, Mapping[str, Interval]] | None = None) -> Figure:
    fig, ax, n = _draw_bars(values, str, intervals)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(_wrap(title, 90), fontsize=10)
    _legend_outside(ax, n)
    return fig


def grouped_bars(values: Mapping[str, Mapping[str, float]], path: str | Path, ylabel: str,
                 title: str, intervals: Mapping[str, Mapping[str, Interval]] | None = None) -> Path:
    """``values[group][series]`` as grouped bars (e.g. relation x method accuracy) in [0, 1];
    ``intervals[group][series] = [lo, hi]`` (95%) adds error bars."""
    return _save(_draw_grouped_bars(values, ylabel, title, intervals), path)


def _draw_correlation_bars(values: Mapping[str, Mapping[str, float]], title: str,
                           ylabel: str = "Spearman correlation",
                           intervals: Mapping[str, Mapping[str, Interval]] | None = None) -> Figure:
    fig, ax, n = _draw_bars(values, str.upper, intervals)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-1.02, 1.02)
    ax.set_title(_wrap(title, 90), fontsize=10)
    _legend_outside(ax, n)
    return fig


def correlation_bars(values: Mapping[str, Mapping[str, float]], path: str | Path, title: str,
                     ylabel: str = "Spearman correlation",
                     intervals: Mapping[str, Mapping[str, Interval]] | None = None) -> Path:
    """``values[group][series]`` correlations in [-1, 1] as grouped bars (e.g. subtype x FV/FFV);
    ``intervals[group][series] = [lo, hi]`` adds error bars."""
    return _save(_draw_correlation_bars(values, title, ylabel, intervals), path)


def _draw_rank_bars(ranks: Mapping[str, Mapping[str, int]], title: str) -> Figure:
    fig, ax, n = _draw_bars(ranks, str)
    ax.set_yscale("log")
    ax.set_ylabel("best rank (log scale)")
    ax.set_title(_wrap(title, 90), fontsize=10)
    _legend_outside(ax, n)
    return fig


def rank_bars(ranks: Mapping[str, Mapping[str, int]], path: str | Path, title: str) -> Path:
    """``ranks[relation][series]`` (1 = best) as grouped bars on a log axis, lower is better."""
    return _save(_draw_rank_bars(ranks, title), path)


# -- scatter and sweep lines ----------------------------------------------------------------------


def _draw_alignment_scatter(panels: Sequence[Mapping], cols: int | None = None) -> Figure:
    n = len(panels)
    cols = cols or min(2, n)
    rows = math.ceil(n / cols)
    fig, axes = _figure(4.6 * cols, 3.9 * rows, rows, cols)
    # One colour per group across every panel.
    every = sorted({str(g) for p in panels for g in (p.get("groups") or [])})
    colour = dict(zip(every, palette(len(every))))
    for ax, p in zip(axes.flat, panels):
        groups = [str(g) for g in (p.get("groups") or [""] * len(p["x"]))]
        labels = sorted(set(groups))
        small = len(p["x"]) > 500
        for g in labels:
            xs = [x for x, gg in zip(p["x"], groups) if gg == g]
            ys = [y for y, gg in zip(p["y"], groups) if gg == g]
            ax.scatter(xs, ys, s=4 if small else 14, alpha=0.35 if small else 0.75,
                       color=colour.get(g), label=g if g and len(labels) <= 8 else None)
        ax.set_title("\n".join(_wrap(line, 48) for line in str(p.get("title", "")).split("\n")),
                     fontsize=9)
        ax.set_xlabel(p.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(p.get("ylabel", ""), fontsize=8)
        ax.tick_params(labelsize=8)
        if any(labels) and len(labels) <= 8:
            ax.legend(fontsize=7, markerscale=2)
    for ax in list(axes.flat)[n:]:
        ax.remove()
    fig.suptitle("Alignment with human judgments")
    return fig


def alignment_scatter(panels: Sequence[Mapping], path: str | Path, cols: int | None = None) -> Path:
    """Scatter panels (model similarity vs human rating), points coloured by ``groups``.

    Each panel: ``{"title", "x", "y", "groups", "xlabel", "ylabel"}``.
    """
    return _save(_draw_alignment_scatter(panels, cols), path)


def _draw_metric_lines(xs: Sequence, series: Mapping[str, Sequence[float]], xlabel: str, ylabel: str,
                       title: str, intervals: Mapping[str, Sequence[Interval]] | None = None) -> Figure:
    ncol = _legend_columns(len(series))
    fig, axes = _figure(6.5 + 1.7 * ncol, 4.2)
    ax = axes[0, 0]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = list(xs) if numeric else list(range(len(xs)))
    for (name, ys), style in zip(series.items(), series_styles(len(series))):
        ys = [_nan(y) for y in ys]
        cis = (intervals or {}).get(name)
        yerr = _yerr(ys, cis) if cis else None
        ax.errorbar(pos, ys, yerr=yerr, ms=4, lw=1.2, label=name, capsize=2 if yerr else 0,
                    elinewidth=0.8, **style)
    if numeric and all(isinstance(x, int) for x in xs):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not numeric:
        ax.set_xticks(pos)
        ax.set_xticklabels([str(x) for x in xs], rotation=90, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(_wrap(title, 80), fontsize=10)
    _legend_outside(ax, len(series), fontsize=7)
    return fig


def metric_lines(xs: Sequence, series: Mapping[str, Sequence[float]], path: str | Path, xlabel: str,
                 ylabel: str, title: str, intervals: Mapping[str, Sequence[Interval]] | None = None) -> Path:
    """Metrics across a sweep: one line per metric over the swept values ``xs``;
    ``intervals[name][i] = [lo, hi]`` adds error bars."""
    return _save(_draw_metric_lines(xs, series, xlabel, ylabel, title, intervals), path)
