"""Per-relation first-token accuracy and target probability as one torchmetrics metric.

The states are per-relation *sums* (correct answers, target probabilities, examples), reduced
across processes by summing. Accuracy is therefore micro-averaged within each relation (every
example counts once, whichever process or batch it came from) and exact under DDP as long as no
example is evaluated twice; the samplers in :mod:`fvtrain.data.datamodules` shard without padding.
The mean over relations is the plain mean of the per-relation values.

(torchmetrics' ``MulticlassAccuracy`` would not fit: an example may have several accepted answers,
and its default ``average="macro"`` would average over token classes.)
"""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics import Metric

ITEM_STRIDE = 1_000_000  # item key = relation_index * ITEM_STRIDE + the pair's position in its split


def item_keys(examples) -> torch.Tensor:
    """One key per test example, the same for every mode and method that saw its pair."""
    return torch.tensor([e.relation_index * ITEM_STRIDE + e.pair for e in examples], dtype=torch.long)


class RelationScores(Metric):
    """Sums of correct answers, first-token probabilities and examples, one slot per relation."""

    full_state_update = False
    higher_is_better = True
    is_differentiable = False

    def __init__(self, n_relations: int, **kwargs) -> None:
        super().__init__(**kwargs)
        self.n_relations = int(n_relations)
        for name in ("correct", "prob", "count"):
            self.add_state(name, torch.zeros(self.n_relations, dtype=torch.float64), dist_reduce_fx="sum")
        # Per-item outcomes (only when update() gets item keys: the test loop). Bootstrap intervals
        # and paired differences between methods need them; gathered across processes by "cat".
        self.add_state("item_key", [], dist_reduce_fx="cat")
        self.add_state("item_correct", [], dist_reduce_fx="cat")

    def update(self, relation_index: torch.Tensor, correct: torch.Tensor, prob: torch.Tensor,
               item_key: torch.Tensor | None = None) -> None:
        idx = relation_index.to(self.correct.device, torch.long)
        self.correct.index_add_(0, idx, correct.detach().to(self.correct.device, torch.float64))
        self.prob.index_add_(0, idx, prob.detach().to(self.prob.device, torch.float64))
        self.count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))
        if item_key is not None:
            self.item_key.append(item_key.detach().to(self.correct.device, torch.long).reshape(-1))
            self.item_correct.append(correct.detach().to(self.correct.device, torch.float64).reshape(-1))

    def outcomes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(keys, correct)`` of every item seen, sorted by key (inside ``compute``, after the DDP
        sync: of every process)."""
        keys, vals = self.item_key, self.item_correct
        if isinstance(keys, list):  # not synced: the local list of batches
            keys = torch.cat(keys) if keys else torch.zeros(0, dtype=torch.long)
            vals = torch.cat(vals) if vals else torch.zeros(0, dtype=torch.float64)
        order = torch.argsort(keys.reshape(-1))
        return keys.reshape(-1)[order].cpu(), vals.reshape(-1)[order].cpu()

    def compute(self) -> dict[str, torch.Tensor]:
        """``acc``, ``prob`` (NaN for relations without examples) and ``count``, per relation, and the
        per-item ``item_key`` / ``item_correct`` (empty unless update() was given keys)."""
        n = self.count
        safe = n.clamp(min=1)
        nan = torch.full_like(n, float("nan"))
        keys, correct = self.outcomes()
        return {
            "acc": torch.where(n > 0, self.correct / safe, nan),
            "prob": torch.where(n > 0, self.prob / safe, nan),
            "count": n.clone(),
            "item_key": keys,
            "item_correct": correct,
        }


def relation_scores(metric: RelationScores) -> dict[str, torch.Tensor]:
    """``metric.compute()`` as 1-D tensors (torchmetrics squeezes a single relation to 0-D)."""
    return {k: v.reshape(-1) for k, v in metric.compute().items()}


def mean_over_relations(values: torch.Tensor) -> float:
    """Mean over the relations that had examples (NaN entries are skipped)."""
    ok = ~torch.isnan(values)
    return float(values[ok].mean()) if bool(ok.any()) else float("nan")


# Paired differences the test table reports (b - a): what the FFV adds over each alternative.
DIFFERENCES = (("none", "ffv"), ("fv", "ffv"), ("ffv_random", "ffv"), ("soft_prompt", "ffv"), ("icl", "ffv"))


def completion_intervals(outcomes: dict[str, dict], relations: Sequence[str], mode: str = "zero_shot",
                         seed: int = 0) -> dict:
    """Bootstrap intervals of the ``mode`` test table from per-item outcomes (``test_outcomes.json``):
    ``{"relations": {r: {m: [lo, hi]}}, "mean": {m: [lo, hi]}, "differences": {"ffv - fv": ...},
    "bootstrap": ...}``. Means are over relations (resampled within each relation); differences are
    paired on the items both methods saw."""
    from fvtrain.evaluation import stats

    per_method: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for name, o in outcomes.items():
        m = "icl" if name == "icl" else (name.split("/", 1)[1] if name.startswith(f"{mode}/") else None)
        if m is not None:
            per_method[m] = (torch.tensor(o["key"], dtype=torch.long), torch.tensor(o["correct"], dtype=torch.float64))
    out: dict = {"relations": {r: {} for r in relations}, "mean": {}, "differences": {},
                 "bootstrap": stats._meta(stats.N_BOOT, stats.LEVEL, seed)}
    for m, (keys, vals) in per_method.items():
        groups = keys // ITEM_STRIDE
        out["mean"][m] = stats.mean_ci(vals, groups, seed=seed)
        for i, r in enumerate(relations):
            sel = groups == i
            if bool(sel.any()):
                out["relations"][r][m] = stats.mean_ci(vals[sel], seed=seed)
    for a, b in DIFFERENCES:
        if a not in per_method or b not in per_method:
            continue
        (ka, va), (kb, vb) = per_method[a], per_method[b]
        common = torch.tensor(sorted(set(ka.tolist()) & set(kb.tolist())), dtype=torch.long)
        if not len(common):
            continue
        ia, ib = torch.searchsorted(ka, common), torch.searchsorted(kb, common)
        res = stats.compare({a: va[ia], b: vb[ib]}, common // ITEM_STRIDE, [(a, b)], seed=seed)
        d = res["differences"][f"{b} - {a}"]
        d["n"] = int(len(common))
        out["differences"][f"{b} - {a}"] = d
    return out
