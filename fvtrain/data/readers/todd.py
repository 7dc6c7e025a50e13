"""Todd et al. (2024) task files: one JSON array of ``{"input", "output"}`` per relation.

The relation is named after the file; a folder (``function_vectors/`` with its ``abstractive/``
and ``extractive/`` subfolders) is read recursively. Inputs and outputs are stripped of
surrounding whitespace (a few upstream outputs end in ``\\n``); repeated inputs are kept here and
merged by :func:`fvtrain.data.splits.dedupe`.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import DataFormatError
from ..types import DataSet, Pair, Relation
from ._common import check_exists, data_files, iter_json_array, make_relation, read_text

EXPECTED = 'an object {"input": "...", "output": "..."} with non-empty strings'


def parse_todd(text: str, path: str | Path) -> list[Pair]:
    pairs = []
    for lineno, obj in iter_json_array(text, Path(path)):
        x = obj.get("input") if isinstance(obj, dict) else None
        y = obj.get("output") if isinstance(obj, dict) else None
        if not (isinstance(x, str) and isinstance(y, str) and x.strip() and y.strip()):
            raise DataFormatError.malformed(path, lineno, EXPECTED, str(obj))
        pairs.append(Pair(x.strip(), (y.strip(),)))
    return pairs


def read_todd(path: str | Path) -> DataSet:
    path = check_exists(path)
    files = data_files(path, (".json",)) if path.is_dir() else [path]
    if not files:
        raise DataFormatError("no task files (*.json) in this folder", path=path)
    relations: dict[str, Relation] = {}
    for f in files:
        name = f.stem
        if name in relations:
            raise DataFormatError(
                f"two task files define relation {name!r}: {relations[name].source['path']} and {f}; "
                "read them separately",
                path=path,
            )
        source = {"format": "todd", "path": str(f)}
        if path.is_dir() and f.parent != path:
            source["group"] = f.parent.relative_to(path).as_posix()  # abstractive / extractive
        relations[name] = make_relation(name, parse_todd(read_text(f), f), source, f)
    return DataSet("todd", relations=relations, path=str(path))
