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


def hidden_logprobs(lm, hidden: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor,
                    tokens: str = "all") -> torch.Tensor:
    """:func:`token_logprobs` from final-normed hidden states ``[R, M, d]`` (``lm.body`` or
    ``continue_from(..., hidden_only=True)``) instead of logits: the vocabulary is unembedded block
    by block (``FrozenLM.vocab_stats``) and ``[R, M, vocab]`` never exists. No gradient."""
    if tokens not in ("all", "first"):
        raise ValueError(f"tokens must be 'all' or 'first', got {tokens!r}")
    if tokens == "first":
        hidden, target_ids, target_mask = hidden[:, :1], target_ids[:, :1], target_mask[:, :1]
    R, M, d = hidden.shape
    mask = target_mask.to(hidden.device).reshape(R * M)
    # Only target columns are unembedded: padding columns (shorter targets, single-token
    # candidates in a multi-token batch) would cost a vocabulary-wide row each for nothing.
    # The masks are built on the host: finding the columns there costs no device sync.
    keep = target_mask.reshape(R * M).nonzero().squeeze(1).to(hidden.device)
    picked = torch.zeros(R * M, device=hidden.device)
    if len(keep):
        ids = target_ids.to(hidden.device).reshape(R * M, 1)[keep]
        picked[keep] = lm.vocab_stats(hidden.reshape(R * M, d)[keep], ids, argmax=False).logprob()[:, 0]
    return (picked.view(R, M) * mask.view(R, M).to(picked.dtype)).sum(-1)
