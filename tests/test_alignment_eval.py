"""fvtrain-eval in process on the tiny model: alignment + decoding artifacts, skips and bad input."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import pytest
import torch

from fvtrain.artifacts import save_vector
from helpers import is_png

RELS = ["1a", "1b", "2a", "3a", "3b", "4c"]
PAIRS = {
    "1a": [("bird", "robin"), ("tree", "oak"), ("flower", "rose"), ("dog", "poodle"), ("fish", "trout"), ("car", "sedan")],
    "1b": [("tool", "hammer"), ("toy", "doll"), ("food", "bread"), ("drink", "milk"), ("weapon", "sword"), ("game", "chess")],
    "2a": [("car", "wheel"), ("house", "door"), ("tree", "branch"), ("face", "nose"), ("book", "page"), ("hand", "finger")],
    "3a": [("big", "large"), ("fast", "quick"), ("buy", "purchase"), ("kid", "child"), ("happy", "glad"), ("car", "auto")],
    "3b": [("rain", "storm"), ("warm", "hot"), ("cool", "cold"), ("like", "love"), ("walk", "run"), ("smile", "laugh")],
    "4c": [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("good", "bad"), ("new", "old")],
}
HEADER = ("relation1,relation2,comparison_type,pair1_word1,pair1_word2,pair2_word1,pair2_word2,"
          "mean_rating,num_ratings").split(",")


def make_vectors(folder: Path, kind: str, seed: int, d: int = 48, layer: int = 1, model: str = "tiny-llama",
                 rels=RELS) -> Path:
    g = torch.Generator().manual_seed(seed)
    base = torch.randn(d, generator=g)
    for i, r in enumerate(rels):
        v = base * 0.5 + torch.randn(d, generator=g) * (1 + i / 3)
        save_vector(folder, r, v, {"kind": kind, "relation": r, "model_id": model, "layer": layer})
    return folder


def make_relsim(path: Path, n: int = 60, seed: int = 0, unknown: bool = True, rels=RELS, pairs=None) -> Path:
    """A relsim-layout CSV of random ratings between pairs of ``rels`` (plus two rows naming the
    unknown relation 9z when ``unknown``)."""
    pairs = pairs or PAIRS
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        a, b = rng.choice(rels), rng.choice(rels)
        p, q = rng.choice(pairs[a]), rng.choice(pairs[b])
        t = "within-subtype" if a == b else ("between-subtype" if a[0] == b[0] else "between-type")
        rows.append([a, b, t, *p, *q, round(rng.uniform(1, 7), 3), 10])
    if unknown:
        rows.append(["9z", "1a", "between-type", "sun", "light", "bird", "robin", 3.0, 10])
        rows.append(["9z", "9z", "within-subtype", "sun", "light", "lamp", "glow", 5.0, 10])
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


def make_semeval(folder: Path, seed: int = 0) -> Path:
    rng = random.Random(seed)
    d = folder / "SemEval-2012-Gold-Ratings" / "Training"
    d.mkdir(parents=True, exist_ok=True)
    (folder / "SemEval-2012-Gold-Ratings" / "subcategories-list.txt").write_text(
        "1, a, CLASS-INCLUSION, Taxonomic\n2, a, PART-WHOLE, Object:Component\n7, b, CASE RELATIONS, Agent:Object\n")
    other = [("sun", "light"), ("fire", "heat"), ("ice", "cold"), ("rain", "wet"), ("salt", "taste"), ("bell", "ring")]
    for r in ("1a", "2a", "7b"):
        lines = [f' {rng.uniform(-50, 60):.1f} "{a}:{b}"' for a, b in PAIRS.get(r, other)]
        (d / f"GoldRatings-{r}.txt").write_text("\n".join(lines) + "\n")
    return folder


def make_splits(run: Path, train: dict[str, list[tuple[str, str]]]) -> Path:
    """A run's splits.json whose train splits hold ``train[relation]``."""
    from fvtrain.data import Pair, Split, save_splits

    return save_splits(run / "splits.json", {r: Split(tuple(Pair(x, (y,)) for x, y in ps), (), (), r)
                                             for r, ps in train.items()}, seed=0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    # The "extraction run" trained on two pairs of 1a and two of 2a.
    make_splits(root / "extract_run", {"1a": PAIRS["1a"][:2], "2a": PAIRS["2a"][:2]})
    return {
        "fv": make_vectors(root / "extract_run" / "vectors", "fv", 0),
        "ffv": make_vectors(root / "train_run" / "bank", "ffv", 1),
        "relsim": make_relsim(root / "relsim.csv"),
        "semeval": make_semeval(root / "semeval"),
        "root": root,
    }


def _eval(out, *overrides):
    from fvtrain.cli import compose
    from fvtrain.evaluate import evaluate

    return evaluate(compose("eval", ["model=tiny-llama", "alignment.n_boot=100", *overrides]), out)


def test_relsim_alignment_fv_vs_ffv_writes_metrics_points_and_figures(data, tmp_path):
    out = tmp_path / "run"
    # Run folders are resolved to vectors/ (FV) and bank/ (FFV).
    m = _eval(out, f"vectors.fv={data['fv'].parent}", f"vectors.ffv={data['ffv'].parent}",
              f"judgments.path={data['relsim']}")
    al = m["alignment"]
    rel = al["relation"]
    assert rel["n"] == 15  # every unordered pair of the 6 relations rated at least once
    assert rel["skipped"]["relation without a vector"] == {"n": 2, "example": "9z"}
    assert rel["skipped"]["relation compared with itself (cosine 1)"]["n"] == 4
    for k in ("fv", "ffv"):
        c = rel["all"][k]
        assert -1 <= c["spearman"] <= 1 and -1 <= c["pearson"] <= 1
        assert c["spearman_ci"][0] <= c["spearman"] <= c["spearman_ci"][1]
    assert rel["all"]["difference"]["kinds"] == ["fv", "ffv"]
    pair = al["pair"]
    assert set(pair) >= {"weights", "cfv", "weights_held_out", "cfv_held_out", "basis", "n_pairs_judged"}
    held = pair["weights_held_out"]
    assert held["n"] + held["skipped"]["pair in a train split of the vectors"]["n"] == 62
    assert 0 < held["n"] < 62
    assert pair["weights"]["n"] == 62 and pair["basis"]["fv"]["basis"] == RELS
    top = pair["basis"]["ffv"]["top_basis_is_pair_relation"]
    assert top["n"] == 35 and top["chance"] == pytest.approx(1 / 6) and 0 <= top["acc"] <= 1  # two 9z-only pairs: no label
    assert top["n_held_out"] == 31  # the four train pairs of 1a and 2a are judged
    assert set(pair["weights"]["by_comparison_type"]) == {"within-subtype", "between-subtype", "between-type"}
    assert m["vectors"]["fv"]["path"].endswith("vectors") and m["vectors"]["ffv"]["path"].endswith("bank")
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["alignment"]["relation"]["all"] == json.loads(json.dumps(rel["all"]))
    points = json.loads((out / "alignment_points.json").read_text())
    assert len(points["relation"]) == 15 and len(points["pair"]["weights"]) == 62
    assert {"fv", "ffv", "rating", "comparison_type"} <= set(points["pair"]["weights"][0])
    assert is_png(out / "figures" / "alignment_scatter.png")
    # Same seed, same numbers (the bootstrap is seeded); another seed moves only the intervals.
    again = _eval(tmp_path / "again", f"vectors.fv={data['fv']}", f"vectors.ffv={data['ffv']}",
                  f"judgments.path={data['relsim']}", "alignment.pair_level=false", "decoding.enabled=false")
    assert again["alignment"]["relation"] == rel
    other = _eval(tmp_path / "other", f"vectors.fv={data['fv']}", f"vectors.ffv={data['ffv']}",
                  f"judgments.path={data['relsim']}", "alignment.pair_level=false", "decoding.enabled=false",
                  "seed=5")
    assert other["alignment"]["relation"]["all"]["fv"]["spearman"] == rel["all"]["fv"]["spearman"]
    assert other["alignment"]["relation"]["all"]["fv"]["spearman_ci"] != rel["all"]["fv"]["spearman_ci"]


def test_semeval_prototypicality_and_decoding_words_from_titles(data, tmp_path):
    out = tmp_path / "run"
    m = _eval(out, f"vectors.fv={data['fv']}", f"vectors.ffv={data['ffv']}", f"judgments.path={data['semeval']}",
              "alignment.min_pairs=3")
    p = m["alignment"]["prototypicality"]
    assert set(p["by_subtype"]) == {"1a", "2a"} and p["n_pairs"] == 12
    assert p["skipped"]["rated pair of a subtype without a vector"] == {"n": 6, "example": "7b"}
    # The FV run's splits.json names train pairs: the same correlations on the other pairs only.
    h = m["alignment"]["prototypicality_held_out"]
    assert h["skipped"]["pair in a train split of the vectors"]["n"] == 4 and h["n_pairs"] == 8
    assert m["alignment"]["held_out"]["n_train_pairs"] == 4
    assert set(p["mean"]) == {"none", "fv", "ffv", "difference"}
    assert "relation" not in m["alignment"] and "pair" not in m["alignment"]
    d = m["decoding"]
    assert d["word_source"] == {"1a": "title", "2a": "title"}
    assert "taxonomic" in d["relations"]["1a"]["words"]
    assert d["relations"]["1a"]["fv"]["best_rank"] >= 1 and len(d["relations"]["1a"]["ffv"]["top"]) == 10
    assert d["summary"]["fv"]["n"] == 2
    assert is_png(out / "figures" / "prototypicality.png") and is_png(out / "figures" / "decoding_ranks.png")


def test_decoding_only_with_a_words_file(data, tmp_path):
    words = tmp_path / "words.json"
    words.write_text(json.dumps({"1a": ["kind"], "4c": ["opposite", "reverse"]}))
    m = _eval(tmp_path / "run", f"vectors.fv={data['fv']}", f"decoding.words={words}", "decoding.k=3")
    assert m["alignment"] == {}
    d = m["decoding"]
    assert d["word_source"] == {"1a": "user", "4c": "user"} and len(d["relations"]["4c"]["fv"]["top"]) == 3
    assert set(d["relations"]["4c"]["fv"]["words"]) == {"opposite", "reverse"}
    assert sorted(d["no_words"]) == ["1b", "2a", "3a", "3b"]


@pytest.mark.parametrize("overrides,error,message", [
    ([], "ConfigError", "no vectors to evaluate: set vectors.fv="),
    (["vectors.fv={root}/nowhere"], "ConfigError", "does not exist"),
    (["vectors.fv={root}"], "ConfigError", "holds no vectors"),
    (["vectors.fv={fv}", "vectors.relations=[1a,zz]"], "ConfigError", "vectors.relations names 'zz'"),
    (["vectors.fv={wrong}"], "ConfigError", "were made with model gemma3-270m, but this run loads 'tiny-llama'"),
    (["vectors.fv={fv}", "judgments.path=builtin"], "ConfigError", "holds no human judgments"),
    (["vectors.fv={fv}", "judgments.path={unknown}", "alignment.pair_level=false"], "AlignmentError",
     "no relation named by the judgments has a vector"),
    (["vectors.fv={fv}", "judgments.path={relsim}", "judgments.relations=[1a,nope]"], "UnknownRelationError",
     "unknown relation 'nope'"),
])
def test_bad_input_fails_before_the_model_loads(data, tmp_path, monkeypatch, overrides, error, message):
    import fvtrain.runtime

    root = data["root"]
    wrong = make_vectors(root / f"wrong_{len(overrides)}", "fv", 2, model="gemma3-270m")
    unknown = root / "unknown.csv"
    if not unknown.is_file():
        with open(unknown, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(HEADER)
            w.writerow(["8a", "9b", "between-type", "a", "b", "c", "d", 3.0, 10])
    fmt = {"root": root, "fv": data["fv"], "wrong": wrong, "relsim": data["relsim"], "unknown": unknown}
    overrides = [o.format(**fmt) for o in overrides]

    def no_model(self):
        raise AssertionError("the model was loaded before the input was checked")

    monkeypatch.setattr(fvtrain.runtime.LazyModel, "__call__", no_model)
    with pytest.raises(Exception) as err:
        _eval(tmp_path / "run", *overrides)
    assert type(err.value).__name__ == error
    assert message in str(err.value)
    assert not (tmp_path / "run" / "metrics.json").exists()
