"""BATS 3.0 (Gladkova et al. 2016): a folder of category folders of relation files.

``BATS_3.0/4_Lexicographic_semantics/L02 [hypernyms - misc].txt`` holds lines
``source<TAB>answer1/answer2/...``. The relation is named after the bracketed part of the file
name (``hypernyms-misc``); the code (``L02``) and category go into the relation's source.
Underscores in words stand for spaces (``new_york``) and become spaces, unless
``underscores="keep"``.
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataFormatError
from ..types import DataSet, Pair, Relation
from ._common import check_exists, data_files, make_relation, read_text
from .pairs import parse_pairs_tsv

EXPECTED = "'word<TAB>answer1/answer2'"
_NAME = re.compile(r"^\s*(?P<code>[A-Z]\d+)?\s*\[(?P<name>[^\]]+)\]\s*$")


def relation_name(stem: str) -> tuple[str, str | None]:
    """``"L02 [hypernyms - misc]"`` -> ``("hypernyms-misc", "L02")``; other stems stay as they are."""
    m = _NAME.match(stem)
    if not m:
        return stem.strip(), None
    name = re.sub(r"\s*-\s*", "-", m["name"].strip())
    return re.sub(r"\s+", "_", name), m["code"]


def _space(word: str, underscores: str) -> str:
    return word.replace("_", " ") if underscores == "space" else word


def read_bats(path: str | Path, underscores: str = "space") -> DataSet:
    if underscores not in ("space", "keep"):
        raise ValueError(f"underscores must be 'space' or 'keep', got {underscores!r}")
    path = check_exists(path)
    files = data_files(path, (".txt",)) if path.is_dir() else [path]
    if not files:
        raise DataFormatError("no BATS relation files (*.txt) in this folder", path=path)
    relations: dict[str, Relation] = {}
    for f in files:
        name, code = relation_name(f.stem)
        if name in relations:
            raise DataFormatError(
                f"two files define relation {name!r}: {relations[name].source['path']} and {f}",
                path=path,
            )
        pairs, _ = parse_pairs_tsv(read_text(f), f, EXPECTED)
        pairs = [
            Pair(_space(p.x, underscores), tuple(_space(a, underscores) for a in p.answers))
            for p in pairs
        ]
        source = {"format": "bats", "path": str(f), "code": code, "title": f.stem}
        if path.is_dir() and f.parent != path:
            source["category"] = f.parent.name  # e.g. 4_Lexicographic_semantics
        relations[name] = make_relation(name, pairs, source, f)
    return DataSet("bats", relations=relations, path=str(path))
