"""data.sources (one deduplicated bank from several data sets) and analogies.sets (several test
sets, seeded multiple-choice distractors)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fvtrain.data.analogy_sets import read_set, read_sets, with_distractors
from fvtrain.data.sources import read_sources, sample_pairs
from fvtrain.data.types import AnalogyItem, Pair, Relation

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _todd(folder: Path, name: str, pairs) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps([{"input": x, "output": y} for x, y in pairs]))


def test_sources_merge_same_relations_drop_copies_and_record_where_pairs_came_from(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _todd(a, "country-capital", [("France", "Paris"), ("Peru", "Lima")])
    _todd(a, "opposites", [("hot", "cold"), ("up", "down"), ("big", "small")])
    _todd(a, "plural", [("cat", "cats")])
    _todd(b, "country_capital", [("Peru", "Lima"), ("Chad", "N'Djamena")])       # same name, normalised
    _todd(b, "antonyms_again", [("hot", "cold"), ("up", "down"), ("wet", "dry")])  # 2/3 pairs copied
    _todd(b, "news", [("the markets fell sharply today", "business")])
    _todd(b, "pl", [("dog", "dogs")])
    ds = read_sources([{"path": str(a), "format": "todd"},
                       {"path": str(b), "format": "todd", "name": "b", "same_as": {"pl": "plural"},
                        "max_input_words": 3}])
    assert list(ds.relations) == ["country-capital", "opposites", "plural"]
    cc = ds.relations["country-capital"]
    assert [p.x for p in cc.pairs] == ["France", "Peru", "Chad"]  # Peru not repeated
    assert [s["pairs_added"] for s in cc.source["sources"][1:]] == [1]
    assert [p.x for p in ds.relations["plural"].pairs] == ["cat", "dog"]
    why = dict(ds.skipped)
    assert "already holds most of its pairs" in why["b:antonyms_again"]
    assert "max_input_words=3" in why["b:news"]


def test_sources_refuse_unknown_keys_and_sample_pairs_reproducibly():
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['pth'\]"):
        read_sources([{"pth": "x"}])
    rel = Relation("r", tuple(Pair(f"x{i}", (f"y{i}",)) for i in range(100)))
    s1, s2 = sample_pairs(rel, 10, 0), sample_pairs(rel, 10, 0)
    assert s1.pairs == s2.pairs and len(s1.pairs) == 10 and s1.source["pairs_before_sample"] == 100
    assert sample_pairs(rel, 10, 1).pairs != s1.pairs


def _items(rel: str, n: int) -> list[AnalogyItem]:
    return [AnalogyItem(f"a{i}", f"b{i}", f"c{i}", (f"d{i}",), relation=rel) for i in range(n)]


def test_distractors_are_answers_of_the_same_relation_never_the_gold_or_c():
    items = _items("capital", 6) + _items("plural", 2)
    out, left = with_distractors(items, k=3, seed=0)
    assert left == 2  # the plural items have only one other answer to draw from
    for it in out[:6]:
        cands = [d for _, d in it.choices]
        assert len(cands) == 4 and cands[it.answer_index] == it.d[0]
        assert it.c not in cands and len(set(cands)) == 4
        assert all(d.startswith("d") for d in cands)  # answers of the same relation
    assert not out[6].is_multiple_choice
    again, _ = with_distractors(items, k=3, seed=0)
    assert again == out  # seeded
    assert [it.answer_index for it in with_distractors(items, 3, seed=1)[0][:6]] != [it.answer_index for it in out[:6]] \
        or [it.choices for it in with_distractors(items, 3, seed=1)[0][:6]] != [it.choices for it in out[:6]]


def test_sets_are_tagged_renamed_and_named_once(tmp_path):
    f = tmp_path / "g.txt"
    f.write_text(": capital-common-countries\nAthens Greece Baghdad Iraq\nBerlin Germany Cairo Egypt\n"
                 "Kabul Afghanistan Oslo Norway\nParis France Rome Italy\nLima Peru Tokyo Japan\n"
                 ": gram8-plural\ncat cats dog dogs\n")
    items, info = read_set({"name": "google", "path": str(f), "mc_distractors": 3, "prefix": "google_",
                            "same_as": {"capital-common-countries": "country_capital"}})
    assert info["n"] == 6 and info["n_multiple_choice"] == 5 and info["left_open"] == 1
    assert {it.relation for it in items} == {"country_capital", "google_gram8-plural"}
    assert all(it.meta["set"] == "google" for it in items)
    with pytest.raises(ValueError, match="two sets are named 'g'"):
        read_sets([{"name": "g", "path": str(f)}, {"name": "g", "path": str(f)}])


@pytest.mark.skipif(not (SHARED / "semeval2012_task2").is_dir(), reason="shared data not present")
def test_the_paper_bank_from_the_real_data_sets_has_over_110_relations():
    from omegaconf import OmegaConf

    root = Path(__file__).resolve().parents[1]
    exp = OmegaConf.load(root / "conf/experiment/paper.yaml")
    cfg = OmegaConf.merge(exp, {"shared_data": str(SHARED)})
    ds = read_sources(OmegaConf.to_container(cfg.data.sources, resolve=True), cfg.data.max_pairs)
    assert len(ds.relations) >= 110
    first = {r.source["sources"][0]["source"] for r in ds.relations.values()}
    assert first == {"builtin", "semeval", "google", "todd"}
    semeval = [n for n, r in ds.relations.items() if r.source["sources"][0]["source"] == "semeval"]
    assert len(semeval) == 79 and {"1a", "3a", "10f"} <= set(semeval)  # by id, as relsim names them
    assert all(len(r.pairs) <= 60 for r in ds.relations.values())
    names = [s["name"] for s in ds.relations["plural"].source["sources"]]
    assert names == ["plural", "gram8-plural", "singular-plural"]  # one plural relation, three sources
    assert not any(n.startswith("todd_") and n[5:].replace("-", "_") in ds.relations for n in ds.relations)


def test_the_cap_keeps_the_first_sources_pairs_and_tops_them_up(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _todd(a, "antonym", [("hot", "cold"), ("up", "down"), ("big", "small")])
    _todd(b, "antonym", [(f"w{i}", f"v{i}") for i in range(50)])
    ds = read_sources([{"path": str(a), "format": "todd"}, {"path": str(b), "format": "todd"}], max_pairs=5)
    xs = [p.x for p in ds.relations["antonym"].pairs]
    assert xs[:3] == ["hot", "up", "big"] and len(xs) == 5 and all(x.startswith("w") for x in xs[3:])
    ds = read_sources([{"path": str(b), "format": "todd"}, {"path": str(a), "format": "todd"}], max_pairs=5)
    assert all(p.x.startswith("w") for p in ds.relations["antonym"].pairs)  # 50 of its own: a sample


@pytest.mark.slow
def test_every_vector_manifest_names_the_sources_of_its_relation(tmp_path):
    """Extraction and training write each relation's sources (data.sources) into its manifests."""
    from fvtrain.config import compose
    from fvtrain.pipeline import pipeline

    todd = tmp_path / "todd"
    _todd(todd, "opposites", [("wet", "dry"), ("early", "late"), ("full", "empty")])
    sources = ('data.sources=[{path: builtin, relations: [antonym, country_capital]}, '
               f'{{path: "{todd}", format: todd, name: todd, same_as: {{opposites: antonym}}}}]')
    cfg = compose("pipeline", ["debug=smoke", "stages=[extract,train]", "logger=[]", "data.path=null",
                               sources], output_dir=tmp_path / "run")
    pipeline(cfg, tmp_path / "run")
    for folder in ("extract/vectors", "train/bank"):
        ant = json.loads((tmp_path / "run" / folder / "antonym.json").read_text())["source"]
        assert [(s["source"], s["name"]) for s in ant["sources"]] == [("builtin", "antonym"), ("todd", "opposites")]
        cc = json.loads((tmp_path / "run" / folder / "country_capital.json").read_text())["source"]
        assert [s["name"] for s in cc["sources"]] == ["country_capital"]
