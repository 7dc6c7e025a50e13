"""fvtrain's own simple formats: relation pairs as TSV, CSV or JSONL, analogies as JSONL.

* TSV: ``x<TAB>y1/y2/...`` per line, ``#`` starts a comment line; the file name is the relation.
* CSV: a header with ``x`` and ``y`` columns (``input``/``output`` and ``source``/``target`` are
  accepted too) and an optional ``relation`` column; ``y`` may hold ``y1/y2``.
* JSONL: ``{"x": ..., "y": "..." or [...], "relation"?: ...}`` per line.
* analogies JSONL: ``{"a", "b", "c", "d" (str or list), "choices"?, "distance"?, "relation"?}``;
  any other key is kept in ``AnalogyItem.meta``.

A file without a relation column or key is one relation named after the file.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
from pathlib import Path

from ..errors import DataFormatError
from ..types import AnalogyItem, DataSet, Pair, Relation
from ._common import (
    check_exists,
    data_files,
    iter_jsonl,
    lines,
    make_relation,
    read_text,
    split_answers,
)

PAIR_SUFFIXES = (".tsv", ".csv", ".jsonl")
TSV_EXPECTED = "'word<TAB>answer1/answer2'"
X_COLUMNS = ("x", "input", "source", "word")
Y_COLUMNS = ("y", "output", "target", "answer", "answers")


def parse_pair_line(line: str, path: str | Path, lineno: int, expected: str = TSV_EXPECTED) -> Pair:
    """``word<TAB>answer1/answer2``; two whitespace-separated words are accepted without a tab."""
    parts = [p.strip() for p in line.split("\t")] if "\t" in line else line.split()
    while len(parts) > 2 and not parts[-1]:  # trailing tabs
        parts.pop()
    answers = split_answers(parts[1]) if len(parts) == 2 else ()
    if len(parts) != 2 or not parts[0] or not answers:
        raise DataFormatError.malformed(path, lineno, expected, line)
    return Pair(parts[0], answers)


_KEY_VALUE = re.compile(r"^(?P<key>[A-Za-z_]+):\s*(?P<value>.+)$")
COMMENT_KEYS = ("group", "source", "license", "licence", "citation", "url", "author", "description")


def comment_metadata(comments: list[str]) -> dict:
    """Source notes from a pair file's comments: ``# group: lexical semantics`` -> ``{"group": ...}``
    (for the keys in ``COMMENT_KEYS``); every comment line is kept under ``"comments"``, the
    first also as ``"title"``."""
    meta: dict = {"comments": comments} if comments else {}
    if comments:
        meta["title"] = comments[0]
    for c in comments:
        m = _KEY_VALUE.match(c)
        if m and m["key"].lower() in COMMENT_KEYS:
            meta.setdefault(m["key"].lower(), m["value"].strip())
    return meta


def parse_pairs_tsv(text: str, path: str | Path, expected: str = TSV_EXPECTED) -> tuple[list[Pair], list[str]]:
    """Pairs and the comment lines of a pair TSV (comments may carry notes on the source)."""
    pairs, comments = [], []
    for lineno, line in lines(text):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped.startswith("#"):
            comments.append(stripped.lstrip("#").strip())
            continue
        pairs.append(parse_pair_line(line, path, lineno, expected))
    return pairs, comments


def _relations_from_rows(rows: dict[str, list[Pair]], fmt: str, path: Path) -> dict[str, Relation]:
    return {
        name: make_relation(name, pairs, {"format": fmt, "path": str(path)}, path)
        for name, pairs in rows.items()
    }


def read_pairs_file(path: Path) -> dict[str, Relation]:
    text = read_text(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        rows: dict[str, list[Pair]] = {}
        for lineno, obj in iter_jsonl(text, path):
            x, y = obj.get("x", obj.get("input")), obj.get("y", obj.get("answers", obj.get("output")))
            answers = [y] if isinstance(y, str) else y
            ok = (
                isinstance(x, str) and x.strip() and isinstance(answers, list) and answers
                and all(isinstance(a, str) and a.strip() for a in answers)
            )
            if not ok:
                raise DataFormatError.malformed(
                    path, lineno, '{"x": "word", "y": "answer" or ["answer1", ...]}', str(obj)
                )
            name = str(obj.get("relation") or path.stem)
            rows.setdefault(name, []).append(Pair(x.strip(), tuple(a.strip() for a in answers)))
        if not rows:
            raise DataFormatError("no pairs: the file is empty", path=path)
        return _relations_from_rows(rows, "pairs", path)
    if suffix == ".csv":
        return _read_pairs_csv(text, path)
    pairs, comments = parse_pairs_tsv(text, path)
    source = {"format": "pairs", "path": str(path), **comment_metadata(comments)}
    return {path.stem: make_relation(path.stem, pairs, source, path)}


def _read_pairs_csv(text: str, path: Path) -> dict[str, Relation]:
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    cols = [h.strip().lower() for h in header or []]
    xi = next((cols.index(c) for c in X_COLUMNS if c in cols), None)
    yi = next((cols.index(c) for c in Y_COLUMNS if c in cols), None)
    if xi is None or yi is None:
        raise DataFormatError.malformed(
            path, 1, "a header row with columns 'x,y' (optionally 'relation')", ",".join(header or [])
        )
    ri = cols.index("relation") if "relation" in cols else None
    rows: dict[str, list[Pair]] = {}
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        lineno = reader.line_num
        try:
            x, answers = row[xi].strip(), split_answers(row[yi])
            name = row[ri].strip() if ri is not None else path.stem
        except IndexError:
            x, answers, name = "", (), ""
        if not x or not answers or not name:
            raise DataFormatError.malformed(path, lineno, f"{len(cols)} columns {','.join(cols)}", ",".join(row))
        rows.setdefault(name, []).append(Pair(x, answers))
    if not rows:
        raise DataFormatError("no pairs: the file has a header but no rows", path=path)
    return _relations_from_rows(rows, "pairs", path)


def read_pairs(path: str | Path) -> DataSet:
    """fvtrain pair files: one file, or a folder of them (one relation per file or per name)."""
    path = check_exists(path)
    files = data_files(path, PAIR_SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataFormatError(f"no pair files ({', '.join(PAIR_SUFFIXES)}) in this folder", path=path)
    relations: dict[str, Relation] = {}
    for f in files:
        for name, rel in read_pairs_file(f).items():
            if name in relations:  # the same relation split over several files
                prev = relations[name]
                paths = prev.source.get("paths", [prev.source["path"]]) + [str(f)]
                rel = Relation(name, prev.pairs + rel.pairs, {**prev.source, "paths": paths})
            relations[name] = rel
    return DataSet("pairs", relations=relations, path=str(path))


ANALOGY_EXPECTED = (
    '{"a": ..., "b": ..., "c": ..., "d": "word" or [...], "choices"?: [...], "distance"?: "near"/"far"}'
)


def parse_analogy(obj: dict, path: str | Path, lineno: int) -> AnalogyItem:
    words = [obj.get(k) for k in "abc"]
    d = obj.get("d")
    ds = [d] if isinstance(d, str) else d
    if not all(isinstance(w, str) and w.strip() for w in words) or not (
        isinstance(ds, list) and ds and all(isinstance(w, str) and w.strip() for w in ds)
    ):
        raise DataFormatError.malformed(path, lineno, ANALOGY_EXPECTED, str(obj))
    a, b, c = (w.strip() for w in words)
    ds = [w.strip() for w in ds]
    distance = obj.get("distance")
    if distance is not None and distance not in ("near", "far"):
        raise DataFormatError.malformed(path, lineno, "'distance' to be 'near' or 'far'", str(distance))
    choices, answer_index = None, None
    if obj.get("choices") is not None:
        cands = obj["choices"]
        if not isinstance(cands, list) or not all(isinstance(w, str) and w.strip() for w in cands):
            expected = "'choices' to be a list of candidate D words"
            raise DataFormatError.malformed(path, lineno, expected, str(cands))
        cands = [w.strip() for w in cands]
        # The gold D must be a candidate: point at it, or, when only distractors are given,
        # insert it at a position fixed by the item's words (stable, and not always last, so
        # that no position gives the answer away).
        answer_index = next((i for i, w in enumerate(cands) if w in ds), None)
        if answer_index is None:
            key = hashlib.sha256("\t".join((a, b, c, ds[0])).encode()).digest()
            answer_index = int.from_bytes(key[:4], "big") % (len(cands) + 1)
            cands.insert(answer_index, ds[0])
        choices = tuple((c, w) for w in cands)
    relation = obj.get("relation")
    known = {"a", "b", "c", "d", "choices", "distance", "relation"}
    meta = {k: v for k, v in obj.items() if k not in known}
    meta["where"] = f"{path}:{lineno}"
    return AnalogyItem(a, b, c, tuple(ds), choices, answer_index, distance,
                       None if relation is None else str(relation), meta)


def parse_analogies_jsonl(text: str, path: str | Path) -> list[AnalogyItem]:
    return [parse_analogy(obj, path, lineno) for lineno, obj in iter_jsonl(text, Path(path))]


def read_analogies(path: str | Path) -> DataSet:
    """fvtrain analogy JSONL: one file or a folder of ``*.jsonl`` files."""
    path = check_exists(path)
    files = data_files(path, (".jsonl",)) if path.is_dir() else [path]
    items: list[AnalogyItem] = []
    for f in files:
        found = parse_analogies_jsonl(read_text(f), f)
        if not found:
            raise DataFormatError("no analogies: the file is empty", path=f)
        items.extend(found)
    if not items:
        raise DataFormatError("no analogy files (*.jsonl) in this folder", path=path)
    return DataSet("analogies", analogies=items, path=str(path))


__all__ = [
    "parse_pair_line",
    "parse_pairs_tsv",
    "parse_analogies_jsonl",
    "read_pairs",
    "read_analogies",
]
