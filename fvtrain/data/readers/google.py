"""Mikolov et al. (2013) analogy questions (``questions-words.txt``, ``questions-phrases.txt``).

``: section`` lines open a section; every other line is ``A B C D``. Each section becomes a
relation (its distinct A:B and C:D pairs, in first-seen order) and every line an open-ended
analogy labelled with the section. Underscores join the words of phrases and become spaces,
unless ``underscores="keep"``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ..types import AnalogyItem, DataSet, Pair, Relation
from ._common import check_exists, data_files, lines, make_relation, read_text

EXPECTED = "': section-name' or four words 'A B C D'"


def parse_google(
    text: str, path: str | Path, underscores: str = "space"
) -> tuple[dict[str, list[Pair]], list[AnalogyItem]]:
    sections: dict[str, dict[tuple[str, str], None]] = {}
    items: list[AnalogyItem] = []
    section: str | None = None
    for lineno, line in lines(text):
        if not line.strip():
            continue
        if line.startswith(":"):
            section = line[1:].strip()
            if not section:
                raise DataFormatError.malformed(path, lineno, "a section name after ':'", line)
            sections.setdefault(section, {})
            continue
        words = line.split()
        if len(words) != 4:
            raise DataFormatError.malformed(path, lineno, EXPECTED, line)
        if section is None:
            raise DataFormatError.malformed(path, lineno, "a ': section' line before the first question", line)
        if underscores == "space":
            words = [w.replace("_", " ") for w in words]
        a, b, c, d = words
        sections[section].setdefault((a, b))
        sections[section].setdefault((c, d))
        items.append(AnalogyItem(a, b, c, (d,), relation=section, meta={"where": f"{path}:{lineno}"}))
    pairs = {name: [Pair(x, (y,)) for x, y in ps] for name, ps in sections.items()}
    return pairs, items


def read_google(path: str | Path, underscores: str = "space") -> DataSet:
    if underscores not in ("space", "keep"):
        raise ValueError(f"underscores must be 'space' or 'keep', got {underscores!r}")
    path = check_exists(path)
    files = data_files(path, (".txt",)) if path.is_dir() else [path]
    if not files:
        raise DataFormatError("no analogy files (*.txt) in this folder", path=path)
    relations: dict[str, Relation] = {}
    analogies: list[AnalogyItem] = []
    for f in files:
        sections, items = parse_google(read_text(f), f, underscores)
        if not items:
            raise DataFormatError("no analogy questions in this file", path=f)
        for name, pairs in sections.items():
            if name in relations:
                raise DataFormatError(f"section {name!r} appears in two files", path=f)
            relations[name] = make_relation(name, pairs, {"format": "google", "path": str(f)}, f)
        analogies.extend(items)
    return DataSet("google", relations=relations, analogies=analogies, path=str(path))
