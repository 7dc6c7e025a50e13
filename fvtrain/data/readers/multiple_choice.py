"""Multiple-choice analogies as JSONL, as distributed with RelBERT (SAT, U2, U4, BATS, Google):
``{"stem": [a, b], "answer": i, "choice": [[c, d], ...]}`` per line.

The candidates are kept as ``(C, D)`` pairs with ``answer_index`` pointing at the gold one; C
and D of the item are the gold candidate's. A ``prefix`` or ``relation`` field labels the item's
relation. A folder of ``valid.jsonl``/``test.jsonl`` files records each item's split in
``meta["split"]``.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ..types import AnalogyItem, DataSet
from ._common import check_exists, data_files, iter_jsonl, read_text

EXPECTED = '{"stem": [a, b], "answer": i, "choice": [[c, d], ...]} with answer indexing choice'
SPLITS = {"train": "train", "valid": "val", "val": "val", "validation": "val", "dev": "val", "test": "test"}


def _is_pair(v: object) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(isinstance(w, str) and w.strip() for w in v)


def parse_multiple_choice(text: str, path: str | Path) -> list[AnalogyItem]:
    path = Path(path)
    split = SPLITS.get(path.stem.lower())
    items = []
    for lineno, obj in iter_jsonl(text, path):
        stem, answer, choice = obj.get("stem"), obj.get("answer"), obj.get("choice")
        ok = (
            _is_pair(stem) and isinstance(choice, list) and choice and all(_is_pair(c) for c in choice)
            and isinstance(answer, int) and not isinstance(answer, bool) and 0 <= answer < len(choice)
        )
        if not ok:
            raise DataFormatError.malformed(path, lineno, EXPECTED, str(obj))
        choices = tuple((c.strip(), d.strip()) for c, d in choice)
        meta = {k: v for k, v in obj.items() if k not in ("stem", "answer", "choice")}
        meta["where"] = f"{path}:{lineno}"
        if split:
            meta.setdefault("split", split)
        relation = obj.get("relation") or obj.get("prefix")
        c, d = choices[answer]
        items.append(AnalogyItem(stem[0].strip(), stem[1].strip(), c, (d,), choices, answer,
                                 relation=None if relation is None else str(relation), meta=meta))
    return items


def read_multiple_choice(path: str | Path) -> DataSet:
    path = check_exists(path)
    files = data_files(path, (".jsonl",)) if path.is_dir() else [path]
    items: list[AnalogyItem] = []
    for f in files:
        found = parse_multiple_choice(read_text(f), f)
        if not found:
            raise DataFormatError("no analogies: the file is empty", path=f)
        items.extend(found)
    if not items:
        raise DataFormatError("no multiple-choice files (*.jsonl) in this folder", path=path)
    return DataSet("multiple_choice", analogies=items, path=str(path))
