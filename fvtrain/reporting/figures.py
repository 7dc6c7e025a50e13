"""Matplotlib figures written as PNG (headless, atomic)."""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def aie_heatmaps(aies: Mapping[str, torch.Tensor], path: str | Path,
                 top: Mapping[str, Sequence] | None = None) -> Path:
    """One layers x heads heatmap per relation; the top-k heads are outlined."""
    names = list(aies)
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.6 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        a = aies[name].float().numpy()
        im = ax.imshow(a, aspect="auto", cmap="RdBu_r", vmin=-abs(a).max(), vmax=abs(a).max())
        for l, h, *_ in (top or {}).get(name, []):
            ax.add_patch(plt.Rectangle((h - 0.5, l - 0.5), 1, 1, fill=False, lw=1.2, ec="black"))
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.suptitle("Average indirect effect (AIE) per attention head")
    return _save(fig, path)


def layer_sweep_curves(sweeps: Mapping[str, Sequence[float]], path: str | Path,
                       baselines: Mapping[str, float] | None = None, layer: int | None = None,
                       ylabel: str = "zero-shot accuracy") -> Path:
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, ys in sweeps.items():
        line, = ax.plot(range(len(ys)), ys, marker="o", ms=3, label=name)
        if baselines and name in baselines:
            ax.axhline(baselines[name], ls=":", color=line.get_color(), lw=1)
    if layer is not None:
        ax.axvline(layer, color="grey", ls="--", lw=1, label=f"layer {layer}")
    ax.set_xlabel("injection layer")
    ax.set_ylabel(ylabel)
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("Function vector injected at each layer (dotted: no vector)")
    return _save(fig, path)


def grouped_bars(values: Mapping[str, Mapping[str, float]], path: str | Path, ylabel: str,
                 title: str) -> Path:
    """``values[group][series]`` as grouped bars (e.g. relation x method accuracy)."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(18, max(6, 0.6 * len(groups) * max(1, len(series)) / 2)), 4))
    for j, s in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [values[g].get(s, float("nan")) for g in groups], width, label=s)
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def alignment_scatter(panels: Sequence[Mapping], path: str | Path, cols: int | None = None) -> Path:
    """Scatter panels (model similarity vs human rating), points coloured by ``groups``.

    Each panel: ``{"title", "x", "y", "groups", "xlabel", "ylabel"}``.
    """
    n = len(panels)
    cols = cols or min(2, n)
    rows = math.ceil(n / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.9 * rows), squeeze=False)
    # One colour per group across every panel.
    every = sorted({str(g) for p in panels for g in (p.get("groups") or [])})
    cmap = plt.get_cmap("tab10")
    colour = {g: cmap(i % 10) for i, g in enumerate(every)}
    for ax, p in zip(axes.flat, panels):
        groups = [str(g) for g in (p.get("groups") or [""] * len(p["x"]))]
        labels = sorted(set(groups))
        small = len(p["x"]) > 500
        for g in labels:
            xs = [x for x, gg in zip(p["x"], groups) if gg == g]
            ys = [y for y, gg in zip(p["y"], groups) if gg == g]
            ax.scatter(xs, ys, s=4 if small else 14, alpha=0.35 if small else 0.75,
                       color=colour.get(g), label=g if g and len(labels) <= 8 else None)
        ax.set_title(p.get("title", ""), fontsize=9)
        ax.set_xlabel(p.get("xlabel", ""), fontsize=8)
        ax.set_ylabel(p.get("ylabel", ""), fontsize=8)
        if any(labels) and len(labels) <= 8:
            ax.legend(fontsize=7, markerscale=2)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Alignment with human judgments")
    fig.tight_layout()
    return _save(fig, path)


def _grouped_bars(values: Mapping[str, Mapping[str, float]], label):
    """``values[group][series]`` as side-by-side bars per group; missing values are gaps."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in values.values() for s in g))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(min(18, max(6, 0.35 * len(groups) * max(1, len(series)))), 4))
    for j, s in enumerate(series):
        xs = [i + (j - (len(series) - 1) / 2) * width for i in range(len(groups))]
        ax.bar(xs, [values[g].get(s, float("nan")) for g in groups], width, label=label(s))
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=45, ha="right", fontsize=8)
    return fig, ax


def correlation_bars(values: Mapping[str, Mapping[str, float]], path: str | Path, title: str,
                     ylabel: str = "Spearman correlation") -> Path:
    """``values[group][series]`` correlations in [-1, 1] as grouped bars (e.g. subtype x FV/FFV)."""
    fig, ax = _grouped_bars(values, str.upper)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_ylabel(ylabel)
    ax.set_ylim(-1.02, 1.02)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def rank_bars(ranks: Mapping[str, Mapping[str, int]], path: str | Path, title: str) -> Path:
    """``ranks[relation][series]`` (1 = best) as grouped bars on a log axis, lower is better."""
    fig, ax = _grouped_bars(ranks, str)
    ax.set_yscale("log")
    ax.set_ylabel("best rank (log scale)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)


def metric_lines(xs: Sequence, series: Mapping[str, Sequence[float]], path: str | Path, xlabel: str,
                 ylabel: str, title: str) -> Path:
    """Metrics across a sweep: one line per metric over the swept values ``xs``."""
    fig, ax = plt.subplots(figsize=(7, 4))
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in xs)
    pos = list(xs) if numeric else list(range(len(xs)))
    for name, ys in series.items():
        ax.plot(pos, [float("nan") if y is None else y for y in ys], marker="o", ms=4, label=name)
    if numeric and all(isinstance(x, int) for x in xs):
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    if not numeric:
        ax.set_xticks(pos)
        ax.set_xticklabels([str(x) for x in xs], rotation=30, ha="right", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=7)
    return _save(fig, path)
