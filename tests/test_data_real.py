"""The readers on the real public data in ``../shared/data`` (beside the repository), when it is
there: the counts must match the published sizes. Skipped with a clear reason otherwise."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from fvtrain.data import DataFormatError, Pair, detect_format, read, relation_level, split_all
from fvtrain.data.__main__ import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="module")
def shared() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} not present: real-file check skipped")
    return SHARED


def need(path: Path) -> Path:
    if not path.exists():
        pytest.skip(f"{path} not present: real-file check skipped")
    return path


def test_todd_function_vector_tasks(shared: Path) -> None:
    ds = read(need(shared / "function_vectors"))
    assert ds.format == "todd" and len(ds.relations) == 56 and ds.n_pairs == 87_967
    sizes = {n: len(r) for n, r in ds.relations.items()}
    assert {k: sizes[k] for k in ("antonym", "synonym", "country-capital", "present-past", "singular-plural",
                                  "english-french", "national_parks")} == {
        "antonym": 2398, "synonym": 2880, "country-capital": 197, "present-past": 293,
        "singular-plural": 205, "english-french": 4698, "national_parks": 451,
    }
    groups = Counter(r.source["group"] for r in ds.relations.values())
    assert groups == {"abstractive": 29, "extractive": 27}
    assert ds.relations["antonym"].pairs[0] == Pair("flawed", ("perfect",))
    # the README's distinct-input counts are what the splits see after deduplication
    small = ds.select(["national_parks", "product-company", "next_item", "country-capital"])
    splits = split_all(small, seed=0)
    assert {n: sum(map(len, (s.train, s.val, s.test))) for n, s in splits.items()} == {
        "national_parks": 420, "product-company": 494, "next_item": 217, "country-capital": 197,
    }


def test_google_analogy_questions(shared: Path) -> None:
    ds = read(need(shared / "google_analogy" / "questions-words.txt"))
    assert ds.format == "google"
    assert len(ds.analogies) == 19_544 and len(ds.relations) == 14
    per_section = Counter(a.relation for a in ds.analogies)
    assert per_section["capital-common-countries"] == 506 and per_section["gram9-plural-verbs"] == 870
    assert list(ds.relations)[0] == "capital-common-countries" and list(ds.relations)[-1] == "gram9-plural-verbs"
    assert len(ds.relations["capital-common-countries"]) == 23
    # a repeated input (Glendale, in Arizona and California) becomes one pair with two answers
    from fvtrain.data import dedupe

    glendale = [p for p in dedupe(ds.relations["city-in-state"]).pairs if p.x == "Glendale"]
    assert glendale == [Pair("Glendale", ("Arizona", "California"))]
    folder = read(shared / "google_analogy")  # words + phrases
    assert len(folder.analogies) == 19_544 + 3_218 and len(folder.relations) == 14 + 5
    assert any(a.a == "Albuquerque" and a.b == "Albuquerque Journal" for a in folder.analogies)


def test_bless(shared: Path) -> None:
    ds = read(need(shared / "bless"))
    assert ds.format == "bless"
    assert ds.n_pairs + len(ds.skipped) == 26_554
    assert {n: len(r) for n, r in ds.relations.items()} == {
        "hypernym": 1337, "meronym": 2943, "attribute": 2731, "event": 3824,
    }
    reasons = ds.skipped_reasons()
    assert reasons["BLESS 'coord' not read (pass keep=[..., 'coord'] to read it)"] == 3565
    assert sum(n for why, n in reasons.items() if "random control" in why) == 6702 + 3265 + 2187
    assert ds.relations["hypernym"].pairs[0] == Pair("alligator", ("animal",))
    assert len({p.x for p in ds.relations["hypernym"].pairs}) == 200


def test_semeval_2012_task2(shared: Path) -> None:
    root = need(shared / "semeval2012_task2")
    gold = read(root / "SemEval-2012-Gold-Ratings")
    assert gold.format == "semeval" and len(gold.relations) == 79 and gold.n_pairs == 3218
    assert len(gold.prototypicality) == 3218
    assert Counter(r.source["semeval_split"] for r in gold.relations.values()) == {"train": 10, "test": 69}
    assert Counter(r.source["class"] for r in gold.relations.values())["CLASS-INCLUSION"] == 5
    assert gold.relations["1a"].source["title"] == "CLASS-INCLUSION: Taxonomic"
    assert gold.prototypicality[0].pair == ("weapon", "spear") and gold.prototypicality[0].rating == 50.0
    # the complete package gives the same pairs, and the MaxDiff rule reproduces every gold rating
    complete = read(root / "SemEval-2012-Complete-Data-Package")
    assert len(complete.relations) == 79 and complete.n_pairs == 3218
    ratings = {(p.relation, p.pair): p.rating for p in complete.prototypicality}
    assert ratings == {(p.relation, p.pair): p.rating for p in gold.prototypicality}
    both = read(root)
    assert both.relations["4g"].source["paradigms"] == ["popular:shy", "right:bad", "believe:deny"]


def test_relsim(shared: Path) -> None:
    one = read(need(shared / "relsim_chen2017" / "relsim" / "relsim_mean_ratings.csv"))
    assert one.format == "relsim" and len(one.judgments) == 6194
    first = one.judgments[0]
    assert (first.first, first.second, first.rating, first.first_relation, first.comparison_type) == (
        ("candy", "sweets"), ("sofa", "chair"), 3.75, "3a", "within-subtype")
    assert len({j.first_relation for j in one.judgments} | {j.second_relation for j in one.judgments}) == 20
    assert Counter(j.comparison_type for j in one.judgments) == {
        "within-subtype": 4350, "between-subtype": 925, "between-type": 919}
    assert all(1 <= j.rating <= 7 for j in one.judgments)
    levels = relation_level(one.judgments)
    # 10 subtypes rated within themselves, 10 same-class pairs of subtypes, 45 across classes
    assert Counter(j.comparison_type for j in levels) == {"within-subtype": 10, "between-subtype": 10,
                                                          "between-type": 45}
    assert sum(j.meta["n_judgments"] for j in levels) == 6194
    folder = read(shared / "relsim_chen2017")
    assert len(folder.judgments) == 6194 + 2 * 500 + 36 and len(folder.skipped) == 2


def test_the_whole_shared_folder_is_several_formats(shared: Path) -> None:
    with pytest.raises(DataFormatError, match="several formats"):
        detect_format(shared)


def test_cli_json_on_real_files(shared: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--json", str(need(shared / "google_analogy" / "questions-words.txt"))]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["format"], len(out["relations"]), out["analogies"], out["judgments"]) == ("google", 14, 19_544, 0)
    assert main(["--json", str(shared / "bless")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sum(out["relations"].values()) + out["skipped"] == 26_554
