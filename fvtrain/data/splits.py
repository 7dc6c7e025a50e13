"""Deduplication and seeded train/validation/test splits of relation pairs.

Splits are per relation and depend only on the relation's pairs, its name and the seed (not on
which other relations are loaded or in what order), so a run can be reproduced from the saved
split JSON and checked by its hash.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

from .types import DataSet, Pair, Relation

log = logging.getLogger("fvtrain.data")

DEFAULT_N_TRAIN = 20


def dedupe(relation: Relation) -> Relation:
    """One pair per input ``x``; the accepted answers of repeated inputs are merged in
    first-seen order. Without this the same input could land in train and test."""
    merged: dict[str, dict[str, None]] = {}
    for p in relation.pairs:
        merged.setdefault(p.x, {}).update(dict.fromkeys(p.answers))
    if len(merged) == len(relation.pairs):
        return relation
    log.info(
        "%s: merged %d repeated input(s) (%d pairs -> %d distinct inputs)",
        relation.name, len(relation.pairs) - len(merged), len(relation.pairs), len(merged),
    )
    pairs = tuple(Pair(x, tuple(ans)) for x, ans in merged.items())
    return Relation(relation.name, pairs, {**relation.source, "pairs_before_dedupe": len(relation.pairs)})


@dataclass(frozen=True)
class Split:
    train: tuple[Pair, ...]
    val: tuple[Pair, ...]
    test: tuple[Pair, ...]
    relation: str = ""

    def __getitem__(self, stage: str) -> tuple[Pair, ...]:
        if stage not in ("train", "val", "test"):
            raise KeyError(f"unknown split {stage!r}; use 'train', 'val' or 'test'")
        return getattr(self, stage)

    def to_json(self) -> dict:
        return {
            "relation": self.relation,
            "train": [p.to_json() for p in self.train],
            "val": [p.to_json() for p in self.val],
            "test": [p.to_json() for p in self.test],
        }

    @classmethod
    def from_json(cls, obj: Mapping) -> "Split":
        def pairs(key: str) -> tuple[Pair, ...]:
            return tuple(Pair(x, tuple(ans)) for x, ans in obj[key])

        return cls(pairs("train"), pairs("val"), pairs("test"), obj.get("relation", ""))


def _rng(seed: int, name: str) -> random.Random:
    # A per-relation stream derived by hashing, so it is the same on every platform and
    # Python version, and independent of the other relations.
    digest = hashlib.sha256(f"fvtrain-split\0{seed}\0{name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def split_relation(
    relation: Relation, n_train: int = DEFAULT_N_TRAIN, n_val: int | None = None, seed: int = 0
) -> Split:
    """Deduplicate, shuffle with ``seed`` and cut into ``n_train`` train pairs, ``n_val``
    validation pairs (default: half of the rest) and the rest as test."""
    if n_train < 1 or (n_val is not None and n_val < 1):
        raise ValueError(f"n_train and n_val must be at least 1, got n_train={n_train}, n_val={n_val}")
    rel = dedupe(relation)
    n = len(rel.pairs)
    need = n_train + (n_val if n_val is not None else 1) + 1
    if n < need:
        what = f"{n_train} train + {n_val if n_val is not None else 'at least 1'} validation + at least 1 test"
        raise ValueError(
            f"relation {rel.name!r} has {n} distinct pairs (after merging repeated inputs), fewer than "
            f"the {need} needed for {what}; lower n_train/n_val or add pairs"
        )
    order = list(range(n))
    _rng(seed, rel.name).shuffle(order)
    pairs = [rel.pairs[i] for i in order]
    n_val = (n - n_train) // 2 if n_val is None else n_val
    return Split(
        tuple(pairs[:n_train]),
        tuple(pairs[n_train : n_train + n_val]),
        tuple(pairs[n_train + n_val :]),
        rel.name,
    )


def cv_split(relation: Relation, k: int, fold: int, n_train: int = DEFAULT_N_TRAIN,
             n_val: int | None = None, seed: int = 0) -> Split:
    """Fold ``fold`` of ``k``-fold cross-validation: every ``k``-th pair of the seeded order (from
    ``fold``) is the test split, so over the folds every pair is tested exactly once; the other
    folds give the validation pairs (``n_val``, default the half of what exceeds ``n_train``, at
    least one) and up to ``n_train`` train pairs."""
    if k < 2 or not 0 <= fold < k:
        raise ValueError(f"cross-validation needs data.cv_folds >= 2 and 0 <= fold < k, got k={k}, fold={fold}")
    rel = dedupe(relation)
    n = len(rel.pairs)
    if n < k + 2:
        raise ValueError(f"relation {rel.name!r} has {n} distinct pairs, too few for {k}-fold "
                         f"cross-validation (each fold needs a test pair and the others a train and a "
                         f"validation pair); lower data.cv_folds")
    order = list(range(n))
    _rng(seed, rel.name).shuffle(order)
    pairs = [rel.pairs[i] for i in order]
    test = pairs[fold::k]
    rest = [p for i, p in enumerate(pairs) if i % k != fold]
    if n_val is None:
        n_val = max(1, (len(rest) - n_train) // 2)
    n_val = min(int(n_val), len(rest) - 1)
    return Split(tuple(rest[n_val : n_val + n_train]), tuple(rest[:n_val]), tuple(test), rel.name)


def configured_split(relation: Relation, n_train: int = DEFAULT_N_TRAIN, n_val: int | None = None,
                     seed: int = 0, cv_folds: int | None = None, cv_fold: int | None = None) -> Split:
    """The split a job's ``data`` config asks for: the seeded train/val/test cut, or one fold of
    ``cv_folds``-fold cross-validation (``cv_fold`` must then name it)."""
    if not cv_folds:
        return split_relation(relation, n_train, n_val, seed)
    if cv_fold is None:
        raise ValueError(f"data.cv_folds={cv_folds} needs data.cv_fold=<0..{int(cv_folds) - 1}> here "
                         "(fvtrain-train runs every fold itself)")
    return cv_split(relation, int(cv_folds), int(cv_fold), n_train, n_val, seed)


def cv_position(k: int, fold: int, j: int) -> int:
    """The seeded-order position of the ``j``-th test pair of ``fold`` (see :func:`cv_split`)."""
    return fold + j * k


def split_all(
    relations: DataSet | Mapping[str, Relation] | Iterable[Relation],
    n_train: int = DEFAULT_N_TRAIN,
    n_val: int | None = None,
    seed: int = 0,
) -> dict[str, Split]:
    rels = as_relation_list(relations)
    return {r.name: split_relation(r, n_train, n_val, seed) for r in rels}


def as_relation_list(relations: DataSet | Mapping[str, Relation] | Iterable[Relation]) -> list[Relation]:
    if isinstance(relations, DataSet):
        return list(relations.relations.values())
    if isinstance(relations, Mapping):
        return list(relations.values())
    return list(relations)


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def split_hash(split: Split) -> str:
    """sha256 of the split's canonical JSON (relation name, pairs and answers, in order)."""
    return hashlib.sha256(_canonical(split.to_json())).hexdigest()


def splits_to_json(
    splits: Mapping[str, Split], seed: int | None = None, n_train: int | None = None, n_val: int | None = None
) -> dict:
    """Everything needed to reproduce and verify the splits of a run."""
    rels = {name: {**s.to_json(), "hash": split_hash(s)} for name, s in splits.items()}
    combined = hashlib.sha256(_canonical({n: r["hash"] for n, r in rels.items()})).hexdigest()
    return {"seed": seed, "n_train": n_train, "n_val": n_val, "hash": combined, "relations": rels}


def splits_from_json(obj: Mapping) -> dict[str, Split]:
    """Inverse of :func:`splits_to_json`; a split whose hash does not match is an error."""
    out = {}
    for name, data in obj["relations"].items():
        split = Split.from_json({"relation": name, **data})
        if "hash" in data and split_hash(split) != data["hash"]:
            raise ValueError(f"split of relation {name!r} does not match its saved hash {data['hash'][:12]}...")
        out[name] = split
    return out


def save_splits(path: str | Path, splits: Mapping[str, Split], **params: int | None) -> Path:
    """Write ``splits_to_json`` atomically (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(splits_to_json(splits, **params), ensure_ascii=False, indent=1), encoding="utf-8")
    tmp.replace(path)
    return path


def load_splits(path: str | Path) -> dict[str, Split]:
    return splits_from_json(json.loads(Path(path).read_text(encoding="utf-8")))
