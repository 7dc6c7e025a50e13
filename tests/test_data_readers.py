"""Readers on small fixtures written in each real format (tests/fixtures/data/), and the
errors bad input gives."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from fvtrain.data import (
    FORMATS,
    AnalogyItem,
    DataEncodingError,
    DataFormatError,
    Judgment,
    Pair,
    PrototypicalityRating,
    UnknownRelationError,
    detect_format,
    read,
    relation_level,
)

FIX = Path(__file__).resolve().parent / "fixtures" / "data"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# format detection
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "rel, fmt",
    [
        ("todd", "todd"),
        ("todd/abstractive/antonym.json", "todd"),
        ("bats", "bats"),
        ("bats/1_Inflectional_morphology/I01 [noun - plural_reg].txt", "bats"),
        ("google", "google"),
        ("google/questions-words.txt", "google"),
        ("semeval", "semeval"),
        ("semeval/SemEval-2012-Gold-Ratings", "semeval"),
        ("semeval/SemEval-2012-Gold-Ratings/Training/GoldRatings-1a.txt", "semeval"),
        ("semeval/SemEval-2012-Complete-Data-Package", "semeval"),
        ("bless", "bless"),
        ("bless/BLESS.txt", "bless"),
        ("relsim", "relsim"),
        ("relsim/relsim/relsim_mean_ratings.csv", "relsim"),
        ("relsim/transitivity/transitivity_mean_ratings.csv", "relsim"),
        ("multiple_choice", "multiple_choice"),
        ("multiple_choice/sat/test.jsonl", "multiple_choice"),
        ("pairs", "pairs"),
        ("pairs/antonym.tsv", "pairs"),
        ("pairs/capitals.csv", "pairs"),
        ("pairs/more.jsonl", "pairs"),
        ("analogies", "analogies"),
        ("analogies/analogies.jsonl", "analogies"),
    ],
)
def test_detect_format(rel: str, fmt: str) -> None:
    assert detect_format(FIX / rel) == fmt
    assert read(FIX / rel).format == fmt


def test_every_format_has_a_reader_and_detection_is_overridable() -> None:
    assert set(FORMATS) >= {"todd", "bats", "google", "semeval", "bless", "relsim", "multiple_choice",
                            "pairs", "analogies", "builtin"}
    # A BATS file is also a valid fvtrain pair file: forcing the format changes only the label.
    f = FIX / "bats/1_Inflectional_morphology/I01 [noun - plural_reg].txt"
    assert read(f, format="pairs").relations["I01 [noun - plural_reg]"].pairs[0] == Pair("album", ("albums",))
    assert read(f, format="BATS").format == "bats"  # format names are case-insensitive
    with pytest.raises(ValueError, match=r"unknown data format 'nope'; available: todd, bats"):
        read(f, format="nope")


def test_folder_with_several_formats_is_refused(tmp_path: Path) -> None:
    shutil.copytree(FIX / "todd", tmp_path / "todd")
    shutil.copytree(FIX / "google", tmp_path / "google")
    with pytest.raises(DataFormatError, match=r"several formats \(todd: 3 file\(s\).*google: 1 file\(s\)"):
        detect_format(tmp_path)
    # ... unless the format is named: then the reader takes its own files
    assert set(read(tmp_path / "google", "google").relations) == {"capital-common-countries", "gram8-plural"}


def test_unknown_file_and_empty_folder(tmp_path: Path) -> None:
    f = write(tmp_path / "notes.txt", "just some prose here\n")
    with pytest.raises(DataFormatError, match=r"notes.txt: cannot tell the data format .* pass one of: todd"):
        detect_format(f)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataFormatError, match=r"no data file of a known format here \(looked at 0 file"):
        read(tmp_path / "empty")


# --------------------------------------------------------------------------------------------
# each reader on its fixture
# --------------------------------------------------------------------------------------------


def test_todd() -> None:
    ds = read(FIX / "todd")
    assert list(ds.relations) == ["antonym", "country-capital", "choose_first_of_3"]
    ant = ds.relations["antonym"]
    assert len(ant) == 25  # a repeated input ("hot") is kept here and merged by dedupe()
    assert ant.pairs[0] == Pair("hot", ("cold",)) and ant.source["group"] == "abstractive"
    # key order does not matter (country-capital writes "output" first)
    assert ds.relations["country-capital"].pairs[0] == Pair("France", ("Paris",))
    # surrounding whitespace, such as a trailing "\n" in an output, is stripped
    assert ds.relations["choose_first_of_3"].pairs[1] == Pair("red, blue, green", ("red",))
    assert ds.relations["choose_first_of_3"].source["group"] == "extractive"


def test_bats() -> None:
    ds = read(FIX / "bats")
    assert list(ds.relations) == ["noun-plural_reg", "hypernyms-misc"]
    hyp = ds.relations["hypernyms-misc"]
    assert hyp.source["code"] == "L02" and hyp.source["category"] == "4_Lexicographic_semantics"
    assert hyp.pairs[0] == Pair("apple", ("fruit", "produce", "food"))
    assert hyp.pairs[1] == Pair("big cat", ("feline", "felid", "wild animal"))  # '_' joins words
    keep = read(FIX / "bats", underscores="keep").relations["hypernyms-misc"].pairs[1]
    assert keep == Pair("big_cat", ("feline", "felid", "wild_animal"))


def test_google() -> None:
    ds = read(FIX / "google/questions-words.txt")
    assert list(ds.relations) == ["capital-common-countries", "gram8-plural"]
    assert [p.x for p in ds.relations["capital-common-countries"].pairs] == ["Athens", "Baghdad", "Bangkok"]
    assert len(ds.analogies) == 6
    first = ds.analogies[0]
    assert (first.a, first.b, first.c, first.d) == ("Athens", "Greece", "Baghdad", ("Iraq",))
    assert first.relation == "capital-common-countries" and first.choices is None
    assert first.meta["where"].endswith("questions-words.txt:2")
    # selecting a relation keeps its analogies only
    sel = ds.select(["gram8-plural"])
    assert list(sel.relations) == ["gram8-plural"] and len(sel.analogies) == 3


def test_semeval_gold() -> None:
    ds = read(FIX / "semeval/SemEval-2012-Gold-Ratings")
    assert list(ds.relations) == ["1a", "2a"]
    r = ds.relations["1a"]
    assert r.source["title"] == "CLASS-INCLUSION: Taxonomic" and r.source["semeval_split"] == "train"
    assert ds.relations["2a"].source["semeval_split"] == "test"
    assert [p.x for p in r.pairs] == ["weapon", "bird", "tree", "vegetable", "oak"]
    assert ds.prototypicality[0] == PrototypicalityRating("1a", ("weapon", "spear"), 50.0)
    assert ds.prototypicality[-1] == PrototypicalityRating("2a", ("engine", "car"), -12.5)
    # min_rating drops the deliberately reversed pairs, and counts them
    pos = read(FIX / "semeval/SemEval-2012-Gold-Ratings", min_rating=0)
    assert len(pos.relations["1a"]) == 3 and len(pos.skipped) == 3
    assert pos.skipped_reasons() == {"rating below min_rating=0": 3}


def test_semeval_both_packages_and_paradigms() -> None:
    ds = read(FIX / "semeval")  # the gold package wins; metadata from the complete one
    assert ds.relations["1a"].source["paradigms"] == ["flower:tulip", "emotion:rage", "poem:sonnet"]
    assert len(ds.prototypicality) == 8


def test_semeval_complete_package_computes_maxdiff_ratings() -> None:
    ds = read(FIX / "semeval/SemEval-2012-Complete-Data-Package")
    got = {p.pair: p.rating for p in ds.prototypicality}
    # most% - least% over the answers that showed the pair (an empty "most" counts as no choice)
    assert got == {
        ("weapon", "spear"): 66.7,  # shown 3, most 2
        ("bird", "robin"): 33.3,  # shown 3, most 1
        ("tree", "oak"): 0.0,
        ("vegetable", "carrot"): -66.7,  # shown 3, least 2
        ("oak", "tree"): -50.0,  # shown 4, least 2
    }


def test_bless_skips_are_counted_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="fvtrain.data"):
        ds = read(FIX / "bless/BLESS.txt")
    assert {n: [(p.x, p.y) for p in r.pairs] for n, r in ds.relations.items()} == {
        "hypernym": [("alligator", "animal"), ("alligator", "reptile"), ("ax", "tool")],
        "meronym": [("alligator", "mouth"), ("ax", "handle")],
        "attribute": [("alligator", "aggressive"), ("alligator", "big")],
        "event": [("alligator", "swim")],
    }
    assert ds.n_pairs + len(ds.skipped) == 12  # every line is either read or counted
    assert ds.skipped[0] == (f"{FIX / 'bless/BLESS.txt'}:3", "BLESS 'coord' not read (pass keep=[..., 'coord'] to read it)")
    assert "skipped 1 item in" in caplog.text and "'random-n' is a random control" in caplog.text
    with_coord = read(FIX / "bless", keep=["hyper", "coord"])
    assert list(with_coord.relations) == ["hypernym", "cohyponym"] and len(with_coord.skipped) == 8


def test_relsim_layouts() -> None:
    one = read(FIX / "relsim/relsim/relsim_mean_ratings.csv")
    assert len(one.judgments) == 4 and one.skipped == []
    assert one.judgments[0] == Judgment(("candy", "sweets"), ("sofa", "chair"), 3.75, "pair", "within-subtype", "3a", "3a")
    assert one.judgments[0].meta["num_ratings"] == 12
    folder = read(FIX / "relsim")
    assert len(folder.judgments) == 4 + 2 + 2  # relsim + symmetry (both orders) + transitivity
    back = [j for j in folder.judgments if j.meta.get("direction") == "backward"][0]
    assert (back.first, back.second, back.rating) == (("yawn", "boredom"), ("license", "permission"), 3.74)
    assert (back.first_relation, back.second_relation) == ("10b", "10a")
    trans = [j for j in folder.judgments if j.comparison_type == "analogy"]
    assert trans[0].first == ("hat", "head") and trans[0].second == ("mask", "face") and trans[0].rating == 6.65
    assert folder.skipped == [(str(FIX / "relsim/symmetry/symmetry_raw_data.csv"),
                               "CSV header matches no ratings layout (e.g. raw per-participant data)")]
    # relation level: mean over the pairs of each unordered relation pair
    levels = {(j.first_relation, j.second_relation): j.rating for j in relation_level(one.judgments)}
    assert levels == {("1a", "1a"): pytest.approx(4.72727272727), ("1a", "3a"): 2.5, ("3a", "3a"): 3.75}


def test_relation_level_csv(tmp_path: Path) -> None:
    f = write(tmp_path / "rel.csv", "relation1,relation2,rating\nantonym,synonym,2.5\n")
    (j,) = read(f).judgments
    assert j.level == "relation" and (j.first_relation, j.second_relation, j.rating) == ("antonym", "synonym", 2.5)


def test_multiple_choice_jsonl() -> None:
    ds = read(FIX / "multiple_choice")
    assert len(ds.analogies) == 3
    by_split = {it.meta["split"] for it in ds.analogies}
    assert by_split == {"val", "test"}
    sat = [it for it in ds.analogies if it.meta["split"] == "val"][0]
    assert (sat.a, sat.b, sat.c, sat.d, sat.answer_index) == ("raphael", "painter", "marx", ("philosopher",), 2)
    assert sat.choices[0] == ("andersen", "plato") and len(sat.choices) == 4
    assert [it.relation for it in ds.analogies if it.meta["split"] == "test"] == ["antonym", None]


def test_fvtrain_pairs_formats() -> None:
    ds = read(FIX / "pairs")
    assert ds.relations["antonym"].pairs[2] == Pair("big", ("small", "little"))
    src = ds.relations["antonym"].source
    assert src["comments"] == ["antonyms written for the fixtures", "source: hand-written"]
    assert src["title"] == "antonyms written for the fixtures" and src["source"] == "hand-written"
    # the relation column / key groups rows of several files into one relation
    assert [p.x for p in ds.relations["country-capital"].pairs] == ["France", "Japan", "Italy"]
    assert ds.relations["plural"].pairs[1:] == (Pair("cat", ("cats", "kitties")), Pair("mouse", ("mice", "mouses")))
    # a file without a relation column is one relation named after the file
    assert list(read(FIX / "pairs/antonym.tsv").relations) == ["antonym"]


def test_fvtrain_analogies_jsonl() -> None:
    items = read(FIX / "analogies/analogies.jsonl").analogies
    assert items[0] == AnalogyItem("hot", "cold", "up", ("down",), distance="near", relation="antonym")
    # candidate D words become (C, D) pairs; the gold D is found among them ...
    assert items[1].choices == (("kitten", "mouse"), ("kitten", "cat"), ("kitten", "tree"))
    assert items[1].answer_index == 1 and items[1].d == ("cat", "feline")
    # ... or inserted when only distractors are given, at a position fixed by the item's words
    assert items[2].choices == (("Japan", "Tokyo"), ("Japan", "Kyoto"), ("Japan", "Osaka"))
    assert items[2].answer_index == 0 and items[2].meta["source"] == "fixture"
    again = read(FIX / "analogies/analogies.jsonl").analogies[2]
    assert again.choices == items[2].choices


def test_select_unknown_relation_lists_the_available_ones() -> None:
    ds = read(FIX / "todd")
    assert list(ds.select(["country-capital", "antonym"]).relations) == ["country-capital", "antonym"]
    assert ds.select(None) is ds and ds.select([]) is ds
    with pytest.raises(UnknownRelationError) as err:
        ds.select(["antonyms"])
    assert str(err.value) == (
        "unknown relation 'antonyms'; did you mean 'antonym'?; "
        "available: antonym, country-capital, choose_first_of_3"
    )
    assert isinstance(err.value, KeyError) and isinstance(err.value, ValueError)
    with pytest.raises(UnknownRelationError, match="unknown relation 'zzz'; available: antonym"):
        read(FIX / "todd", relations=["zzz"])


# --------------------------------------------------------------------------------------------
# bad input: every error names the file (and line) and says what was expected
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, text, fmt, message",
    [
        (
            "I01 [noun - plural].txt",
            "cat\tcats\ndog\tdogs\nfoo\n",
            "bats",
            ":3: expected 'word<TAB>answer1/answer2', got 'foo'",
        ),
        ("antonym.tsv", "# c\nhot\tcold\nup\t\n", "pairs", ":3: expected 'word<TAB>answer1/answer2', got 'up\\t'"),
        (
            "questions-words.txt",
            ": family\nboy girl brother sister\nboy girl dad\n",
            "google",
            ":3: expected ': section-name' or four words 'A B C D', got 'boy girl dad'",
        ),
        (
            "questions-words.txt",
            "boy girl brother sister\n",
            "google",
            ":1: expected a ': section' line before the first question, got 'boy girl brother sister'",
        ),
        (
            "BLESS.txt",
            "ax-n\ttool\thyper\ttool-n\nax-n\ttool\thyper\ttool\n",
            "bless",
            ":2: expected 'concept-n<TAB>class<TAB>relation<TAB>relatum-pos' (pos one of n, v, j), "
            "got 'ax-n\\ttool\\thyper\\ttool'",
        ),
        (
            "BLESS.txt",
            "ax-n\ttool\tsynonym\tchopper-n\n",
            "bless",
            ":1: expected 'concept-n<TAB>class<TAB>relation<TAB>relatum-pos'",
        ),
        (
            "GoldRatings-1a.txt",
            "# header\n 50.0 \"weapon:spear\"\n 38.8 bird:robin\n",
            "semeval",
            ":3: expected ' 50.0 \"word1:word2\"' (a rating, then the pair in quotes), got ' 38.8 bird:robin'",
        ),
        (
            "ratings.csv",
            "relation1,relation2,comparison_type,pair1_word1,pair1_word2,pair2_word1,pair2_word2,mean_rating,num_ratings\n"
            "3a,3a,within-subtype,candy,sweets,sofa,chair,3.75,12\n"
            "3a,3a,within-subtype,candy,sweets,sofa,chair,high,12\n",
            "relsim",
            ":3: expected a number in column 'mean_rating', got 'high'",
        ),
        ("ratings.csv", "a,b,score\n1,2,3\n", "relsim", ":1: expected a header 'relation1,relation2,comparison_type"),
        (
            "test.jsonl",
            '{"stem": ["a", "b"], "answer": 0, "choice": [["c", "d"]]}\n{"stem": ["a", "b"], "answer": 3, "choice": [["c", "d"]]}\n',
            "multiple_choice",
            ':2: expected {"stem": [a, b], "answer": i, "choice": [[c, d], ...]} with answer indexing choice',
        ),
        ("test.jsonl", '{"stem": ["a", "b"]\n', "multiple_choice", ":1: invalid JSON"),
        (
            "analogies.jsonl",
            '{"a": "a", "b": "b", "c": "c", "d": "d"}\n\n{"a": "a", "b": "b", "c": "c", "d": "d", "distance": "close"}\n',
            "analogies",
            ":3: expected 'distance' to be 'near' or 'far', got 'close'",
        ),
        ("analogies.jsonl", '{"a": "a", "b": "b", "c": "c"}\n', "analogies", ':1: expected {"a": ..., "b": ..., "c": ..., "d": '),
        ("pairs.csv", "word,meaning\nhot,cold\n", "pairs", ":1: expected a header row with columns 'x,y' (optionally 'relation'), got 'word,meaning'"),
        ("pairs.jsonl", '{"x": "hot", "y": "cold"}\n{"x": "up"}\n', "pairs", ':2: expected {"x": "word", "y": "answer" or ["answer1", ...]}'),
    ],
)
def test_malformed_line_names_file_line_and_expectation(
    tmp_path: Path, name: str, text: str, fmt: str, message: str
) -> None:
    f = write(tmp_path / name, text)
    with pytest.raises(DataFormatError) as err:
        read(f, format=fmt)
    assert str(err.value).startswith(f"{f}{message}")
    assert err.value.path == str(f) and err.value.line == int(message.split(":")[1])


def test_todd_bad_element_reports_its_line(tmp_path: Path) -> None:
    items = [{"input": "hot", "output": "cold"}, {"input": "up", "output": "down"}, {"input": "big"}]
    f = write(tmp_path / "antonym.json", json.dumps(items, indent=4))
    with pytest.raises(DataFormatError) as err:
        read(f)
    # json.dump(indent=4) puts element i on line 2 + 4 * i
    assert str(err.value) == (
        f"{f}:10: expected an object {{\"input\": \"...\", \"output\": \"...\"}} with non-empty strings, "
        "got \"{'input': 'big'}\""
    )
    f2 = write(tmp_path / "broken.json", '[\n  {"input": "a", "output": "b"},\n  {"input": "c" "output": "d"}\n]')
    with pytest.raises(DataFormatError, match=r"broken.json:3: invalid JSON: Expecting ',' delimiter"):
        read(f2, "todd")


def test_empty_relations_are_errors(tmp_path: Path) -> None:
    with pytest.raises(DataFormatError, match=r"antonym.json: relation 'antonym' is empty: the file holds no pairs"):
        read(write(tmp_path / "antonym.json", "[]"))
    with pytest.raises(DataFormatError, match=r"antonym.tsv: relation 'antonym' is empty"):
        read(write(tmp_path / "antonym.tsv", "# only a comment\n\n"))
    with pytest.raises(DataFormatError, match=r"relation 'noun-plural' is empty"):
        read(write(tmp_path / "bats" / "I01 [noun - plural].txt", ""), "bats")
    with pytest.raises(DataFormatError, match=r"BLESS.txt: relation 'meronym' is empty"):
        read(write(tmp_path / "BLESS.txt", "ax-n\ttool\thyper\ttool-n\n"), "bless")


def test_encoding_errors_name_the_file_and_ask_for_utf8(tmp_path: Path) -> None:
    f = write(tmp_path / "french.tsv", "caf\xe9\tcoffee\n".encode("latin-1"))
    with pytest.raises(DataEncodingError) as err:
        read(f)
    assert str(err.value) == (
        f"{f}: cannot decode byte 0xe9 at offset 3: data files must be UTF-8 "
        "(re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`)"
    )
    assert isinstance(err.value, DataFormatError)
    # a UTF-8 byte-order mark is fine
    assert read(write(tmp_path / "bom.tsv", "\ufeffhot\tcold\n".encode("utf-8"))).relations["bom"].pairs[0].x == "hot"


def test_missing_path_is_named(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "questions-words.txt"
    for call in (lambda: read(missing), lambda: detect_format(missing), lambda: read(missing, "google")):
        with pytest.raises(FileNotFoundError, match=rf"data path not found: {missing}"):
            call()


def test_duplicate_relation_names_across_subfolders_are_refused(tmp_path: Path) -> None:
    write(tmp_path / "a" / "antonym.json", '[{"input": "a", "output": "b"}]')
    write(tmp_path / "b" / "antonym.json", '[{"input": "c", "output": "d"}]')
    with pytest.raises(DataFormatError, match=r"two task files define relation 'antonym'"):
        read(tmp_path)
