"""Deduplication and seeded splits: reproducible, disjoint, saved with a hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fvtrain.data import Pair, Relation, dedupe, load_splits, save_splits, split_all, split_hash, split_relation
from fvtrain.data.splits import Split, splits_from_json, splits_to_json


def relation(name: str = "antonym", n: int = 50) -> Relation:
    return Relation(name, tuple(Pair(f"w{i}", (f"a{i}",)) for i in range(n)), {"format": "test"})


def xs(pairs: tuple[Pair, ...]) -> set[str]:
    return {p.x for p in pairs}


def test_dedupe_merges_answers_in_first_seen_order() -> None:
    rel = Relation("r", (Pair("a", ("1",)), Pair("b", ("2",)), Pair("a", ("3", "1")), Pair("c", ("4",)),
                         Pair("b", ("2",))))
    out = dedupe(rel)
    assert out.pairs == (Pair("a", ("1", "3")), Pair("b", ("2",)), Pair("c", ("4",)))
    assert out.source["pairs_before_dedupe"] == 5
    assert dedupe(out) is out  # nothing to do: the same object


def test_default_split_sizes_and_disjointness() -> None:
    s = split_relation(relation(n=51), seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (20, 15, 16)  # the rest halved, test takes the odd one
    assert not xs(s.train) & xs(s.test) and not xs(s.train) & xs(s.val) and not xs(s.val) & xs(s.test)
    assert xs(s.train) | xs(s.val) | xs(s.test) == {f"w{i}" for i in range(51)}
    assert s.relation == "antonym"
    s2 = split_relation(relation(n=51), n_train=5, n_val=10)
    assert (len(s2.train), len(s2.val), len(s2.test)) == (5, 10, 36)


def test_same_seed_same_split_other_seed_other_split() -> None:
    a, b, c = (split_relation(relation(), seed=s) for s in (0, 0, 1))
    assert a == b and split_hash(a) == split_hash(b)
    assert a.train != c.train and split_hash(a) != split_hash(c)


def test_split_is_independent_of_the_other_relations() -> None:
    alone = split_all([relation("antonym")], seed=3)["antonym"]
    among = split_all([relation("synonym"), relation("antonym"), relation("plural")], seed=3)["antonym"]
    assert alone == among
    # different relations get different shuffles from the same seed
    assert [p.x for p in among.train] != [p.x for p in split_all([relation("synonym")], seed=3)["synonym"].train]


def test_repeated_inputs_never_straddle_train_and_test() -> None:
    pairs = [Pair(f"w{i % 30}", (f"a{i}",)) for i in range(90)]  # every input three times
    s = split_relation(Relation("rep", tuple(pairs)), seed=0)
    assert len(s.train) + len(s.val) + len(s.test) == 30
    assert not xs(s.train) & (xs(s.val) | xs(s.test))
    assert all(len(p.answers) == 3 for p in s.train)


def test_too_few_pairs_is_a_clear_error() -> None:
    rel = Relation("tiny", tuple(Pair(f"w{i % 15}", ("y",)) for i in range(40)))
    with pytest.raises(ValueError) as err:
        split_relation(rel)
    assert str(err.value) == (
        "relation 'tiny' has 15 distinct pairs (after merging repeated inputs), fewer than the 22 needed "
        "for 20 train + at least 1 validation + at least 1 test; lower n_train/n_val or add pairs"
    )
    with pytest.raises(ValueError, match=r"fewer than the 26 needed for 20 train \+ 5 validation \+ at least 1 test"):
        split_relation(relation(n=25), n_val=5)
    assert len(split_relation(relation(n=22)).test) == 1  # the smallest relation that splits
    with pytest.raises(ValueError, match="n_train and n_val must be at least 1"):
        split_relation(relation(), n_train=0)


def test_hash_is_sha256_of_canonical_json_and_round_trips(tmp_path: Path) -> None:
    splits = split_all([relation("antonym"), relation("plural", 30)], seed=7)
    h = split_hash(splits["antonym"])
    assert len(h) == 64 and int(h, 16) >= 0
    blob = splits_to_json(splits, seed=7, n_train=20)
    assert blob["seed"] == 7 and blob["relations"]["antonym"]["hash"] == h
    assert blob["relations"]["plural"]["train"][0] == [splits["plural"].train[0].x, list(splits["plural"].train[0].answers)]
    path = save_splits(tmp_path / "run" / "splits.json", splits, seed=7, n_train=20)
    assert load_splits(path) == splits
    assert json.loads(path.read_text())["hash"] == blob["hash"]
    # a tampered file is caught by its hash
    bad = json.loads(path.read_text())
    bad["relations"]["antonym"]["test"].pop()
    with pytest.raises(ValueError, match="split of relation 'antonym' does not match its saved hash"):
        splits_from_json(bad)


def test_split_indexing() -> None:
    s = Split((Pair("a", ("b",)),), (), (), "r")
    assert s["train"] == s.train
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        s["dev"]


def test_cross_validation_tests_every_pair_exactly_once():
    from fvtrain.data.splits import cv_position, cv_split

    rel = Relation("r", tuple(Pair(f"x{i}", (f"y{i}",)) for i in range(23)))
    k = 5
    tested = []
    for fold in range(k):
        s = cv_split(rel, k, fold, n_train=10, seed=3)
        xs = {p.x for p in s.test}
        assert not xs & {p.x for p in s.train} and not xs & {p.x for p in s.val}
        assert len(s.val) >= 1 and 1 <= len(s.train) <= 10
        tested += [p.x for p in s.test]
        # The merge key of the j-th test pair is its position in the seeded order.
        assert [cv_position(k, fold, j) for j in range(len(s.test))] == list(range(fold, 23, k))
    assert sorted(tested) == sorted(p.x for p in rel.pairs)  # each pair once, over the folds
    with pytest.raises(ValueError, match="too few for 5-fold cross-validation"):
        cv_split(Relation("tiny", rel.pairs[:6]), 5, 0)
