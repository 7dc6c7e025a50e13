"""Relation completion with and without a vector, and the layer sweep."""

from __future__ import annotations

from typing import Sequence

import torch
from torchmetrics.aggregation import MeanMetric

from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import make_batch


def completion(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    vector: torch.Tensor | None = None,
    layer: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Top-1 first-token accuracy (any accepted answer) and mean P(first target token)."""
    acc, prob = MeanMetric(), MeanMetric()
    for i in range(0, len(prompts), batch_size):
        b = make_batch(lm.tokenizer, prompts[i : i + batch_size], answers[i : i + batch_size])
        s = lm.score(b, vector=vector, layer=layer)
        acc.update(s.correct.float().cpu())
        prob.update(s.first_prob.cpu())
    return {"acc": float(acc.compute()), "prob": float(prob.compute()), "n": len(prompts)}


def layer_sweep(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    vector: torch.Tensor,
    batch_size: int = 8,
) -> dict[str, list[float]]:
    """Accuracy and P(first token) with the vector injected at each layer, in one pass per batch.

    Every prompt's prefix is run once; its last token is then run once per layer as rows of one
    batch (row ``b * L + l`` gets the vector at layer ``l``).
    """
    L = lm.n_layers
    correct = torch.zeros(L)
    prob = torch.zeros(L)
    n = 0
    layers_of_row = None
    for i in range(0, len(prompts), batch_size):
        b = make_batch(lm.tokenizer, prompts[i : i + batch_size], answers[i : i + batch_size])
        B = len(b)
        ids, mask = b.prompt_ids, b.prompt_mask
        cache = lm.prefix_cache(ids, mask)
        layers_of_row = torch.arange(L).repeat(B)
        edits = [(l, vector, (layers_of_row == l).nonzero(as_tuple=True)[0]) for l in range(L)]
        with torch.no_grad(), lm.inject_many(edits):
            logits = lm.last_token(ids, mask, cache, repeat=L).float()
        logp = logits.log_softmax(-1)
        tgt = b.target_ids[:, 0].to(logits.device).repeat_interleave(L)
        p = logp.gather(-1, tgt.unsqueeze(-1)).squeeze(-1).exp().view(B, L)
        firsts = b.first_token_matrix().to(logits.device).repeat_interleave(L, 0)
        ok = (logits.argmax(-1).unsqueeze(1) == firsts).any(-1).view(B, L)
        correct += ok.float().sum(0).cpu()
        prob += p.sum(0).cpu()
        n += B
    return {"acc": (correct / n).tolist(), "prob": (prob / n).tolist()}
