"""Several analogy test sets in one run (``analogies.sets``), and multiple-choice items made from
open-ended ones.

Each set is read by the data layer (any analogy format: fvtrain JSONL, Google, RelBERT-style
multiple-choice JSONL for SAT / BATS / U2 / U4, ...), filtered and sampled on its own, and its items
are tagged ``meta["set"]`` so that every accuracy is reported per set as well as overall.

Distractor recipe (``mc_distractors: k``), for open-ended items such as Google's: the candidates of
``A:B :: C:?`` are the gold ``D`` and ``k`` answers of *other* items of the same relation (Google:
the same section), drawn with a per-item seeded stream; a candidate is never ``C`` itself, never an
accepted answer of the item, and never a case variant of another candidate. The distractors are
thus of the right type (another capital, another plural), so only the relation picks the answer;
the gold answer's position is drawn from the same stream. Items whose relation offers fewer than
``k`` distractors stay open-ended (counted in the set's ``left_open``).

``prefix`` / ``same_as`` rename the items' relations as the bank names them (``data.sources``
merges Google's ``gram8-plural`` into ``plural`` and keeps ``city-in-state`` as
``google_city-in-state``), so the oracle baseline finds each item's own basis vector.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from typing import Any, Sequence

from .types import AnalogyItem

SET_KEYS = ("name", "path", "format", "relations", "distance", "max_items", "mc_distractors", "prefix",
            "same_as")


def _stream(seed: int, *parts: Any) -> random.Random:
    digest = hashlib.sha256("\0".join(["fvtrain-analogy-set", str(seed), *map(str, parts)]).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def with_distractors(items: Sequence[AnalogyItem], k: int = 3, seed: int = 0,
                     set_name: str = "") -> tuple[list[AnalogyItem], int]:
    """``(items, n_left_open)``: every open-ended item with a relation becomes a ``k + 1``-way
    multiple-choice item (see the module docstring); items that already have choices are kept."""
    answers: dict[str, list[str]] = {}
    for it in items:
        if it.relation is not None:
            for d in it.d[:1]:  # the first accepted answer represents an item
                if d.lower() not in {a.lower() for a in answers.setdefault(it.relation, [])}:
                    answers[it.relation].append(d)
    out, left = [], 0
    for i, it in enumerate(items):
        if it.is_multiple_choice or it.relation is None:
            out.append(it)
            continue
        banned = {w.lower() for w in (*it.d, it.c)}
        pool = [a for a in answers.get(it.relation, []) if a.lower() not in banned]
        if len(pool) < k:
            out.append(it)
            left += 1
            continue
        rng = _stream(seed, set_name, i, it.a, it.b, it.c)
        wrong = rng.sample(pool, k)
        at = rng.randrange(k + 1)
        cands = wrong[:at] + [it.d[0]] + wrong[at:]
        out.append(replace(it, choices=tuple((it.c, d) for d in cands), answer_index=at,
                           meta={**it.meta, "distractors": f"{k} seeded answers of the same relation"}))
    return out, left


def read_set(spec: Any, seed: int = 0) -> tuple[list[AnalogyItem], dict]:
    """The items of one set (``spec``: a mapping with the keys of :data:`SET_KEYS`) and a summary
    ``{"name", "path", "format", "n", "n_multiple_choice", "left_open"}``."""
    from .readers import read

    d = dict(spec)
    unknown = set(d) - set(SET_KEYS)
    if unknown:
        raise ValueError(f"analogies.sets: unknown key(s) {sorted(unknown)}; a set has {', '.join(SET_KEYS)}")
    if not d.get("path") or not d.get("name"):
        raise ValueError(f"analogies.sets: every set needs a name and a path, got {d}")
    name = str(d["name"])
    rels = d.get("relations")
    ds = read(str(d["path"]), d.get("format"), [str(r) for r in rels] if rels else None)
    items = list(ds.analogies)
    if not items:
        raise ValueError(f"analogies.sets[{name}]: {d['path']} holds no analogy items ({ds.format} format)")
    if d.get("distance") is not None:
        items = [it for it in items if it.distance == d["distance"]]
    left = 0
    if d.get("mc_distractors"):  # before sampling: distractors come from every item of the relation
        items, left = with_distractors(items, int(d["mc_distractors"]), seed, name)
    if d.get("max_items") is not None and int(d["max_items"]) < len(items):
        keep = sorted(_stream(seed, name, "sample").sample(range(len(items)), int(d["max_items"])))
        left = sum(1 for i in keep if not items[i].is_multiple_choice) if left else 0
        items = [items[i] for i in keep]
    # Relation labels as the bank names them (the oracle baseline looks the item's relation up).
    same_as, prefix = dict(d.get("same_as") or {}), d.get("prefix") or ""
    items = [replace(it, relation=(same_as.get(it.relation) or f"{prefix}{it.relation}") if it.relation else None,
                     meta={**it.meta, "set": name, "relation_in_file": it.relation}) for it in items]
    return items, {"name": name, "path": str(d["path"]), "format": ds.format, "n": len(items),
                   "n_multiple_choice": sum(it.is_multiple_choice for it in items), "left_open": left}


def read_sets(specs: Sequence[Any], seed: int = 0) -> tuple[list[AnalogyItem], list[dict]]:
    """Every set's items, in order, and their summaries; set names must differ."""
    items, info = [], []
    for spec in specs:
        got, summary = read_set(spec, seed)
        if summary["name"] in {s["name"] for s in info}:
            raise ValueError(f"analogies.sets: two sets are named {summary['name']!r}")
        items += got
        info.append(summary)
    return items, info
