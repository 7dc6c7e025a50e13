"""fvtrain's data layer: one in-memory model, readers for the formats of the field, the
built-in set, seeded splits and Lightning DataModules.

>>> from fvtrain.data import load
>>> ds = load("builtin", relations=["antonym"])          # doctest: +SKIP
>>> ds = load("../shared/data/google_analogy/questions-words.txt")  # doctest: +SKIP

The DataModules (which import torch and Lightning) are loaded on first use.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from .builtin_sets import load_builtin, load_relation_words
from .errors import DataEncodingError, DataFormatError
from .readers import FORMATS, canonical_format, detect_format, read
from .readers.relsim import relation_level
from .splits import Split, dedupe, load_splits, save_splits, split_all, split_hash, split_relation, splits_to_json
from .types import (
    AnalogyItem,
    DataSet,
    Judgment,
    Pair,
    PrototypicalityRating,
    Relation,
    UnknownRelationError,
)

_LAZY = {"RelationDataModule", "AnalogyDataModule"}


def load(
    path: str | Path = "builtin",
    format: str | None = None,
    relations: str | Iterable[str] | None = None,
    **options,
) -> DataSet:
    """Read ``path`` (``"builtin"`` for the shipped set) and select ``relations``; the Hydra
    ``data`` config maps onto these arguments (``data.path``, ``data.format``, ``data.relations``)."""
    return read(path, format, relations, **options)


def __getattr__(name: str):
    if name in _LAZY:
        from . import datamodules

        return getattr(datamodules, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "AnalogyItem", "DataEncodingError", "DataFormatError", "DataSet", "FORMATS", "Judgment", "Pair",
    "PrototypicalityRating", "Relation", "Split", "UnknownRelationError", "canonical_format", "dedupe",
    "detect_format", "load", "load_builtin", "load_relation_words", "load_splits", "read", "relation_level",
    "save_splits", "split_all", "split_hash", "split_relation", "splits_to_json", *sorted(_LAZY),
]
