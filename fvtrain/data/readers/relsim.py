"""Human relational-similarity ratings in the CSV layouts of Chen, Peterson & Griffiths (2017).

* ``relsim_mean_ratings.csv`` (Experiment 1): ``relation1,relation2,comparison_type,
  pair1_word1,pair1_word2,pair2_word1,pair2_word2,mean_rating,num_ratings`` (1-7 scale);
* ``symmetry_mean_ratings.csv`` (Experiment 2): the same pairs with ``forward_rating,forward_n,
  backward_rating,backward_n``; each row gives two judgments, one per presentation order;
* ``transitivity_mean_ratings.csv`` (Experiment 3): ``wordA,wordB,wordC,wordD,mean_rating,
  num_ratings``, ratings of A:B::C:D analogies;
* a relation-level file ``relation1,relation2,rating`` (fvtrain's own layout).

A folder is searched for CSV files in these layouts; other CSV files (the raw per-participant
data) are skipped and counted.
"""

from __future__ import annotations

import csv
import io
from collections import Counter, defaultdict
from pathlib import Path

from ..errors import DataFormatError
from ..types import DataSet, Judgment
from ._common import Skips, check_exists, data_files, read_text

PAIR_COLS = ("pair1_word1", "pair1_word2", "pair2_word1", "pair2_word2")
LAYOUTS: dict[str, tuple[str, ...]] = {
    "relsim": ("relation1", "relation2", "comparison_type", *PAIR_COLS, "mean_rating", "num_ratings"),
    "symmetry": ("relation1", "relation2", "comparison_type", *PAIR_COLS,
                 "forward_rating", "forward_n", "backward_rating", "backward_n"),
    "transitivity": ("wordA", "wordB", "wordC", "wordD", "mean_rating", "num_ratings"),
    "relation": ("relation1", "relation2", "rating"),
}


def layout_of(header: list[str]) -> str | None:
    """The layout a header matches; raw per-participant files (``sub_num``, ``RT``) match none."""
    cols = {h.strip() for h in header}
    if "sub_num" in cols:
        return None
    for name, required in LAYOUTS.items():
        if set(required) <= cols and not (name == "relation" and cols & set(PAIR_COLS)):
            return name
    return None


def _expected_header() -> str:
    return " or ".join(f"'{','.join(cols)}'" for cols in LAYOUTS.values())


def parse_relsim_csv(text: str, path: Path) -> list[Judgment]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    layout = layout_of(header)
    if layout is None:
        raise DataFormatError.malformed(path, 1, f"a header {_expected_header()}", ",".join(header))
    out: list[Judgment] = []

    def number(row: dict, col: str, lineno: int) -> float:
        try:
            return float(row[col])
        except (TypeError, ValueError):
            raise DataFormatError.malformed(path, lineno, f"a number in column '{col}'", str(row[col])) from None

    def word(row: dict, col: str, lineno: int) -> str:
        w = (row.get(col) or "").strip()
        if not w:
            got = ",".join(map(str, row.values()))
            raise DataFormatError.malformed(path, lineno, f"a word in column '{col}'", got)
        return w

    for row in reader:
        lineno = reader.line_num
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue
        where = f"{path}:{lineno}"
        if layout == "relation":
            out.append(Judgment((), (), number(row, "rating", lineno), "relation",
                                first_relation=word(row, "relation1", lineno),
                                second_relation=word(row, "relation2", lineno), meta={"where": where}))
            continue
        if layout == "transitivity":
            a, b, c, d = (word(row, k, lineno) for k in ("wordA", "wordB", "wordC", "wordD"))
            out.append(Judgment((a, b), (c, d), number(row, "mean_rating", lineno), "pair", "analogy",
                                meta={"where": where, "num_ratings": number(row, "num_ratings", lineno)}))
            continue
        p1w1, p1w2, p2w1, p2w2 = (word(row, k, lineno) for k in PAIR_COLS)
        common = {
            "comparison_type": (row.get("comparison_type") or "").strip() or None,
            "first_relation": word(row, "relation1", lineno),
            "second_relation": word(row, "relation2", lineno),
        }
        if layout == "relsim":
            out.append(Judgment((p1w1, p1w2), (p2w1, p2w2), number(row, "mean_rating", lineno), "pair",
                                meta={"where": where, "num_ratings": number(row, "num_ratings", lineno)}, **common))
        else:  # symmetry: forward = pair1 shown first, backward = pair2 shown first
            out.append(Judgment((p1w1, p1w2), (p2w1, p2w2), number(row, "forward_rating", lineno), "pair",
                                meta={"where": where, "direction": "forward",
                                      "num_ratings": number(row, "forward_n", lineno)}, **common))
            out.append(Judgment((p2w1, p2w2), (p1w1, p1w2), number(row, "backward_rating", lineno), "pair",
                                comparison_type=common["comparison_type"],
                                first_relation=common["second_relation"],
                                second_relation=common["first_relation"],
                                meta={"where": where, "direction": "backward",
                                      "num_ratings": number(row, "backward_n", lineno)}))
    return out


def read_relsim(path: str | Path) -> DataSet:
    path = check_exists(path)
    if not path.is_dir():
        judgments = parse_relsim_csv(read_text(path), path)
        if not judgments:
            raise DataFormatError("no ratings: the file has a header but no rows", path=path)
        return DataSet("relsim", judgments=judgments, path=str(path))
    judgments: list[Judgment] = []
    skips = Skips()
    for f in data_files(path, (".csv",)):
        text = read_text(f)
        header = next(csv.reader(io.StringIO(text)), [])
        if layout_of(header) is None:
            skips.add(str(f), "CSV header matches no ratings layout (e.g. raw per-participant data)")
            continue
        judgments.extend(parse_relsim_csv(text, f))
    if not judgments:
        raise DataFormatError(f"no CSV file with a header {_expected_header()} in this folder", path=path)
    return DataSet("relsim", judgments=judgments, skipped=skips.log(), path=str(path))


def relation_level(judgments: list[Judgment]) -> list[Judgment]:
    """Mean rating per unordered pair of relations, from pair-level judgments that name them.

    This is the human side of relation-level alignment (mean similarity of their pairs).
    """
    groups: dict[tuple[str, str], list[float]] = defaultdict(list)
    kinds: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for j in judgments:
        if j.level == "pair" and j.first_relation and j.second_relation:
            a, b = sorted((j.first_relation, j.second_relation))
            groups[a, b].append(j.rating)
            kinds[a, b][j.comparison_type] += 1
    return [
        Judgment((), (), sum(v) / len(v), "relation", kinds[a, b].most_common(1)[0][0], a, b,
                 {"n_judgments": len(v)})
        for (a, b), v in sorted(groups.items())
    ]
