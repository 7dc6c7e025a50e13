"""The in-memory model of relational data: relations, analogies and human judgments.

Every reader turns its format into one :class:`DataSet`, so the rest of fvtrain never sees a
file format.
"""

from __future__ import annotations

import difflib
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Iterable, Literal, Sequence


def _words(value: Sequence[str], what: str) -> tuple[str, ...]:
    out = tuple(value)
    if not out or not all(isinstance(w, str) and w.strip() for w in out):
        raise ValueError(f"{what} must be non-empty strings, got {value!r}")
    return out


@dataclass(frozen=True)
class Pair:
    """One input word with one or more accepted answers (the first is the canonical one)."""

    x: str
    answers: tuple[str, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.x, str) or not self.x.strip():
            raise ValueError(f"a pair needs a non-empty input, got {self.x!r}")
        object.__setattr__(self, "answers", _words(self.answers, f"answers of {self.x!r}"))

    @property
    def y(self) -> str:
        return self.answers[0]

    def to_json(self) -> list:
        return [self.x, list(self.answers)]


@dataclass(frozen=True)
class Relation:
    """A named mapping between words: its pairs and where they came from."""

    name: str
    pairs: tuple[Pair, ...]
    source: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pairs", tuple(self.pairs))

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self):
        return iter(self.pairs)


@dataclass(frozen=True)
class AnalogyItem:
    """``A : B :: C : D``.

    ``d`` holds every accepted D. Multiple choice is represented uniformly as candidate
    ``(C, D)`` pairs in ``choices`` with ``answer_index`` pointing at the gold one (for
    candidates that only vary D, every pair has the same C). Open-ended items have no choices.
    """

    a: str
    b: str
    c: str
    d: tuple[str, ...]
    choices: tuple[tuple[str, str], ...] | None = None
    answer_index: int | None = None
    distance: str | None = None  # "near" / "far" where the data labels it
    relation: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        _words((self.a, self.b, self.c), "A, B and C of an analogy")
        object.__setattr__(self, "d", _words((self.d,) if isinstance(self.d, str) else self.d, "D"))
        if self.choices is not None:
            choices = tuple((str(c), str(d)) for c, d in self.choices)
            object.__setattr__(self, "choices", choices)
            if self.answer_index is None or not 0 <= self.answer_index < len(choices):
                raise ValueError(
                    f"answer_index {self.answer_index!r} does not point into {len(choices)} choices"
                )
        if self.distance is not None and self.distance not in ("near", "far"):
            raise ValueError(f"distance must be 'near' or 'far', got {self.distance!r}")

    @property
    def is_multiple_choice(self) -> bool:
        return self.choices is not None


@dataclass(frozen=True)
class Judgment:
    """A human similarity rating of two word pairs (``level="pair"``) or two relations.

    Relation-level judgments have empty ``first``/``second`` and name the relations in
    ``first_relation``/``second_relation``.
    """

    first: tuple[str, ...]
    second: tuple[str, ...]
    rating: float
    level: Literal["pair", "relation"] = "pair"
    comparison_type: str | None = None
    first_relation: str | None = None
    second_relation: str | None = None
    meta: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.level not in ("pair", "relation"):
            raise ValueError(f"judgment level must be 'pair' or 'relation', got {self.level!r}")
        if self.level == "relation" and not (self.first_relation and self.second_relation):
            raise ValueError("a relation-level judgment needs first_relation and second_relation")


@dataclass(frozen=True)
class PrototypicalityRating:
    """How typical a pair is of its relation (SemEval-2012 Task 2 gold ratings, -100..100)."""

    relation: str
    pair: tuple[str, str]
    rating: float


class UnknownRelationError(KeyError, ValueError):
    """A requested relation name is not in the data set; the message lists what is."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""


def unknown_relation_message(name: str, available: Iterable[str]) -> str:
    available = list(available)
    hint = difflib.get_close_matches(name, available, n=3)
    did_you_mean = f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
    return f"unknown relation {name!r}{did_you_mean}; available: {', '.join(available) or '(none)'}"


@dataclass
class DataSet:
    """Everything one path holds, in fvtrain's model.

    ``skipped`` lists ``(where, why)`` for every item a reader deliberately left out, so that
    nothing disappears without a count.
    """

    format: str
    relations: dict[str, Relation] = field(default_factory=dict)
    analogies: list[AnalogyItem] = field(default_factory=list)
    judgments: list[Judgment] = field(default_factory=list)
    prototypicality: list[PrototypicalityRating] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    path: str | None = None

    @property
    def relation_names(self) -> list[str]:
        return list(self.relations)

    @property
    def n_pairs(self) -> int:
        return sum(len(r) for r in self.relations.values())

    def all_relation_names(self) -> list[str]:
        """Relations with pairs first, then relation labels that only analogies or ratings carry."""
        names = dict.fromkeys(self.relations)
        names.update(dict.fromkeys(a.relation for a in self.analogies if a.relation))
        names.update(dict.fromkeys(p.relation for p in self.prototypicality))
        for j in self.judgments:
            names.update(dict.fromkeys(r for r in (j.first_relation, j.second_relation) if r))
        return list(names)

    def select(self, names: str | Iterable[str] | None) -> "DataSet":
        """Keep only the named relations (in the order given) and the items that belong to them.

        Analogies and prototypicality ratings of other relations are dropped; judgments are kept
        when every relation they name is selected. ``None`` or an empty list selects everything.
        """
        if names is None:
            return self
        if isinstance(names, str):
            names = [n.strip() for n in names.split(",")] if "," in names else [names]
        names = list(dict.fromkeys(names))
        if not names:
            return self
        available = self.all_relation_names()
        for n in names:
            if n not in available:
                raise UnknownRelationError(unknown_relation_message(n, available))
        keep = set(names)

        def judged(j: Judgment) -> bool:
            return all(r is None or r in keep for r in (j.first_relation, j.second_relation))

        return replace(
            self,
            relations={n: self.relations[n] for n in names if n in self.relations},
            analogies=[a for a in self.analogies if a.relation is None or a.relation in keep],
            judgments=[j for j in self.judgments if judged(j)],
            prototypicality=[p for p in self.prototypicality if p.relation in keep],
            skipped=list(self.skipped),
        )

    def skipped_reasons(self) -> dict[str, int]:
        return dict(Counter(why for _, why in self.skipped).most_common())

    def summary(self) -> dict:
        """The JSON printed by ``fvtrain-data --json``."""
        mc = sum(a.is_multiple_choice for a in self.analogies)
        return {
            "path": self.path,
            "format": self.format,
            "relations": {n: len(r) for n, r in self.relations.items()},
            "pairs": self.n_pairs,
            "analogies": len(self.analogies),
            "analogies_multiple_choice": mc,
            "analogies_open": len(self.analogies) - mc,
            "judgments": len(self.judgments),
            "prototypicality": len(self.prototypicality),
            "skipped": len(self.skipped),
            "skipped_reasons": self.skipped_reasons(),
        }

    def __repr__(self) -> str:
        return (
            f"DataSet(format={self.format!r}, relations={len(self.relations)}, "
            f"pairs={self.n_pairs}, analogies={len(self.analogies)}, "
            f"judgments={len(self.judgments)}, prototypicality={len(self.prototypicality)}, "
            f"skipped={len(self.skipped)})"
        )
