"""Helpers shared by the readers: strict UTF-8 reading, line iteration, skip bookkeeping."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from pathlib import Path
from typing import Iterator

from ..errors import DataEncodingError, DataFormatError
from ..types import Pair, Relation

log = logging.getLogger("fvtrain.data")

# Files that sit beside data in every distribution and are never data.
NOT_DATA = re.compile(r"^(readme|license|licence|copying|notice|changelog)([._-].*)?$", re.I)


def check_exists(path: str | Path) -> Path:
    p = Path(path).expanduser()
    if not p.exists():
        raise FileNotFoundError(f"data path not found: {p} (give a file or folder with data)")
    return p


def read_text(path: Path) -> str:
    """The whole file as text; anything but UTF-8 (a BOM is allowed) is a clear error."""
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise DataFormatError("expected a file, got a folder", path=path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataEncodingError(path, err) from None


def lines(text: str) -> Iterator[tuple[int, str]]:
    """``(line number, line without its newline)`` for every line, 1-based."""
    for i, line in enumerate(text.splitlines(), start=1):
        yield i, line.rstrip("\r")


def data_files(folder: Path, suffixes: tuple[str, ...]) -> list[Path]:
    """Data files under ``folder`` (recursively, sorted), without READMEs, licences, dotfiles."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not p.is_file():
            continue
        if p.suffix.lower() in suffixes and not NOT_DATA.match(p.name):
            out.append(p)
    return out


def iter_json_array(text: str, path: Path) -> Iterator[tuple[int, object]]:
    """Elements of a top-level JSON array with the line each starts on.

    ``json.load`` would lose line numbers, and a bad element should be reported by its line.
    """
    dec = json.JSONDecoder()
    n, i, lineno = len(text), 0, 1

    def skip_ws(j: int) -> int:
        while j < n and text[j] in " \t\r\n":
            j += 1
        return j

    def advance(j: int) -> None:
        nonlocal i, lineno
        lineno += text.count("\n", i, j)
        i = j

    advance(skip_ws(0))
    if i >= n or text[i] != "[":
        expected = "a JSON array '[{\"input\": ..., \"output\": ...}, ...]'"
        raise DataFormatError.malformed(path, lineno, expected, text[i : i + 40])
    advance(skip_ws(i + 1))
    if i < n and text[i] == "]":
        return
    while True:
        try:
            obj, end = dec.raw_decode(text, i)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"invalid JSON: {err.msg}", path=path, line=err.lineno) from None
        yield lineno, obj
        advance(skip_ws(end))
        if i < n and text[i] == ",":
            advance(skip_ws(i + 1))
            continue
        if i < n and text[i] == "]":
            if skip_ws(i + 1) != n:
                raise DataFormatError("unexpected text after the closing ']'", path=path, line=lineno)
            return
        raise DataFormatError.malformed(path, lineno, "',' or ']' after an array element", text[i : i + 40])


def iter_jsonl(text: str, path: Path) -> Iterator[tuple[int, dict]]:
    """One JSON object per non-blank line."""
    for lineno, line in lines(text):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(f"invalid JSON ({err.msg}): {line[:60]!r}", path=path, line=lineno) from None
        if not isinstance(obj, dict):
            raise DataFormatError.malformed(path, lineno, "one JSON object per line", line)
        yield lineno, obj


def split_answers(field: str) -> tuple[str, ...]:
    """``"y1/y2/ y3"`` -> ``("y1", "y2", "y3")`` (empty alternatives dropped)."""
    return tuple(a.strip() for a in field.split("/") if a.strip())


def _file_of(where: str) -> str:
    """``"path/to/file:17"`` -> ``"path/to/file"`` (a where without a line stays as it is)."""
    head, _, tail = where.rpartition(":")
    return head if head and tail.isdigit() else where


class Skips:
    """Collects items a reader leaves out on purpose and logs one line per (file, reason)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, where: str, why: str) -> None:
        self.items.append((where, why))

    def log(self) -> list[tuple[str, str]]:
        counts = Counter((_file_of(where), why) for where, why in self.items)
        for (where, why), n in counts.items():
            log.warning("skipped %d item%s in %s: %s", n, "" if n == 1 else "s", where, why)
        return self.items


def make_relation(name: str, pairs: list[Pair], source: dict, path: Path | str) -> Relation:
    """A relation, or a clear error when the file held no pairs at all."""
    if not pairs:
        raise DataFormatError(f"relation {name!r} is empty: the file holds no pairs", path=path)
    return Relation(name=name, pairs=tuple(pairs), source=source)
