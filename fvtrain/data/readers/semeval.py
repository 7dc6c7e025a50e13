"""SemEval-2012 Task 2 (Jurgens et al. 2012): 79 relation subtypes with rated word pairs.

Reads either package, or the folder holding both:

* ``SemEval-2012-Gold-Ratings/{Training,Testing}/GoldRatings-1a.txt``: lines `` 50.0 "weapon:spear"``
  (the gold prototypicality rating, -100..100, then the pair);
* ``SemEval-2012-Complete-Data-Package/{Training,Testing}/Phase1Answers-1a.txt``: lines
  ``"weapon:spear"``; the ratings are then computed from ``Phase2Answers`` with the MaxDiff rule
  of ``maxdiff_to_scale.pl`` (percent chosen most illustrative minus percent chosen least).

A relation is named by its subtype id (``1a``, as in the relational-similarity data); its class
and subtype names come from ``subcategories-list.txt`` (``1, a, CLASS-INCLUSION, Taxonomic``),
its definition and paradigm pairs from ``subcategories-definitions.txt`` and
``subcategories-paradigms.txt`` when present. Every pair is kept by default, including the
deliberately reversed ones with negative ratings; ``min_rating`` drops (and counts) pairs rated
below it.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from ..errors import DataFormatError
from ..types import DataSet, Pair, PrototypicalityRating, Relation
from ._common import Skips, check_exists, lines, make_relation, read_text

_ID = re.compile(r"-(?P<id>\d+[a-z])\.txt$")
_GOLD = re.compile(r'^\s*(?P<rating>-?\d+(?:\.\d+)?)\s+"(?P<pair>[^"]+)"\s*$')
_ANSWER = re.compile(r'^\s*"(?P<pair>[^"]+)"\s*$')
GOLD_EXPECTED = "' 50.0 \"word1:word2\"' (a rating, then the pair in quotes)"
ANSWER_EXPECTED = "'\"word1:word2\"'"
LIST_EXPECTED = "'1, a, CLASS-NAME, Subtype name'"


def subtype_sort_key(sid: str) -> tuple[int, str]:
    return int(sid[:-1]), sid[-1]


def _split_pair(text: str, path: Path, lineno: int, line: str, expected: str) -> tuple[str, str]:
    parts = [w.strip() for w in text.split(":")]
    if len(parts) != 2 or not all(parts):
        raise DataFormatError.malformed(path, lineno, expected, line)
    return parts[0], parts[1]


def read_subcategories(path: Path) -> dict[str, tuple[str, str, str]]:
    """``subcategories-*.txt``: subtype id -> ``(class, subtype, rest of the line)``.

    The rest is the definition in ``subcategories-definitions.txt`` and the paradigm pairs in
    ``subcategories-paradigms.txt``.
    """
    out: dict[str, tuple[str, str, str]] = {}
    for lineno, line in lines(read_text(path)):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",", 4)]
        if len(parts) < 4 or not parts[0].isdigit() or not re.fullmatch(r"[a-z]", parts[1]):
            raise DataFormatError.malformed(path, lineno, LIST_EXPECTED, line)
        out[parts[0] + parts[1]] = (parts[2], parts[3], parts[4] if len(parts) > 4 else "")
    return out


def parse_gold(text: str, path: Path) -> list[tuple[str, str, float]]:
    out = []
    for lineno, line in lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _GOLD.match(line)
        if not m:
            raise DataFormatError.malformed(path, lineno, GOLD_EXPECTED, line)
        a, b = _split_pair(m["pair"], path, lineno, line, GOLD_EXPECTED)
        out.append((a, b, float(m["rating"])))
    return out


def parse_answers(text: str, path: Path) -> list[tuple[str, str]]:
    out = []
    for lineno, line in lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        m = _ANSWER.match(line)
        if not m:
            raise DataFormatError.malformed(path, lineno, ANSWER_EXPECTED, line)
        out.append(_split_pair(m["pair"], path, lineno, line, ANSWER_EXPECTED))
    return out


def maxdiff_scores(text: str, path: Path) -> dict[tuple[str, str], float]:
    """Gold-style ratings from Phase2 MaxDiff answers (the rule of ``maxdiff_to_scale.pl``)."""
    shown: Counter = Counter()
    most: Counter = Counter()
    least: Counter = Counter()
    expected = "7 tab-separated quoted fields: pair1..pair4, least, most, relation"
    for lineno, line in lines(text):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip().strip('"') for f in line.split("\t")]
        if len(fields) != 7:
            raise DataFormatError.malformed(path, lineno, expected, line)
        for f in fields[:4]:
            shown[_split_pair(f, path, lineno, line, expected)] += 1
        # A few answers leave "least" or "most" empty: the pairs were still shown.
        if fields[4]:
            least[_split_pair(fields[4], path, lineno, line, expected)] += 1
        if fields[5]:
            most[_split_pair(fields[5], path, lineno, line, expected)] += 1
    # Percentages first, then their difference, then one decimal: the script's order of
    # operations, which decides the rounding of ties such as 18.75.
    return {p: round(most[p] * 100 / n - least[p] * 100 / n, 1) for p, n in shown.items()}


def _find(root: Path, pattern: str) -> list[Path]:
    return sorted(root.rglob(pattern), key=lambda p: (len(p.parts), str(p)))


def _near(folder: Path, name: str) -> Path:
    """The folder or nearest ancestor (up to 3 levels) holding ``name``: the subtype lists sit
    at the package root, above ``Training/`` and ``Training/Phase1Answers/``."""
    for candidate in [folder, *folder.parents][:4]:
        if (candidate / name).is_file():
            return candidate
    return folder


def _subtype_id(path: Path) -> str:
    m = _ID.search(path.name)
    if not m:
        raise DataFormatError(
            "cannot tell the subtype from the file name (expected e.g. 'GoldRatings-1a.txt')", path=path
        )
    return m["id"]


def read_semeval(path: str | Path, min_rating: float | None = None) -> DataSet:
    path = check_exists(path)
    root = path if path.is_dir() else path.parent
    if path.is_dir():
        gold, answers = _find(root, "GoldRatings-*.txt"), _find(root, "Phase1Answers-*.txt")
        meta_root = root if _find(root, "subcategories-list.txt") else _near(root, "subcategories-list.txt")
    else:
        gold = [path] if path.name.startswith("GoldRatings-") else []
        answers = [path] if path.name.startswith("Phase1Answers-") else []
        if not gold and not answers:
            raise DataFormatError(
                "expected a SemEval-2012 Task 2 folder, a GoldRatings-*.txt or a Phase1Answers-*.txt file",
                path=path,
            )
        meta_root = _near(root, "subcategories-list.txt")
    lists = _find(meta_root, "subcategories-list.txt")
    names = read_subcategories(lists[0]) if lists else {}
    defs = _find(meta_root, "subcategories-definitions.txt")
    definitions = read_subcategories(defs[0]) if defs else {}
    pars = _find(meta_root, "subcategories-paradigms.txt")
    paradigms = read_subcategories(pars[0]) if pars else {}

    # Rated pairs per subtype: the gold files when present, else Phase1 answers + MaxDiff.
    rated: dict[str, tuple[Path, list[tuple[str, str, float | None]]]] = {}
    if gold:
        for f in gold:
            rated.setdefault(_subtype_id(f), (f, parse_gold(read_text(f), f)))
    elif answers:
        # The MaxDiff answers sit in a sibling folder: look from the package root.
        phase2 = {_subtype_id(f): f for f in reversed(_find(meta_root, "Phase2Answers-*.txt"))}
        for f in answers:
            sid = _subtype_id(f)
            scores = maxdiff_scores(read_text(phase2[sid]), phase2[sid]) if sid in phase2 else {}
            rated.setdefault(sid, (f, [(a, b, scores.get((a, b))) for a, b in parse_answers(read_text(f), f)]))
    else:
        raise DataFormatError(
            "no GoldRatings-*.txt or Phase1Answers-*.txt files: not a SemEval-2012 Task 2 folder", path=path
        )

    relations: dict[str, Relation] = {}
    ratings: list[PrototypicalityRating] = []
    skips = Skips()
    for sid in sorted(rated, key=subtype_sort_key):
        f, rows = rated[sid]
        pairs = []
        for a, b, r in rows:
            if min_rating is not None and (r is None or r < min_rating):
                skips.add(str(f), f"rating below min_rating={min_rating}")
                continue
            pairs.append(Pair(a, (b,)))
            if r is not None:
                ratings.append(PrototypicalityRating(sid, (a, b), r))
        source: dict = {"format": "semeval", "id": sid, "path": str(f)}
        if sid in names:
            cls, sub = names[sid][:2]
            source.update({"class": cls, "subtype": sub, "title": f"{cls}: {sub}"})
        if definitions.get(sid, ("", "", ""))[2]:
            source["definition"] = definitions[sid][2]
        if sid in paradigms:
            # one upstream line separates two paradigms with '.' instead of ','
            source["paradigms"] = re.findall(r"[^\s,.:]+:[^\s,.:]+", paradigms[sid][2])
        parent = f.parent.name.lower()
        if parent in ("training", "testing"):
            source["semeval_split"] = "train" if parent == "training" else "test"
        relations[sid] = make_relation(sid, pairs, source, f)
    return DataSet("semeval", relations=relations, prototypicality=ratings, skipped=skips.log(), path=str(path))
