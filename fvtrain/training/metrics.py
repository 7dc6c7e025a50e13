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

import torch
from torchmetrics import Metric


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

    def update(self, relation_index: torch.Tensor, correct: torch.Tensor, prob: torch.Tensor) -> None:
        idx = relation_index.to(self.correct.device, torch.long)
        self.correct.index_add_(0, idx, correct.detach().to(self.correct.device, torch.float64))
        self.prob.index_add_(0, idx, prob.detach().to(self.prob.device, torch.float64))
        self.count.index_add_(0, idx, torch.ones_like(idx, dtype=torch.float64))

    def compute(self) -> dict[str, torch.Tensor]:
        """``acc``, ``prob`` (NaN for relations without examples) and ``count``, per relation."""
        n = self.count
        safe = n.clamp(min=1)
        nan = torch.full_like(n, float("nan"))
        return {
            "acc": torch.where(n > 0, self.correct / safe, nan),
            "prob": torch.where(n > 0, self.prob / safe, nan),
            "count": n.clone(),
        }


def relation_scores(metric: RelationScores) -> dict[str, torch.Tensor]:
    """``metric.compute()`` as 1-D tensors (torchmetrics squeezes a single relation to 0-D)."""
    return {k: v.reshape(-1) for k, v in metric.compute().items()}


def mean_over_relations(values: torch.Tensor) -> float:
    """Mean over the relations that had examples (NaN entries are skipped)."""
    ok = ~torch.isnan(values)
    return float(values[ok].mean()) if bool(ok.any()) else float("nan")
