"""Readers for the data formats of the field, selected by name or detected from the path.

``read(path)`` detects the format; ``read(path, "bats")`` forces it. Every reader returns a
:class:`~fvtrain.data.types.DataSet`. The literal path ``builtin`` is the data shipped with
fvtrain (write ``./builtin`` for a folder of that name).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Iterable

from ..errors import DataFormatError
from ..types import DataSet
from ._common import NOT_DATA, check_exists, data_files
from .bats import read_bats
from .bless import read_bless
from .google import read_google
from .multiple_choice import read_multiple_choice
from .pairs import X_COLUMNS, Y_COLUMNS, read_analogies, read_pairs
from .relsim import layout_of, read_relsim
from .semeval import read_semeval
from .todd import read_todd


def _read_builtin(path: str | Path = "builtin") -> DataSet:
    from ..builtin_sets import load_builtin  # late: builtin_sets imports the readers

    return load_builtin()


Reader = Callable[..., DataSet]

FORMATS: dict[str, Reader] = {
    "todd": read_todd,
    "bats": read_bats,
    "google": read_google,
    "semeval": read_semeval,
    "bless": read_bless,
    "relsim": read_relsim,
    "multiple_choice": read_multiple_choice,
    "pairs": read_pairs,
    "analogies": read_analogies,
    "builtin": _read_builtin,
}

# Other names people use for the same formats.
ALIASES = {
    "function_vectors": "todd",
    "fv": "todd",
    "bats3": "bats",
    "google_analogy": "google",
    "questions-words": "google",
    "semeval2012": "semeval",
    "semeval2012_task2": "semeval",
    "relbert": "multiple_choice",
    "sat": "multiple_choice",
    "mc": "multiple_choice",
    "relsim_chen2017": "relsim",
    "tsv": "pairs",
    "csv": "pairs",
    "jsonl": "pairs",
}

BUILTIN = "builtin"
_SUFFIXES = (".json", ".jsonl", ".csv", ".tsv", ".txt")
_POS = re.compile(r"^.+-[nvj]$")
_GOLD = re.compile(r'^\s*-?\d+(\.\d+)?\s+"[^"]+:[^"]+"\s*$')
_ANSWER = re.compile(r'^\s*"[^"]+:[^"]+"\s*$')
_SEMEVAL_NAMES = re.compile(r"^(GoldRatings|Phase1Answers)-\d+[a-z]\.txt$|^subcategories-list\.txt$")


def canonical_format(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ValueError(f"unknown data format {name!r}; available: {', '.join(FORMATS)}")
    return key


def _head(path: Path, size: int = 65536) -> str:
    with path.open("rb") as fh:
        return fh.read(size).decode("utf-8-sig", errors="replace")


def _first_line(text: str) -> str:
    return next((ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")), "")


def sniff_file(path: Path) -> str | None:
    """The format of one file from its name and first lines, or None if it is not data we know."""
    if _SEMEVAL_NAMES.match(path.name):
        return "semeval"
    suffix = path.suffix.lower()
    if suffix not in _SUFFIXES or NOT_DATA.match(path.name):
        return None
    text = _head(path)
    first = _first_line(text)
    if suffix == ".json":
        # A JSON array is Todd's layout, the only JSON (not JSONL) format; its reader
        # reports an element that is not {"input", "output"} by line.
        return "todd" if text.lstrip().startswith("[") else None
    if suffix == ".jsonl":
        try:
            keys = set(json.loads(first))
        except (ValueError, TypeError):
            return None
        if {"stem", "choice"} <= keys:
            return "multiple_choice"
        if {"a", "b", "c", "d"} <= keys:
            return "analogies"
        if {"x", "y"} <= keys or {"input", "output"} <= keys:
            return "pairs"
        return None
    if suffix == ".csv":
        cols = [h.strip().strip('"') for h in first.split(",")]
        if layout_of(cols) is not None:
            return "relsim"
        lower = {c.lower() for c in cols}
        return "pairs" if lower & set(X_COLUMNS) and lower & set(Y_COLUMNS) else None
    fields = first.split("\t")
    if len(fields) == 4 and _POS.match(fields[0].strip()) and _POS.match(fields[3].strip()):
        return "bless"
    if suffix == ".tsv":
        return "pairs"  # fvtrain's own pair TSV; its reader reports a bad line by number
    if first.startswith(":"):
        return "google"
    if _GOLD.match(first) or _ANSWER.match(first):
        return "semeval"
    if len([f for f in fields if f.strip()]) == 2:
        return "bats"
    return None


def detect_format(path: str | Path) -> str:
    """The format of a file or folder; a folder must hold one format only."""
    if str(path) == BUILTIN:
        return "builtin"
    p = check_exists(path)
    if p.is_file():
        fmt = sniff_file(p)
        if fmt is None:
            raise DataFormatError(
                f"cannot tell the data format from the name and first line {_first_line(_head(p))[:60]!r}; "
                f"pass one of: {', '.join(FORMATS)} (data.format=... or --format)",
                path=p,
            )
        return fmt
    found: Counter = Counter()
    examples: dict[str, Path] = {}
    looked = data_files(p, _SUFFIXES)
    for f in looked:
        fmt = sniff_file(f)
        if fmt is not None:
            found[fmt] += 1
            examples.setdefault(fmt, f)
    if len(found) == 1:
        return next(iter(found))
    if not found:
        raise DataFormatError(
            f"no data file of a known format here (looked at {len(looked)} file(s) ending in "
            f"{', '.join(_SUFFIXES)}); pass data.format=... or a path to the data itself",
            path=p,
        )
    listing = "; ".join(
        f"{fmt}: {n} file(s), e.g. {examples[fmt].relative_to(p)}" for fmt, n in found.most_common()
    )
    raise DataFormatError(
        f"this folder holds several formats ({listing}); give a narrower path or data.format=...",
        path=p,
    )


def read(
    path: str | Path,
    format: str | None = None,
    relations: str | Iterable[str] | None = None,
    **options,
) -> DataSet:
    """Read ``path`` (format detected unless given) and keep only ``relations`` if given.

    ``options`` go to the reader (e.g. ``keep=...`` for BLESS, ``min_rating=...`` for SemEval,
    ``underscores="keep"`` for BATS and Google).
    """
    if str(path) != BUILTIN:
        check_exists(path)
    fmt = canonical_format(format) if format else detect_format(path)
    return FORMATS[fmt](path, **options).select(relations)


__all__ = ["FORMATS", "ALIASES", "canonical_format", "detect_format", "read", "sniff_file"]
