"""Alignment with human judgments: correlations, bootstrap, relation/pair level, prototypicality."""

from __future__ import annotations

import math

import pytest
import torch

from fvtrain.data.types import Judgment, PrototypicalityRating
from fvtrain.evaluation import alignment as al


def test_correlations_match_a_hand_computed_case():
    # x = 1..4, y = 1,3,2,5: ranks of y are 1,3,2,4 -> d = 0,-1,1,0, sum d^2 = 2,
    # Spearman = 1 - 6*2 / (4*15) = 0.8. Pearson: sum dx*dy = 5.5, sum dx^2 = 5, sum dy^2 = 8.75,
    # r = 5.5 / sqrt(43.75).
    x, y = [1, 2, 3, 4], [1, 3, 2, 5]
    assert al.correlation(x, y, "spearman") == pytest.approx(0.8, abs=1e-6)
    assert al.correlation(x, y, "pearson") == pytest.approx(5.5 / math.sqrt(43.75), abs=1e-6)


def test_spearman_uses_average_ranks_for_ties():
    # ranks of x = 1, 2.5, 2.5, 4 against 1..4: Pearson of the ranks = 4.5 / sqrt(4.5 * 5).
    assert al.correlation([1, 2, 2, 3], [1, 2, 3, 4], "spearman") == pytest.approx(4.5 / math.sqrt(22.5), abs=1e-6)


def test_correlation_is_undefined_for_constant_or_tiny_samples():
    assert al.correlation([1, 1, 1, 1], [1, 2, 3, 4]) is None
    assert al.correlation([1, 2], [2, 1]) is None
    with pytest.raises(ValueError, match="stat must be"):
        al.correlation([1, 2, 3], [1, 2, 3], "kendall")


def test_correlate_agrees_with_scipy_and_reports_p_values():
    from scipy import stats

    g = torch.Generator().manual_seed(3)
    x = torch.randn(40, generator=g)
    y = x + torch.randn(40, generator=g)
    res = al.correlate({"fv": x}, y, n_boot=200, seed=0)
    assert res["n"] == 40
    assert res["fv"]["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic, abs=1e-5)
    assert res["fv"]["pearson"] == pytest.approx(stats.pearsonr(x, y).statistic, abs=1e-5)
    assert res["fv"]["spearman_p"] == pytest.approx(stats.spearmanr(x, y).pvalue, rel=1e-3)
    lo, hi = res["fv"]["spearman_ci"]
    assert lo < res["fv"]["spearman"] < hi


def test_bootstrap_is_seeded_and_reproducible():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, generator=g), torch.randn(30, generator=g)
    a = al.correlate({"fv": x, "ffv": x + y}, y, n_boot=300, seed=7, compare=("fv", "ffv"))
    b = al.correlate({"fv": x, "ffv": x + y}, y, n_boot=300, seed=7, compare=("fv", "ffv"))
    c = al.correlate({"fv": x, "ffv": x + y}, y, n_boot=300, seed=8, compare=("fv", "ffv"))
    assert a == b
    assert a["fv"]["spearman_ci"] != c["fv"]["spearman_ci"]
    assert a["bootstrap"] == {"n_boot": 300, "ci": 0.95, "seed": 7}
    assert torch.equal(al.bootstrap_indices(10, 5, 3), al.bootstrap_indices(10, 5, 3))
    d = a["difference"]
    assert d["kinds"] == ["fv", "ffv"]
    assert d["spearman"] == pytest.approx(a["ffv"]["spearman"] - a["fv"]["spearman"])
    assert d["spearman_ci"][0] < d["spearman_ci"][1]


def test_paired_difference_of_identical_kinds_is_exactly_zero():
    x = torch.arange(10.0)
    y = torch.tensor([2.0, 1, 4, 3, 6, 5, 8, 7, 10, 9])
    res = al.correlate({"fv": x, "ffv": x.clone()}, y, n_boot=100, seed=0, compare=("fv", "ffv"))
    assert res["difference"]["spearman"] == 0 and res["difference"]["spearman_ci"] == [0.0, 0.0]


def _rel_judgment(a, b, rating, t="between-type", first=("w", "x"), second=("y", "z")):
    return Judgment(first, second, rating, "pair", t, a, b)


def test_relation_level_averages_pairs_and_counts_what_it_skips():
    e = torch.eye(4)
    vecs = {"fv": {"a": e[0], "b": e[0] + e[1], "c": e[2], "d": e[0] + e[2]},
            "ffv": {"a": e[0], "b": e[1], "c": e[2] + e[0], "d": e[3]}}
    js = [_rel_judgment("a", "b", 6.0), _rel_judgment("b", "a", 4.0),  # mean 5 for {a, b}
          _rel_judgment("a", "c", 1.0), _rel_judgment("a", "d", 3.0), _rel_judgment("b", "c", 2.0),
          _rel_judgment("a", "a", 7.0, "within-subtype"),
          _rel_judgment("a", "zz", 2.0), _rel_judgment("zz", "zz", 2.0, "within-subtype")]
    out, recs = al.relation_alignment(vecs, js, n_boot=50)
    assert out["n"] == 4
    by = {(r["first"], r["second"]): r for r in recs}
    assert by["a", "b"]["rating"] == 5.0 and by["a", "b"]["fv"] == pytest.approx(1 / math.sqrt(2))
    assert by["a", "c"]["fv"] == pytest.approx(0.0) and by["a", "c"]["ffv"] == pytest.approx(1 / math.sqrt(2))
    assert out["skipped"]["relation without a vector"]["n"] == 2
    assert out["skipped"]["relation compared with itself (cosine 1)"]["n"] == 1
    assert out["n_skipped"] == 3
    # Sorted pairs (a,b), (a,c), (a,d), (b,c): FV cosines 0.71, 0, 0.71, 0 against ratings 5, 1, 3, 2.
    assert [r["rating"] for r in recs] == [5.0, 1.0, 3.0, 2.0]
    assert [r["fv"] for r in recs] == pytest.approx([1 / math.sqrt(2), 0, 1 / math.sqrt(2), 0])
    assert out["all"]["fv"]["spearman"] == pytest.approx(al.correlation([1, 0, 1, 0], [5, 1, 3, 2]))
    out_self, _ = al.relation_alignment(vecs, js, include_self=True, n_boot=0)
    assert out_self["n"] == 5


def test_relation_level_with_no_known_relation_is_a_clear_error():
    vecs = {"fv": {"antonym": torch.ones(3), "plural": torch.ones(3)}}
    with pytest.raises(al.AlignmentError, match="no relation named by the judgments has a vector.*1a"):
        al.relation_alignment(vecs, [_rel_judgment("1a", "2b", 3.0)])


def test_relation_level_uses_relation_level_judgments_as_they_are():
    vecs = {"fv": {"a": torch.tensor([1.0, 0]), "b": torch.tensor([1.0, 1]), "c": torch.tensor([0.0, 1])}}
    js = [Judgment((), (), r, "relation", first_relation=a, second_relation=b)
          for a, b, r in (("a", "b", 2.0), ("a", "c", 1.0), ("b", "c", 3.0))]
    out, recs = al.relation_alignment(vecs, js, n_boot=0)
    assert out["n"] == 3 and [r["rating"] for r in recs] == [2.0, 1.0, 3.0]


def test_pair_level_cosines_and_skips():
    reps = {"fv": {("a", "b"): torch.tensor([1.0, 0]), ("c", "d"): torch.tensor([1.0, 1]),
                   ("e", "f"): torch.tensor([0.0, 1])}}
    js = [Judgment(("a", "b"), ("c", "d"), 5.0, "pair", "within"),
          Judgment(("a", "b"), ("e", "f"), 1.0, "pair", "between"),
          Judgment(("c", "d"), ("e", "f"), 4.0, "pair", "between"),
          Judgment(("a", "b"), ("x", "y"), 4.0, "pair", "between")]
    out, recs = al.pair_alignment(reps, js, n_boot=0)
    assert out["n"] == 3 and out["n_pairs"] == 3
    assert [round(r["fv"], 4) for r in recs] == [round(1 / math.sqrt(2), 4), 0.0, round(1 / math.sqrt(2), 4)]
    assert out["skipped"]["pair not scored (sampled out or not encodable)"]["n"] == 1
    assert al.judged_pairs(js)[:3] == [("a", "b"), ("c", "d"), ("e", "f")]
    held, recs = al.pair_alignment(reps, js, n_boot=0, exclude={("e", "f")})
    assert held["n"] == 1 and held["skipped"][al.TRAIN_SKIP]["n"] == 2 and held["all"] is None


def test_train_pairs_of_splits():
    from fvtrain.data import Pair, Split

    sp = Split((Pair("big", ("large", "huge")),), (Pair("hot", ("cold",)),), (), "r")
    assert al.train_pairs([sp]) == {("big", "large"), ("big", "huge")}


def test_composite_weights_and_pair_sampling():
    w = al.composite_weights(torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]))
    assert torch.allclose(w, torch.tensor([[0.5, 0.5], [0.75, 0.25]], dtype=torch.float64))
    pairs = [(str(i), str(i + 1)) for i in range(20)]
    s1, s2 = al.sample_pairs(pairs, 5, 0), al.sample_pairs(pairs, 5, 0)
    assert s1 == s2 and len(s1) == 5 and al.sample_pairs(pairs, None, 0) == pairs


def test_pair_scores_match_one_score_call_per_vector(tiny_llama):
    lm = tiny_llama
    g = torch.Generator().manual_seed(0)
    basis = torch.randn(3, lm.d_model, generator=g)
    pairs = [("hot", "cold"), ("big", "small"), ("cat", "cats")]
    s = al.pair_scores(lm, pairs, basis, 1, batch_size=2)
    ref = torch.stack([al.prototypicality_scores(
        lm, [PrototypicalityRating("r", p, 0.0) for p in pairs], basis[i], 1) for i in range(3)], 1)
    assert torch.allclose(s.double(), ref, atol=1e-4)


def test_prototypicality_per_subtype_with_skips(tiny_llama):
    lm = tiny_llama
    g = torch.Generator().manual_seed(0)
    words = [("hot", "cold"), ("big", "small"), ("up", "down"), ("wet", "dry"), ("old", "new"), ("fast", "slow")]
    ratings = [PrototypicalityRating("1a", p, float(i * 10 - 20)) for i, p in enumerate(words)]
    ratings += [PrototypicalityRating("2b", p, float(i)) for i, p in enumerate(words)]
    ratings += [PrototypicalityRating("9z", p, float(i)) for i, p in enumerate(words)]
    ratings += [PrototypicalityRating("3c", p, float(i)) for i, p in enumerate(words[:2])]
    vecs = {k: {r: torch.randn(lm.d_model, generator=g) for r in ("1a", "2b", "3c")} for k in ("fv", "ffv")}
    layers = {k: {r: 1 for r in v} for k, v in vecs.items()}
    out, recs = al.prototypicality_alignment(lm, ratings, vecs, layers, n_boot=50, min_pairs=3)
    assert set(out["by_subtype"]) == {"1a", "2b"}
    assert out["n_subtypes"] == 2 and out["n_pairs"] == 12
    assert out["skipped"][al.NO_VECTOR_SKIP] == {"n": 6, "example": "9z"}  # counts pairs
    assert out["skipped"]["pair of a subtype with fewer than 3 rated pairs"] == {"n": 2, "example": "3c"}
    assert set(out["mean"]) == {"none", "fv", "ffv", "difference"}
    one = out["by_subtype"]["1a"]
    xs = [r["fv"] for r in recs if r["relation"] == "1a"]
    assert one["fv"]["spearman"] == pytest.approx(al.correlation(xs, [r.rating for r in ratings[:6]]))
    mean_fv = (out["by_subtype"]["1a"]["fv"]["spearman"] + out["by_subtype"]["2b"]["fv"]["spearman"]) / 2
    assert out["mean"]["fv"]["spearman"] == pytest.approx(mean_fv)
    with pytest.raises(al.AlignmentError, match="no rated subtype has a vector"):
        al.prototypicality_alignment(lm, ratings[12:18], vecs, layers)
    # Held out: pairs the vectors were trained on are left out (and counted); same scores otherwise.
    held = al.prototypicality_summary(recs, ["none", "fv", "ffv"], n_boot=50, min_pairs=3,
                                      exclude={("hot", "cold"), ("big", "small")})
    assert held["skipped"][al.TRAIN_SKIP]["n"] == 6 and held["n_pairs"] == 8  # 1a, 2b and 3c pairs
    xs = [r["fv"] for r in recs if r["relation"] == "1a"][2:]
    assert held["by_subtype"]["1a"]["fv"]["spearman"] == pytest.approx(
        al.correlation(xs, [r.rating for r in ratings[2:6]]))
