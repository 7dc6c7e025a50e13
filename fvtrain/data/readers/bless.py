"""BLESS (Baroni & Lenci 2011): ``concept-n<TAB>class<TAB>relation<TAB>relatum-pos`` per line.

The word-to-word relations become relations of concept -> relatum with the part-of-speech
suffixes (``-n``, ``-v``, ``-j``) stripped: ``hyper`` -> ``hypernym``, ``mero`` -> ``meronym``,
``attri`` -> ``attribute``, ``event`` -> ``event``. ``coord`` (co-hyponyms) and the
``random-*`` controls are not relations to distil; they are skipped, counted and logged (pass
``keep=(..., "coord")`` to read co-hyponyms as relation ``cohyponym``).
"""

from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataFormatError
from ..types import DataSet, Pair, Relation
from ._common import Skips, check_exists, data_files, lines, make_relation, read_text

EXPECTED = "'concept-n<TAB>class<TAB>relation<TAB>relatum-pos' (pos one of n, v, j)"
NAMES = {"hyper": "hypernym", "mero": "meronym", "attri": "attribute", "event": "event", "coord": "cohyponym"}
CONTROLS = ("random-n", "random-v", "random-j")
DEFAULT_KEEP = ("hyper", "mero", "attri", "event")
_POS = re.compile(r"^(?P<word>.+)-(?P<pos>[nvj])$")


def read_bless(path: str | Path, keep: tuple[str, ...] | list[str] = DEFAULT_KEEP) -> DataSet:
    unknown = set(keep) - set(NAMES)
    if unknown:
        raise ValueError(f"unknown BLESS relation(s) {sorted(unknown)}; choose from {sorted(NAMES)}")
    path = check_exists(path)
    files = data_files(path, (".txt", ".tsv")) if path.is_dir() else [path]
    if not files:
        raise DataFormatError("no BLESS file (*.txt, *.tsv) in this folder", path=path)
    rows: dict[str, list[Pair]] = {NAMES[k]: [] for k in keep}
    skips = Skips()
    for f in files:
        for lineno, line in lines(read_text(f)):
            if not line.strip():
                continue
            parts = line.split("\t")
            concept = _POS.match(parts[0].strip()) if len(parts) == 4 else None
            relatum = _POS.match(parts[3].strip()) if len(parts) == 4 else None
            rel = parts[2].strip() if len(parts) == 4 else ""
            if concept is None or relatum is None or rel not in (*NAMES, *CONTROLS):
                raise DataFormatError.malformed(f, lineno, EXPECTED, line)
            if rel not in keep:
                why = (
                    f"BLESS '{rel}' is a random control, not a relation"
                    if rel in CONTROLS
                    else f"BLESS '{rel}' not read (pass keep=[..., '{rel}'] to read it)"
                )
                skips.add(f"{f}:{lineno}", why)
                continue
            rows[NAMES[rel]].append(Pair(concept["word"], (relatum["word"],)))
    relations: dict[str, Relation] = {}
    for code in keep:
        name = NAMES[code]
        source = {"format": "bless", "path": str(path), "code": code}
        relations[name] = make_relation(name, rows[name], source, path)
    return DataSet("bless", relations=relations, skipped=skips.log(), path=str(path))
