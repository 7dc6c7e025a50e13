"""The data shipped inside the package, so the default run needs no download.

Layout of ``fvtrain/data/builtin/`` (fvtrain's own formats, see ``FORMATS.md``):

* ``relations/*.tsv``: one relation per file, ``x<TAB>y1/y2``, ``#`` comment lines;
* ``analogies.jsonl``: analogy items ``{"a", "b", "c", "d", "choices"?, "distance"?, "relation"?}``;
* ``relation_words.json`` (optional): relation name -> words that name it (for decoding);
* ``judgments.csv`` (optional): similarity ratings in a relsim layout.

Files are read through :mod:`importlib.resources`, so this works from a wheel or a zip.
"""

from __future__ import annotations

import json
from importlib import resources
from importlib.abc import Traversable
from pathlib import Path

from .errors import DataEncodingError, DataFormatError
from .readers._common import make_relation
from .readers.pairs import comment_metadata, parse_analogies_jsonl, parse_pairs_tsv
from .readers.relsim import parse_relsim_csv
from .types import DataSet, Relation

Root = Traversable | Path


def builtin_root() -> Traversable:
    return resources.files("fvtrain.data") / "builtin"


def _text(node: Traversable, where: str) -> str:
    try:
        return node.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataEncodingError(where, err) from None


def _child(root: Root, *parts: str) -> Traversable | None:
    node = root.joinpath(*parts)
    return node if node.is_file() or node.is_dir() else None


def load_builtin(root: Root | None = None) -> DataSet:
    """Relations, analogies (and judgments, if shipped) of the built-in set."""
    root = root or builtin_root()
    rel_dir = _child(root, "relations")
    files = [f for f in rel_dir.iterdir() if f.name.endswith(".tsv")] if rel_dir else []
    files.sort(key=lambda f: f.name)
    if not files:
        raise DataFormatError(
            "no built-in relations (relations/*.tsv) found; is fvtrain installed with its data files?",
            path=str(root),
        )
    relations: dict[str, Relation] = {}
    for f in files:
        where = f"builtin/relations/{f.name}"
        name = f.name[: -len(".tsv")]
        pairs, comments = parse_pairs_tsv(_text(f, where), where)
        source = {"format": "builtin", "path": where, **comment_metadata(comments)}
        relations[name] = make_relation(name, pairs, source, where)
    ds = DataSet("builtin", relations=relations, path="builtin")
    analogies = _child(root, "analogies.jsonl")
    if analogies is not None:
        where = "builtin/analogies.jsonl"
        ds.analogies = parse_analogies_jsonl(_text(analogies, where), where)
    judgments = _child(root, "judgments.csv")
    if judgments is not None:
        ds.judgments = parse_relsim_csv(_text(judgments, "builtin/judgments.csv"), Path("builtin/judgments.csv"))
    return ds


def load_relation_words(root: Root | None = None) -> dict[str, list[str]]:
    """Relation name -> words that name it (``"antonym": ["opposite", ...]``); empty if not shipped."""
    node = _child(root or builtin_root(), "relation_words.json")
    if node is None:
        return {}
    where = "builtin/relation_words.json"
    try:
        data = json.loads(_text(node, where))
    except json.JSONDecodeError as err:
        raise DataFormatError(f"invalid JSON ({err.msg})", path=where, line=err.lineno) from None
    if not isinstance(data, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(w, str) for w in v) for k, v in data.items()
    ):
        raise DataFormatError.malformed(where, None, 'an object {"relation": ["word", ...], ...}', str(data)[:80])
    return {k: list(v) for k, v in data.items()}
