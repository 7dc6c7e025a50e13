"""Alignment of vectors with human judgments of relational similarity (DESIGN step 8).

Three analyses, each run for every vector kind (FV, FFV) on the same items so that the kinds can
be compared directly:

* **relation level**: for every pair of relations ``(r, s)`` rated by humans, the cosine between
  the two relations' vectors against the mean human similarity of their pairs
  (:func:`fvtrain.data.relation_level`). A relation compared with itself always has cosine 1, so
  such comparisons are left out unless ``include_self`` (and counted as skipped);
* **pair level**: each word pair ``A:B`` gets a representation over the basis of vectors, the
  composite weights ``w = softmax(s / tau)`` with ``s_i = log P(B | prompt(A), vector_i)`` (or the
  composite vector ``CFV = sum_i w_i vector_i``); the cosine between the two pairs of a judgment
  is correlated with its rating;
* **prototypicality** (SemEval-2012 Task 2): per subtype, ``log P(B | prompt(A), vector)`` of the
  subtype's own vector against the gold prototypicality rating of ``A:B``.

Correlations are Spearman and Pearson (torchmetrics), with percentile bootstrap confidence
intervals from a seeded ``torch.Generator``; two-sided p-values come from scipy (torchmetrics has
none). Every kind is resampled with the *same* indices, so the FFV - FV difference gets a paired
bootstrap interval too. Broken down by comparison type wherever the data carries one.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import torch

from fvtrain.data.types import Judgment, PrototypicalityRating
from fvtrain.errors import ConfigError

log = logging.getLogger(__name__)

STATS = ("spearman", "pearson")
TRAIN_SKIP = "pair in a train split of the vectors"
NO_VECTOR_SKIP = "rated pair of a subtype without a vector"


class AlignmentError(ConfigError):
    """Judgments and vectors that cannot be aligned (e.g. no relation in common)."""


# -- correlations ---------------------------------------------------------------------------------


def _corr_columns(x: torch.Tensor, y: torch.Tensor, stat: str) -> torch.Tensor:
    """Column-wise correlation of ``[n, B]`` tensors (NaN where a column is constant)."""
    from torchmetrics.functional import pearson_corrcoef, spearman_corrcoef

    fn = spearman_corrcoef if stat == "spearman" else pearson_corrcoef
    const = (x.std(0) == 0) | (y.std(0) == 0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = fn(x.float() if stat == "spearman" else x.double(),
               y.float() if stat == "spearman" else y.double())
    r = r.double().reshape(-1)
    return torch.where(const.reshape(-1), torch.full_like(r, float("nan")), r)


def correlation(x: Sequence[float] | torch.Tensor, y: Sequence[float] | torch.Tensor,
                stat: str = "spearman") -> float | None:
    """Spearman (average ranks for ties) or Pearson correlation; ``None`` when undefined."""
    if stat not in STATS:
        raise ValueError(f"stat must be one of {STATS}, got {stat!r}")
    x = torch.as_tensor(x, dtype=torch.float64).reshape(-1, 1)
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1, 1)
    if x.shape != y.shape:
        raise ValueError(f"x has {len(x)} values but y has {len(y)}")
    if len(x) < 3:
        return None
    r = float(_corr_columns(x, y, stat)[0])
    return None if math.isnan(r) else r


def _p_value(x: torch.Tensor, y: torch.Tensor, stat: str) -> float | None:
    from scipy import stats

    if len(x) < 3 or float(x.std()) == 0 or float(y.std()) == 0:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = (stats.spearmanr if stat == "spearman" else stats.pearsonr)(x.numpy(), y.numpy())
    p = float(res.pvalue)
    return None if math.isnan(p) else p


def _ci(samples: torch.Tensor, level: float) -> list[float] | None:
    from fvtrain.evaluation.stats import percentile

    return percentile(samples, level)  # the one percentile interval (NaN resamples dropped)


def bootstrap_indices(n: int, n_boot: int, seed: int) -> torch.Tensor:
    """``[n, n_boot]`` resampling indices from a seeded generator (the same for every kind)."""
    g = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, n, (n, n_boot), generator=g)


def correlate(
    xs: Mapping[str, Sequence[float] | torch.Tensor],
    y: Sequence[float] | torch.Tensor,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    compare: tuple[str, str] | None = None,
) -> dict:
    """Spearman and Pearson of every ``xs[kind]`` against ``y``, with bootstrap intervals.

    Returns ``{"n": n, kind: {"spearman", "spearman_ci", "spearman_p", "pearson", ...},
    "difference": {"kinds": [a, b], "spearman": rho_b - rho_a, "spearman_ci": ...}}``; the
    difference (``compare=(a, b)``) uses the same resamples for both kinds (a paired bootstrap).
    """
    y = torch.as_tensor(y, dtype=torch.float64).reshape(-1)
    n = len(y)
    out: dict = {"n": n}
    xs = {k: torch.as_tensor(v, dtype=torch.float64).reshape(-1) for k, v in xs.items()}
    for k, v in xs.items():
        if len(v) != n:
            raise ValueError(f"{k}: {len(v)} values but {n} ratings")
    idx = bootstrap_indices(n, n_boot, seed) if n >= 3 and n_boot > 0 else None
    boots: dict[str, dict[str, torch.Tensor]] = {}
    for k, x in xs.items():
        res: dict = {}
        boots[k] = {}
        for stat in STATS:
            res[stat] = correlation(x, y, stat)
            res[f"{stat}_p"] = _p_value(x, y, stat) if res[stat] is not None else None
            if idx is not None and res[stat] is not None:
                b = _corr_columns(x[idx], y[idx], stat)
                boots[k][stat] = b
                res[f"{stat}_ci"] = _ci(b, ci)
            else:
                res[f"{stat}_ci"] = None
        out[k] = res
    if compare is not None and all(c in xs for c in compare):
        a, b = compare
        diff: dict = {"kinds": [a, b]}
        for stat in STATS:
            ra, rb = out[a][stat], out[b][stat]
            diff[stat] = None if ra is None or rb is None else rb - ra
            if diff[stat] is not None and stat in boots[a] and stat in boots[b]:
                diff[f"{stat}_ci"] = _ci(boots[b][stat] - boots[a][stat], ci)
            else:
                diff[f"{stat}_ci"] = None
        out["difference"] = diff
    out["bootstrap"] = {"n_boot": int(n_boot), "ci": float(ci), "seed": int(seed)}
    return out


# -- helpers ----------------------------------------------------------------------------------


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.double().reshape(1, -1),
                                                       b.double().reshape(1, -1)).item())


@dataclass
class Skipped:
    """``why -> count`` of items left out, with one example each (reported, never silent)."""

    counts: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def add(self, why: str, example: str = "") -> None:
        self.counts[why] += 1
        self.examples.setdefault(why, example)

    def to_dict(self) -> dict:
        return {why: {"n": n, "example": self.examples.get(why, "")}
                for why, n in self.counts.most_common()}

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def _by_type(records: Sequence[dict], kinds: Sequence[str], n_boot: int, ci: float, seed: int,
             compare, min_n: int = 3) -> dict:
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if r.get("comparison_type"):
            groups[r["comparison_type"]].append(r)
    if len(groups) < 1 or (len(groups) == 1 and len(next(iter(groups.values()))) == len(records)):
        return {}
    return {t: correlate({k: [r[k] for r in rs] for k in kinds}, [r["rating"] for r in rs],
                         n_boot, ci, seed, compare)
            for t, rs in sorted(groups.items()) if len(rs) >= min_n}


def _compare(kinds: Sequence[str]) -> tuple[str, str] | None:
    return ("fv", "ffv") if {"fv", "ffv"} <= set(kinds) else None


# -- relation level ---------------------------------------------------------------------------


def relation_alignment(
    vectors: Mapping[str, Mapping[str, torch.Tensor]],
    judgments: Sequence[Judgment],
    include_self: bool = False,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> tuple[dict, list[dict]]:
    """Cosine between relations' vectors against the mean human rating of their pairs.

    ``vectors[kind][relation]`` (e.g. ``{"fv": {...}, "ffv": {...}}``). Relation-level judgments
    are used as they are; pair-level ones are averaged per unordered pair of relations first.
    Only relations with a vector of *every* kind are used, so the kinds are compared on the same
    items. Returns ``(metrics, records)``.
    """
    from fvtrain.data import relation_level

    kinds = list(vectors)
    skipped = Skipped()
    rel_j = [j for j in judgments if j.level == "relation"]
    pair_j = [j for j in judgments if j.level == "pair"]
    for j in pair_j:
        if not (j.first_relation and j.second_relation):
            skipped.add("pair judgment names no relations", f"{':'.join(j.first)} / {':'.join(j.second)}")
    items = list(rel_j) + relation_level(pair_j)
    have = set.intersection(*(set(v) for v in vectors.values())) if vectors else set()
    named = sorted({r for j in items for r in (j.first_relation, j.second_relation)})
    if items and not have & set(named):
        raise AlignmentError(
            f"no relation named by the judgments has a vector: the judgments name {', '.join(named[:12])}"
            f"{' ...' if len(named) > 12 else ''}; the vectors are for "
            f"{', '.join(sorted(set().union(*(set(v) for v in vectors.values())))[:12])}. Extract "
            "(and fine-tune) vectors for the judged relations, e.g. data.path=<SemEval-2012 folder> "
            "for the relational-similarity subtypes"
        )
    records = []
    for j in items:
        a, b = j.first_relation, j.second_relation
        missing = [r for r in (a, b) if r not in have]
        if missing:
            skipped.add("relation without a vector", missing[0])
            continue
        if a == b and not include_self:
            skipped.add("relation compared with itself (cosine 1)", a)
            continue
        rec = {"first": a, "second": b, "rating": float(j.rating),
               "comparison_type": j.comparison_type, "n_judgments": j.meta.get("n_judgments")}
        for k in kinds:
            rec[k] = cosine(vectors[k][a], vectors[k][b])
        records.append(rec)
    out = {
        "n": len(records),
        "relations": sorted({r for rec in records for r in (rec["first"], rec["second"])}),
        "skipped": skipped.to_dict(),
        "n_skipped": skipped.total,
    }
    if len(records) < 3:
        log.warning("relation-level alignment: only %d comparison(s) between relations with vectors; "
                    "no correlation", len(records))
        out["all"] = None
        return out, records
    out["all"] = correlate({k: [r[k] for r in records] for k in kinds}, [r["rating"] for r in records],
                           n_boot, ci, seed, _compare(kinds))
    out["by_comparison_type"] = _by_type(records, kinds, n_boot, ci, seed, _compare(kinds))
    return out, records


# -- pair level -------------------------------------------------------------------------------


def judged_pairs(judgments: Iterable[Judgment]) -> list[tuple[str, str]]:
    """Distinct word pairs ``(A, B)`` of pair-level judgments, in first-seen order."""
    out: dict[tuple[str, str], None] = {}
    for j in judgments:
        if j.level == "pair" and len(j.first) == 2 and len(j.second) == 2:
            out.setdefault(tuple(j.first), None)
            out.setdefault(tuple(j.second), None)
    return list(out)


def sample_pairs(pairs: Sequence[tuple[str, str]], max_pairs: int | None, seed: int) -> list:
    if max_pairs is None or max_pairs >= len(pairs):
        return list(pairs)
    rng = random.Random(f"fvtrain-alignment-pairs\0{seed}")
    keep = sorted(rng.sample(range(len(pairs)), int(max_pairs)))
    return [pairs[i] for i in keep]


def composite_weights(scores: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``softmax(s / tau)`` over the basis (the composition's ``softmax`` scheme)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    return torch.softmax(scores.double() / float(temperature), dim=-1)


def pair_scores(lm, pairs: Sequence[tuple[str, str]], basis: torch.Tensor, layer: int, template=None,
                batch_size: int = 16, max_rows: int = 64, progress=None) -> torch.Tensor:
    """``[P, N]`` source scores ``log P(B | zero-shot prompt of A, basis_i)`` (issue 6's batched
    scorer, one forward per chunk of pairs with every basis vector as a row)."""
    from fvtrain.composition.scoring import score_pairs

    return score_pairs(lm, list(pairs), basis, layer, template, batch_size, max_rows, progress)


def pair_alignment(
    representations: Mapping[str, Mapping[tuple[str, str], torch.Tensor]],
    judgments: Sequence[Judgment],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    exclude: Iterable[tuple[str, str]] = (),
) -> tuple[dict, list[dict]]:
    """Cosine between the two pairs' representations against the rating of each comparison.

    ``representations[name][(A, B)]``: e.g. ``{"fv": weights, "ffv": weights}``. A judgment is
    used when both of its pairs have a representation of every name and neither is in
    ``exclude`` (e.g. pairs the vectors were trained on); the others are counted as skipped.
    """
    names = list(representations)
    exclude = set(exclude)
    skipped = Skipped()
    records = []
    for j in judgments:
        if j.level != "pair":
            continue
        a, b = tuple(j.first), tuple(j.second)
        if len(a) != 2 or len(b) != 2:
            skipped.add("not a comparison of two word pairs", str(j.first))
            continue
        seen = [p for p in (a, b) if p in exclude]
        if seen:
            skipped.add(TRAIN_SKIP, ":".join(seen[0]))
            continue
        missing = [p for p in (a, b) for n in names if p not in representations[n]]
        if missing:
            skipped.add("pair not scored (sampled out or not encodable)", ":".join(missing[0]))
            continue
        rec = {"first": list(a), "second": list(b), "rating": float(j.rating),
               "comparison_type": j.comparison_type,
               "first_relation": j.first_relation, "second_relation": j.second_relation}
        for n in names:
            rec[n] = cosine(representations[n][a], representations[n][b])
        records.append(rec)
    out = {"n": len(records), "n_pairs": len({tuple(p) for r in records for p in (r["first"], r["second"])}),
           "skipped": skipped.to_dict(), "n_skipped": skipped.total}
    if len(records) < 3:
        out["all"] = None
        return out, records
    out["all"] = correlate({n: [r[n] for r in records] for n in names}, [r["rating"] for r in records],
                           n_boot, ci, seed, _compare(names))
    out["by_comparison_type"] = _by_type(records, names, n_boot, ci, seed, _compare(names))
    return out, records


# -- prototypicality ----------------------------------------------------------------------------


def prototypicality_scores(lm, ratings: Sequence[PrototypicalityRating], vector: torch.Tensor | None,
                           layer: int | None, template=None, batch_size: int = 32) -> torch.Tensor:
    """``[n]`` ``log P(B | zero-shot prompt of A, vector)`` (all target tokens) of every rated pair."""
    from fvtrain.prompts import PromptTemplate, make_batch, zero_shot

    template = template or PromptTemplate()
    out = []
    for s in range(0, len(ratings), batch_size):
        chunk = ratings[s : s + batch_size]
        b = make_batch(lm.tokenizer, [zero_shot(template, r.pair[0]) for r in chunk],
                       [r.pair[1] for r in chunk], template)
        out.append(lm.score(b, vector=vector, layer=layer).target_logprob.double().cpu())
    return torch.cat(out) if out else torch.empty(0, dtype=torch.float64)


def prototypicality_records(
    lm,
    ratings: Sequence[PrototypicalityRating],
    vectors: Mapping[str, Mapping[str, torch.Tensor]],
    layers: Mapping[str, Mapping[str, int]],
    template=None,
    baseline: bool = True,
    batch_size: int = 32,
    progress=None,
) -> tuple[list[dict], Skipped]:
    """One record per rated pair of a subtype with a vector of every kind: the gold rating and
    ``log P(B | prompt(A), vector of the subtype)`` per kind (``none``: no vector)."""
    kinds = list(vectors)
    skipped = Skipped()
    by_rel: dict[str, list[PrototypicalityRating]] = defaultdict(list)
    for r in ratings:
        by_rel[r.relation].append(r)
    have = set.intersection(*(set(v) for v in vectors.values())) if vectors else set()
    if by_rel and not have & set(by_rel):
        raise AlignmentError(
            f"no rated subtype has a vector: the ratings cover {', '.join(list(by_rel)[:12])}"
            f"{' ...' if len(by_rel) > 12 else ''}; the vectors are for "
            f"{', '.join(sorted(set().union(*(set(v) for v in vectors.values())))[:12])}"
        )
    records: list[dict] = []
    for rel, rs in by_rel.items():
        if rel not in have:
            skipped.counts[NO_VECTOR_SKIP] += len(rs)
            skipped.examples.setdefault(NO_VECTOR_SKIP, rel)
            continue
        xs = {}
        if baseline:
            xs["none"] = prototypicality_scores(lm, rs, None, None, template, batch_size)
        for k in kinds:
            xs[k] = prototypicality_scores(lm, rs, vectors[k][rel], layers[k][rel], template, batch_size)
        for i, r in enumerate(rs):
            records.append({"relation": rel, "pair": list(r.pair), "rating": r.rating,
                            **{k: float(v[i]) for k, v in xs.items()}})
        if progress is not None:
            progress(1)
    return records, skipped


def prototypicality_summary(
    records: Sequence[dict],
    names: Sequence[str],
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    min_pairs: int = 5,
    exclude: Iterable[tuple[str, str]] = (),
    skipped: Skipped | None = None,
) -> dict:
    """Per-subtype correlations of every ``names`` score with the gold rating, and their mean.

    Pairs in ``exclude`` (e.g. the vectors' training pairs) and subtypes with fewer than
    ``min_pairs`` remaining pairs are skipped and counted (``skipped`` counts pairs)."""
    exclude = set(exclude)
    skipped = Skipped(Counter(skipped.counts), dict(skipped.examples)) if skipped else Skipped()
    by_rel: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        if tuple(r["pair"]) in exclude:
            skipped.add(TRAIN_SKIP, ":".join(r["pair"]))
        else:
            by_rel[r["relation"]].append(r)
    per: dict[str, dict] = {}
    for rel, rs in by_rel.items():
        if len(rs) < min_pairs:
            why = f"pair of a subtype with fewer than {min_pairs} rated pairs"
            skipped.counts[why] += len(rs)
            skipped.examples.setdefault(why, rel)
            continue
        per[rel] = correlate({k: [r[k] for r in rs] for k in names}, [r["rating"] for r in rs],
                             n_boot, ci, seed, _compare(names))
    return {"n_subtypes": len(per), "n_pairs": sum(v["n"] for v in per.values()),
            "skipped": skipped.to_dict(), "n_skipped": skipped.total,
            "by_subtype": per, "mean": summarise_subtypes(per, names, n_boot, ci, seed)}


def prototypicality_alignment(
    lm,
    ratings: Sequence[PrototypicalityRating],
    vectors: Mapping[str, Mapping[str, torch.Tensor]],
    layers: Mapping[str, Mapping[str, int]],
    template=None,
    baseline: bool = True,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    batch_size: int = 32,
    min_pairs: int = 5,
    progress=None,
    exclude: Iterable[tuple[str, str]] = (),
) -> tuple[dict, list[dict]]:
    """Per subtype: ``log P(B | A, vector of the subtype)`` against the gold prototypicality.

    ``vectors[kind][subtype]`` with ``layers[kind][subtype]`` its injection layer. With
    ``baseline`` the same log-probability without a vector is reported as ``none``. Rated pairs of
    subtypes without a vector of every kind, pairs in ``exclude`` and subtypes with fewer than
    ``min_pairs`` pairs left are skipped and counted. Returns ``(metrics, records)``.
    """
    records, skipped = prototypicality_records(lm, ratings, vectors, layers, template, baseline,
                                               batch_size, progress)
    names = (["none"] if baseline else []) + list(vectors)
    return prototypicality_summary(records, names, n_boot, ci, seed, min_pairs, exclude, skipped), records


def train_pairs(splits: Iterable) -> set[tuple[str, str]]:
    """Every ``(x, answer)`` of the train splits of :class:`fvtrain.data.Split` objects."""
    return {(p.x, a) for s in splits for p in s.train for a in p.answers}


def summarise_subtypes(per: Mapping[str, dict], names: Sequence[str], n_boot: int = 1000,
                       ci: float = 0.95, seed: int = 0) -> dict:
    """Mean (with a bootstrap interval over subtypes), median and share of positive correlations."""
    out = {}
    for k in names:
        res = {}
        for stat in STATS:
            vals = torch.tensor([v[k][stat] for v in per.values() if v.get(k) and v[k][stat] is not None],
                                dtype=torch.float64)
            if vals.numel() == 0:
                res.update({stat: None, f"{stat}_ci": None, f"{stat}_median": None,
                            f"{stat}_positive": None})
                continue
            res[stat] = float(vals.mean())
            res[f"{stat}_median"] = float(vals.median())
            res[f"{stat}_positive"] = float((vals > 0).double().mean())
            if vals.numel() >= 2 and n_boot > 0:
                idx = bootstrap_indices(len(vals), n_boot, seed)
                res[f"{stat}_ci"] = _ci(vals[idx].mean(0), ci)
            else:
                res[f"{stat}_ci"] = None
        res["n"] = sum(1 for v in per.values() if v.get(k) and v[k]["spearman"] is not None)
        out[k] = res
    if {"fv", "ffv"} <= set(names):
        # Mean over subtypes of the per-subtype FFV - FV difference, with a bootstrap over subtypes.
        diff: dict = {"kinds": ["fv", "ffv"]}
        for stat in STATS:
            d = torch.tensor([v["ffv"][stat] - v["fv"][stat] for v in per.values()
                              if v.get("fv") and v.get("ffv") and v["fv"][stat] is not None
                              and v["ffv"][stat] is not None], dtype=torch.float64)
            diff[stat] = float(d.mean()) if d.numel() else None
            diff[f"{stat}_ci"] = (_ci(d[bootstrap_indices(len(d), n_boot, seed)].mean(0), ci)
                                  if d.numel() >= 2 and n_boot > 0 else None)
        out["difference"] = diff
    return out
