"""Target log-probabilities from logits: the one formula every stage uses (composition scores,
the combiner's loss, multiple-choice analogies, prototypicality)."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor,
                   tokens: str = "all") -> torch.Tensor:
    """Per-row sum of log P(target token) from logits ``[R, M, V]`` (no full log-softmax copy);
    ``tokens="first"`` keeps the first target token only."""
    logits = logits.float()
    tgt = target_ids.to(logits.device)
    picked = logits.gather(-1, tgt.unsqueeze(-1)).squeeze(-1) - logits.logsumexp(-1)
    mask = target_mask.to(logits.device).to(picked.dtype)
    if tokens == "first":
        return picked[:, 0]
    if tokens != "all":
        raise ValueError(f"tokens must be 'all' or 'first', got {tokens!r}")
    return (picked * mask).sum(-1)
