"""Bootstrap intervals (fvtrain.evaluation.stats): coverage in simulation, pairing, stratification."""

from __future__ import annotations

import random

import pytest
import torch

from fvtrain.evaluation import stats
from fvtrain.training.metrics import ITEM_STRIDE, completion_intervals


def _bernoulli(p: float, n: int, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(n, generator=gen) < p).double()


@pytest.mark.parametrize("p,n", [(0.6, 60), (0.2, 120)])
def test_interval_covers_the_true_accuracy_about_95_percent_of_the_time(p, n):
    gen = torch.Generator().manual_seed(1)
    reps = 300
    hits = sum(lo <= p <= hi for lo, hi in
               (stats.mean_ci(_bernoulli(p, n, gen), n_boot=400, seed=s) for s in range(reps)))
    # Percentile intervals run a little narrow at small n; a broken one (e.g. the SD of the items
    # instead of the mean, or one resample for all) lands far outside this band.
    assert 0.90 * reps <= hits <= 0.99 * reps


def test_stratified_macro_interval_covers_the_mean_of_relation_accuracies():
    gen = torch.Generator().manual_seed(2)
    ps, sizes = [0.9, 0.5, 0.2, 0.7], [4, 30, 12, 8]  # small, unequal relations, as in the study
    truth = sum(ps) / len(ps)
    groups = [i for i, k in enumerate(sizes) for _ in range(k)]
    reps, hits = 300, 0
    for s in range(reps):
        v = torch.cat([_bernoulli(p, k, gen) for p, k in zip(ps, sizes)])
        lo, hi = stats.mean_ci(v, groups, n_boot=400, seed=s)
        hits += lo <= truth <= hi
    assert 0.85 * reps <= hits <= 0.995 * reps


def test_macro_mean_is_the_mean_of_relation_means():
    v = [1, 1, 1, 1, 0, 0]
    assert stats.macro_mean(v, [0, 0, 0, 0, 1, 1]) == pytest.approx(0.5)
    assert stats.macro_mean(v) == pytest.approx(4 / 6)


def test_paired_difference_is_narrower_than_the_unpaired_one():
    gen = torch.Generator().manual_seed(3)
    base = _bernoulli(0.5, 200, gen)
    better = base.clone()
    flip = (base == 0).nonzero().squeeze(1)[:20]  # the same items, 20 more of them right
    better[flip] = 1
    res = stats.compare({"a": base, "b": better}, pairs=[("a", "b")], seed=0)
    d = res["differences"]["b - a"]
    assert d["diff"] == pytest.approx(0.1)
    assert d["excludes_zero"] and d["ci"][0] > 0
    lo_a, hi_a = res["methods"]["a"]["acc_ci"]
    lo_b, hi_b = res["methods"]["b"]["acc_ci"]
    assert lo_b < hi_a  # the two intervals overlap, but the paired difference is clearly above 0
    assert d["ci"][1] - d["ci"][0] < 0.5 * ((hi_a - lo_a) + (hi_b - lo_b))


def test_intervals_are_seeded_and_need_two_items():
    v = [1, 0, 1, 1, 0]
    assert stats.mean_ci(v, seed=7) == stats.mean_ci(v, seed=7)
    assert stats.mean_ci([1]) is None
    with pytest.raises(ValueError, match="paired outcomes must cover the same items"):
        stats.compare({"a": [1, 0], "b": [1]})


def test_completion_intervals_pair_methods_on_common_items():
    rng = random.Random(0)
    relations = ["antonym", "capital"]
    keys = [r * ITEM_STRIDE + j for r, n in enumerate([5, 3]) for j in range(n)]
    fv = [float(rng.random() < 0.3) for _ in keys]
    ffv = [float(rng.random() < 0.8) for _ in keys]
    icl_keys = keys[:5]  # ICL measured on the first relation only
    outcomes = {"zero_shot/fv": {"key": keys, "correct": fv}, "zero_shot/ffv": {"key": keys, "correct": ffv},
                "icl": {"key": icl_keys, "correct": [1.0] * 5}}
    res = completion_intervals(outcomes, relations, seed=0)
    assert set(res["mean"]) == {"fv", "ffv", "icl"}
    assert set(res["relations"]["capital"]) == {"fv", "ffv"}
    d = res["differences"]["ffv - fv"]
    want = stats.macro_mean(ffv, [k // ITEM_STRIDE for k in keys]) - stats.macro_mean(fv, [k // ITEM_STRIDE for k in keys])
    assert d["diff"] == pytest.approx(want) and d["n"] == 8
    assert res["differences"]["ffv - icl"]["n"] == 5
    assert res["differences"]["ffv - icl"]["diff"] == pytest.approx(sum(ffv[:5]) / 5 - 1.0)


def test_format_marks_intervals_that_exclude_zero():
    assert stats.fmt(0.5, [0.4, 0.6]) == "0.500 [0.400, 0.600]"
    assert stats.fmt_diff({"diff": 0.1, "ci": [0.05, 0.2], "excludes_zero": True}) == "+0.100 [+0.050, +0.200]*"
    assert stats.fmt(None) == "-"
