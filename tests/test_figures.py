"""Every figure is drawn with realistic data and measured: no two text labels overlap (extents from
the renderer), layer and head ticks are integers, sweep series differ in (colour, linestyle, marker),
and intervals become error bars."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from helpers import is_png
from matplotlib.colors import to_rgba
from matplotlib.text import Text

from fvtrain.reporting import figures as F

RELATIONS = ["antonym", "synonym", "country_capital", "country_currency", "english_french", "english_german",
             "present_past", "singular_plural", "person_occupation", "landmark_country",
             "product_company", "adjective_v_verb_3", "lowercase_first_letter", "national_parks"]
METHODS = ["0-shot", "0-shot+FV", "0-shot+FFV", "ICL"]
SUBTYPES = ["1a Class-Inclusion: Taxonomic", "1b Class-Inclusion: Functional", "2a Part-Whole: Object:Component",
            "2h Part-Whole: Creature:Possession", "3a Similar: Synonymity", "3c Similar: Coordinates",
            "4a Contrast: Contradictory", "4h Contrast: Defective", "5a Attribute: Item:Attribute(noun:adjective)",
            "6a Non-Attribute: Item:Nonattribute", "7a Case Relations: Agent:Object",
            "8a Cause-Purpose: Cause:Effect", "9a Space-Time: Item:Location", "10a Reference: Sign:Significant"]


# -- the checker ----------------------------------------------------------------------------------


def _drawn_ticklabels(axis) -> list[Text]:
    """The tick labels the last draw showed: ticks inside the view interval, visible, non-empty."""
    lo, hi = sorted(axis.get_view_interval())
    tol = 1e-9 * max(1.0, abs(hi - lo))
    out = []
    for locs, get in ((axis.get_majorticklocs(), axis.get_major_ticks),
                      (axis.get_minorticklocs(), axis.get_minor_ticks)):
        for loc, tick in zip(locs, get(len(locs))):
            if lo - tol <= loc <= hi + tol:
                out += [t for t in (tick.label1, tick.label2) if t.get_visible() and t.get_text().strip()]
    return out


def drawn_texts(fig) -> list[Text]:
    """Every visible, non-empty text of ``fig`` after a draw: suptitle and figure texts, titles, axis
    labels, tick labels, offset texts, colour-bar labels and ticks, legend texts and titles."""
    fig.canvas.draw()
    texts = list(fig.texts)
    legends = list(fig.legends)
    for ax in fig.axes:
        texts += [ax.title, getattr(ax, "_left_title", None), getattr(ax, "_right_title", None)]
        for axis in (ax.xaxis, ax.yaxis):
            texts += [axis.label, axis.get_offset_text(), *_drawn_ticklabels(axis)]
        texts += list(ax.texts)
        if ax.get_legend() is not None:
            legends.append(ax.get_legend())
    for lg in legends:
        if lg.get_visible():
            texts += [*lg.get_texts(), lg.get_title()]
    return [t for t in texts if t is not None and t.get_visible() and t.get_text().strip()]


def text_overlaps(fig, tol: float = 0.5) -> list[tuple[str, str]]:
    """Pairs of drawn texts whose renderer extents intersect by more than ``tol`` pixels both ways."""
    texts = drawn_texts(fig)
    renderer = fig.canvas.get_renderer()
    boxes = [(t.get_text(), t.get_window_extent(renderer)) for t in texts]
    out = []
    for i, (a, ba) in enumerate(boxes):
        for b, bb in boxes[i + 1:]:
            w = min(ba.x1, bb.x1) - max(ba.x0, bb.x0)
            h = min(ba.y1, bb.y1) - max(ba.y0, bb.y0)
            if w > tol and h > tol:
                out.append((a, b))
    return out


def _number(label: Text) -> float:
    return float(label.get_text().replace("\u2212", "-"))


def fractional_ticks(axis) -> list[str]:
    """Drawn tick labels of ``axis`` that are not whole numbers (a layer 2.5 does not exist)."""
    return [t.get_text() for t in _drawn_ticklabels(axis) if not float(_number(t)).is_integer()]


# -- realistic data -------------------------------------------------------------------------------


def aie_data(n: int = 14, layers: int = 28, heads: int = 16):
    """AIEs of ``n`` relations; each relation's scale differs (the shared colour scale must cover all)."""
    gen = torch.Generator().manual_seed(0)
    names = [RELATIONS[i % len(RELATIONS)] + ("" if i < len(RELATIONS) else f"_{i}") for i in range(n)]
    aies = {name: torch.randn(layers, heads, generator=gen) * 0.004 * (1 + i) for i, name in enumerate(names)}
    top = {}
    for name, a in aies.items():
        idx = a.flatten().topk(10).indices
        top[name] = [[int(i) // heads, int(i) % heads, float(a.flatten()[i])] for i in idx]
    return aies, top


def sweep_data(n: int = 14, layers: int = 26):
    gen = torch.Generator().manual_seed(1)
    names = [RELATIONS[i % len(RELATIONS)] + ("" if i < len(RELATIONS) else f"_{i}") for i in range(n)]
    sweeps, ci, base = {}, {}, {}
    for name in names:
        peak = int(torch.randint(0, layers, (1,), generator=gen))
        ys = [max(0.0, min(1.0, 0.8 * math.exp(-((l - peak) / 4) ** 2) + 0.05 * float(torch.rand(1, generator=gen))))
              for l in range(layers)]
        sweeps[name] = ys
        ci[name] = [[max(0.0, y - 0.1), min(1.0, y + 0.1)] for y in ys]
        base[name] = 0.05 * float(torch.rand(1, generator=gen))
    return sweeps, base, ci


def bar_data(groups=RELATIONS + ["mean"], series=METHODS):
    gen = torch.Generator().manual_seed(2)
    values = {g: {s: float(torch.rand(1, generator=gen)) for s in series} for g in groups}
    ci = {g: {s: [max(0.0, v - 0.15), min(1.0, v + 0.1)] for s, v in row.items()} for g, row in values.items()}
    return values, ci


def scatter_panels():
    gen = torch.Generator().manual_seed(3)
    panels = []
    for title, n, ng in (("relation similarity FV", 300, 5), ("relation similarity FFV", 300, 5),
                         ("pair similarity FV", 1200, 12), ("pair similarity FFV", 1200, 12)):
        x = torch.rand(n, generator=gen).tolist()
        panels.append({"title": f"{title}\nrho=+0.31 r=+0.28 (n={n})", "x": x,
                       "y": [1 + 6 * v for v in torch.rand(n, generator=gen).tolist()],
                       "groups": [f"comparison_type_{i % ng}" for i in range(n)],
                       "xlabel": "cosine(vector(A:B), vector(C:D))", "ylabel": "human rating"})
    return panels


# (relations, layers, heads) of the heatmaps; (relations, layers) of the sweeps: GPT-J, the embedded
# Gemma 3 270M (an odd panel count), a tiny test model; default locators print 2.5 on 18 layers.
SHAPES = {"aie_heatmaps": (14, 28, 16), "aie_heatmaps_small": (13, 18, 4), "aie_heatmaps_tiny": (12, 4, 4),
          "layer_sweep_curves": (14, 26), "layer_sweep_curves_small": (12, 18)}


def drawings():
    """``(name, builder)`` for every public figure of :mod:`fvtrain.reporting.figures`, as a
    report draws it; each builder returns a Figure."""
    aies, top = aie_data()
    small_aies, small_top = aie_data(*SHAPES["aie_heatmaps_small"])
    tiny_aies, tiny_top = aie_data(*SHAPES["aie_heatmaps_tiny"])
    sweeps, base, sweep_ci = sweep_data()
    tiny_sweeps, tiny_base, _ = sweep_data(*SHAPES["layer_sweep_curves_small"])
    acc, acc_ci = bar_data()
    comp, comp_ci = bar_data(["open all", "open near", "open far", "MC all", "MC near", "MC far"],
                             ["none", "one_shot", "oracle", "uniform", "softmax", "top1", "affine"])
    corr, corr_ci = bar_data(SUBTYPES, ["fv", "ffv"])
    ranks = {r: {"FV": 1 + 37 * i, "FFV": 1 + 3 * i} for i, r in enumerate(RELATIONS)}
    layers = list(range(26))
    return [
        ("aie_heatmaps", lambda: F._draw_aie_heatmaps(aies, top)),
        ("aie_heatmaps_small", lambda: F._draw_aie_heatmaps(small_aies, small_top)),
        ("aie_heatmaps_tiny", lambda: F._draw_aie_heatmaps(tiny_aies, tiny_top)),
        ("layer_sweep_curves", lambda: F._draw_layer_sweep(sweeps, base, 9, intervals=sweep_ci)),
        ("layer_sweep_curves_small", lambda: F._draw_layer_sweep(tiny_sweeps, tiny_base, 3)),
        ("grouped_bars", lambda: F._draw_grouped_bars(acc, "test accuracy", "Accuracy per relation, every method",
                                                      acc_ci)),
        ("grouped_bars_composition", lambda: F._draw_grouped_bars(
            comp, "accuracy", "Analogies with composite vectors (affine; 118 basis vectors)", comp_ci)),
        ("correlation_bars", lambda: F._draw_correlation_bars(
            corr, "Spearman: log P(B | A, vector) vs gold prototypicality (SemEval-2012)", intervals=corr_ci)),
        ("rank_bars", lambda: F._draw_rank_bars(ranks, "Best rank of a relation word in the logit lens (1 = top)")),
        ("alignment_scatter", lambda: F._draw_alignment_scatter(scatter_panels())),
        ("metric_lines_numeric", lambda: F._draw_metric_lines(
            layers, {f"mean.zero_shot.{m}": sweeps[r] for m, r in zip(("none", "fv", "ffv", "icl"), RELATIONS)},
            "extract.layer", "value", "Headline metrics across the sweep")),
        ("metric_lines_jobs", lambda: F._draw_metric_lines(
            [f"extract.layer={i},train.lr=0.0{i}" for i in range(1, 7)],
            {f"methods.{m}.mc.all.acc": [0.1 * i + 0.05 * j for i in range(6)] for j, m in enumerate(["softmax", "affine"])},
            "job", "value", "Headline metrics across the sweep")),
    ]


# -- tests ----------------------------------------------------------------------------------------


def _draw(name):
    return dict(drawings())[name]()


@pytest.mark.parametrize("name", [n for n, _ in drawings()])
def test_no_two_text_labels_overlap(name):
    fig = _draw(name)
    texts = drawn_texts(fig)
    assert len(texts) > 10, [t.get_text() for t in texts]
    assert text_overlaps(fig) == []


@pytest.mark.parametrize("name", ["aie_heatmaps", "aie_heatmaps_small", "aie_heatmaps_tiny"])
def test_aie_heatmaps_integer_ticks_one_shared_scale(name):
    fig = _draw(name)
    fig.canvas.draw()
    panels = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(panels) == SHAPES[name][0] and len(bars) == 1
    for ax in panels:
        assert fractional_ticks(ax.xaxis) == [] and fractional_ticks(ax.yaxis) == []
        assert _drawn_ticklabels(ax.yaxis)
    # One symmetric scale: the largest |AIE| over every relation.
    aies = aie_data(*SHAPES[name])[0]
    vmax = max(float(a.abs().max()) for a in aies.values())
    for ax in panels:
        assert ax.images[0].get_clim() == pytest.approx((-vmax, vmax))


@pytest.mark.parametrize("name", ["layer_sweep_curves", "layer_sweep_curves_small"])
def test_layer_sweep_integer_layers_and_distinct_series(name):
    sweeps = sweep_data(*SHAPES[name])[0]
    fig = _draw(name)
    fig.canvas.draw()
    ax = fig.axes[0]
    assert fractional_ticks(ax.xaxis) == [] and len(_drawn_ticklabels(ax.xaxis)) >= 4
    lines = [ln for ln in ax.get_lines() if ln.get_label() in sweeps]
    assert len(lines) == len(sweeps) >= 12
    styles = {(to_rgba(ln.get_color()), ln.get_linestyle(), ln.get_marker()) for ln in lines}
    assert len(styles) == len(lines)
    assert len({to_rgba(ln.get_color()) for ln in lines}) == len(lines)  # no colour repeats either
    assert bool(ax.collections) == (name == "layer_sweep_curves")  # interval bands when given
    assert {t.get_text() for t in ax.get_legend().get_texts()} >= set(sweeps)


def test_series_styles_never_repeat():
    for n in (1, 10, 12, 20, 60, 118, 300):
        st = F.series_styles(n)
        assert len({(s["color"], s["linestyle"], s["marker"]) for s in st}) == n
    assert len(set(F.palette(60))) == 60


def test_bars_draw_asymmetric_error_bars_from_intervals():
    values = {"antonym": {"fv": 0.4, "ffv": 0.7}, "country_capital": {"fv": 0.2}}
    ci = {"antonym": {"fv": [0.3, 0.6], "ffv": [0.5, 0.75]}, "country_capital": {"fv": None}}
    fig = F._draw_grouped_bars(values, "accuracy", "t", ci)
    ax = fig.axes[0]
    bars = [c for c in ax.containers if hasattr(c, "errorbar")]
    segs = {}
    for c in bars:
        assert c.errorbar is not None
        for seg in c.errorbar.lines[2][0].get_segments():
            if len(seg) == 0 or any(math.isnan(float(v)) for v in seg.flatten()):
                continue  # the missing value's bar (a gap) has no whisker
            segs[round(float(seg[0][0]), 3)] = (round(float(seg[0][1]), 3), round(float(seg[1][1]), 3))
    assert sorted(segs.values()) == [(0.2, 0.2), (0.3, 0.6), (0.5, 0.75)]
    # Without intervals: no error bars, and the old call works unchanged.
    fig = F._draw_grouped_bars(values, "accuracy", "t")
    assert all(c.errorbar is None for c in fig.axes[0].containers)


def test_metric_lines_error_bars():
    fig = F._draw_metric_lines([1, 2, 3], {"acc": [0.2, 0.5, 0.4]}, "layer", "value", "t",
                               intervals={"acc": [[0.1, 0.3], None, [0.3, 0.6]]})
    (c,) = fig.axes[0].containers
    lo_hi = [(round(float(s[0][1]), 3), round(float(s[1][1]), 3)) for s in c.lines[2][0].get_segments()]
    assert lo_hi == [(0.1, 0.3), (0.5, 0.5), (0.3, 0.6)]


def test_public_functions_write_pngs(tmp_path: Path):
    aies, top = aie_data(3, 6, 4)
    sweeps, base, ci = sweep_data(3, 6)
    acc, acc_ci = bar_data(RELATIONS[:3], METHODS[:2])
    out = [F.aie_heatmaps(aies, tmp_path / "a.png", top),
           F.layer_sweep_curves(sweeps, tmp_path / "b.png", base, 2),
           F.layer_sweep_curves(sweeps, tmp_path / "b2.png", intervals=ci),
           F.grouped_bars(acc, tmp_path / "c.png", "accuracy", "title"),
           F.grouped_bars(acc, tmp_path / "c2.png", "accuracy", "title", intervals=acc_ci),
           F.correlation_bars(acc, tmp_path / "d.png", "title"),
           F.rank_bars({"a": {"FV": 3, "FFV": 1}}, tmp_path / "e.png", "title"),
           F.alignment_scatter(scatter_panels()[:1], tmp_path / "f.png"),
           F.metric_lines([1, 2], {"m": [0.1, 0.2]}, tmp_path / "g.png", "x", "y", "t")]
    assert all(is_png(p) for p in out)
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_report_passes_saved_intervals_to_the_bars(tmp_path: Path, monkeypatch):
    """report.md's accuracy and composition bars get error bars from the ``acc_ci`` in metrics.json."""
    from fvtrain.artifacts import write_json
    from fvtrain.reporting import report as rp

    rels = {r: {"zero_shot": {"none": {"acc": 0.1, "acc_ci": [0.0, 0.3], "n": 6},
                              "ffv": {"acc": 0.7, "acc_ci": [0.5, 0.9], "n": 6}},
                "icl": {"acc": 0.8, "n": 6}} for r in ("antonym", "country_capital")}
    metrics = {"relations": rels}
    assert rp.relation_intervals(metrics)["antonym"] == {"0-shot": [0.0, 0.3], "0-shot+FFV": [0.5, 0.9]}

    seen = {}
    real = F.grouped_bars

    def spy(values, path, ylabel, title, intervals=None):
        seen[Path(path).name] = intervals
        return real(values, path, ylabel, title, intervals=intervals)

    monkeypatch.setattr(F, "grouped_bars", spy)
    write_json(tmp_path / "tr" / "metrics.json", metrics)
    rp.build_report(tmp_path / "tr")
    assert seen["accuracy_by_relation.png"]["country_capital"]["0-shot+FFV"] == [0.5, 0.9]
    assert "ICL" not in seen["accuracy_by_relation.png"]["country_capital"]  # none saved: no bar

    methods = {m: {"open": {"all": {"acc": a, "acc_ci": [a - 0.1, a + 0.1], "n": 10}, "near": {"acc": a, "n": 5},
                            "far": {"acc": a, "n": 5}},
                   "mc": {"all": {"acc": a, "n": 10}, "near": {"acc": None, "n": 0}, "far": {"acc": a, "n": 5}}}
               for m, a in (("none", 0.2), ("affine", 0.6))}
    write_json(tmp_path / "co" / "metrics.json", {"methods": methods, "bank": {"n": 4, "kind": "ffv"}})
    rp.build_report(tmp_path / "co")
    comp = seen["composition_schemes.png"]
    assert list(comp) == ["none", "affine"] and all(list(v) == ["open all"] for v in comp.values())
    assert comp["none"]["open all"] == pytest.approx([0.1, 0.3])
