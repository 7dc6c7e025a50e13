"""One relation bank from several data sets (``data.sources``): the paper-scale basis bank.

Each source is read by its own reader (built-in relations, SemEval-2012 subtypes, Google sections,
Todd et al.'s task files, ...). Relations are then deduplicated in source order:

- a relation a source maps onto an earlier one (``same_as: {gram8-plural: plural}``) or whose name
  normalises to an earlier one's (``country-capital`` and ``country_capital``) is *merged* into it:
  its pairs join the earlier relation's (inputs already there are not repeated), and its source is
  listed beside the first;
- a relation most of whose pairs (``overlap``, default half) an earlier relation already holds is
  dropped as a copy.

Sources can leave out tasks that are not word relations: ``exclude`` names them, and
``max_input_words`` drops relations whose median input is longer (sentence classification such as
Todd's ``ag_news`` or ``sentiment``). ``max_pairs`` caps each relation's pairs so that relations of
thousands of pairs do not dominate test time: the first source's pairs are kept (sampled only if
they alone exceed the cap) and a seeded sample of the merged ones tops them up. Every decision is recorded:
each relation's ``source["sources"]`` names where its pairs came from, and
``DataSet.skipped`` says what was dropped and why.
"""

from __future__ import annotations

import hashlib
import random
import re
from dataclasses import dataclass, field
from statistics import median
from typing import Any, Mapping, Sequence

from .types import DataSet, Pair, Relation


@dataclass
class Source:
    path: str
    format: str | None = None
    name: str | None = None                       # prefix of its relation names (None: no prefix)
    relations: list[str] | None = None
    exclude: list[str] = field(default_factory=list)
    same_as: dict[str, str] = field(default_factory=dict)
    max_input_words: int | None = None
    options: dict[str, Any] = field(default_factory=dict)  # reader options, e.g. {min_rating: 0}

    @classmethod
    def from_config(cls, node: Any) -> "Source":
        d = dict(node) if not isinstance(node, str) else {"path": node}
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"data.sources: unknown key(s) {sorted(unknown)} in {d}; "
                             f"a source has {', '.join(cls.__dataclass_fields__)}")
        if not d.get("path"):
            raise ValueError(f"data.sources: every source needs a path, got {d}")
        d["path"] = str(d["path"])
        for key in ("relations", "exclude"):
            if d.get(key) is not None:
                d[key] = [str(x) for x in d[key]]
        d["exclude"] = d.get("exclude") or []
        d["same_as"] = {str(k): str(v) for k, v in (d.get("same_as") or {}).items()}
        d["options"] = dict(d.get("options") or {})
        return cls(**d)


def normalise(name: str) -> str:
    return re.sub(r"[\s\-]+", "_", name.strip().lower())


def _key(p: Pair) -> tuple[str, frozenset]:
    return p.x.strip().lower(), frozenset(a.strip().lower() for a in p.answers)


def sample_pairs(rel: Relation, max_pairs: int | None, seed: int) -> Relation:
    """A seeded sample of ``max_pairs`` pairs (order kept), the same on every platform."""
    if not max_pairs or len(rel.pairs) <= max_pairs:
        return rel
    digest = hashlib.sha256(f"fvtrain-sample\0{seed}\0{rel.name}".encode()).digest()
    keep = sorted(random.Random(int.from_bytes(digest[:8], "big")).sample(range(len(rel.pairs)), max_pairs))
    return Relation(rel.name, tuple(rel.pairs[i] for i in keep),
                    {**rel.source, "pairs_before_sample": len(rel.pairs)})


def read_sources(sources: Sequence[Any], max_pairs: int | None = None, seed: int = 0,
                 overlap: float = 0.5) -> DataSet:
    """The deduplicated union of ``sources`` (see the module docstring), analogies kept per source."""
    from .readers import read

    specs = [s if isinstance(s, Source) else Source.from_config(s) for s in sources]
    if not specs:
        raise ValueError("data.sources is empty: list at least one {path: ..., format: ...}")
    kept: dict[str, Relation] = {}
    by_norm: dict[str, str] = {}
    out = DataSet("sources")
    for spec in specs:
        ds = read(spec.path, spec.format, spec.relations, **spec.options)
        label = spec.name or ds.format
        out.analogies += ds.analogies
        out.skipped += ds.skipped
        for rel in ds.relations.values():
            where = f"{label}:{rel.name}"
            if rel.name in spec.exclude:
                out.skipped.append((where, "excluded by data.sources[].exclude"))
                continue
            if spec.max_input_words and rel.pairs:
                words = median(len(p.x.split()) for p in rel.pairs)
                if words > spec.max_input_words:
                    out.skipped.append((where, f"median input of {words:g} words > max_input_words="
                                               f"{spec.max_input_words} (not a word relation)"))
                    continue
            name = f"{spec.name}_{rel.name}" if spec.name else rel.name
            origin = {"source": label, "name": rel.name, "format": ds.format, "path": spec.path,
                      "pairs": len(rel.pairs)}
            target = spec.same_as.get(rel.name) or by_norm.get(normalise(rel.name)) or by_norm.get(normalise(name))
            if target is not None and target in kept:
                kept[target] = _merge(kept[target], rel, origin)
                continue
            if target is not None:
                out.skipped.append((where, f"same_as names {target!r}, which no earlier source holds; kept "
                                           "under its own name"))
            twin = _copy_of(rel, kept.values(), overlap)
            if twin is not None:
                out.skipped.append((where, f"{twin!r} already holds most of its pairs (a copy)"))
                continue
            kept[name] = Relation(name, rel.pairs, {**rel.source, "sources": [origin]})
            by_norm.setdefault(normalise(rel.name), name)
            by_norm.setdefault(normalise(name), name)
    out.relations = {n: _cap(r, max_pairs, seed) for n, r in kept.items()}
    out.path = ";".join(s.path for s in specs)
    return out


def _cap(rel: Relation, max_pairs: int | None, seed: int) -> Relation:
    """At most ``max_pairs`` pairs: the first source's pairs come first (a sample of them if they
    alone exceed the cap), later sources only top the relation up, so merging never dilutes a
    relation as its first source defines it."""
    own = rel.source.get("sources", [{}])[0].get("pairs")
    if not max_pairs or len(rel.pairs) <= max_pairs or own is None:
        return sample_pairs(rel, max_pairs, seed)
    first, extra = rel.pairs[:own], rel.pairs[own:]
    if len(first) >= max_pairs:
        return sample_pairs(Relation(rel.name, first, rel.source), max_pairs, seed)
    topped = sample_pairs(Relation(rel.name, extra, rel.source), max_pairs - len(first), seed)
    return Relation(rel.name, first + topped.pairs, {**rel.source, "pairs_before_sample": len(rel.pairs)})


def _merge(first: Relation, other: Relation, origin: Mapping) -> Relation:
    seen = {p.x.strip().lower() for p in first.pairs}
    extra = tuple(p for p in other.pairs if p.x.strip().lower() not in seen)
    src = dict(first.source)
    src["sources"] = [*src.get("sources", []), {**origin, "pairs_added": len(extra)}]
    return Relation(first.name, first.pairs + extra, src)


def _copy_of(rel: Relation, kept, overlap: float) -> str | None:
    keys = {_key(p) for p in rel.pairs}
    if not keys:
        return None
    for other in kept:
        shared = len(keys & {_key(p) for p in other.pairs})
        if shared >= overlap * len(keys):
            return other.name
    return None
