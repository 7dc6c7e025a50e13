"""Top-k heads by AIE and the function vector built from their mean outputs."""

from __future__ import annotations

import torch

from fvtrain.models.wrapper import FrozenLM


def top_heads(aie: torch.Tensor, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` heads with the largest AIE as ``(layer, head, aie)``, best first."""
    L, H = aie.shape
    if not 1 <= k <= L * H:
        raise ValueError(f"k={k} heads requested, but the model has {L * H} heads ({L} layers x {H})")
    vals, idx = aie.flatten().topk(k)
    return [(int(i) // H, int(i) % H, float(v)) for v, i in zip(vals, idx)]


def function_vector(
    lm: FrozenLM, mean: torch.Tensor, heads: list[tuple[int, int, float]] | list[tuple[int, int]]
) -> torch.Tensor:
    """``FV = sum over heads of W_O[:, slice(h)] @ mean[l, h]``: the heads' writes into the residual
    stream (no o_proj bias: it is not a head's; through the attention-output norm where the
    architecture has one, see :meth:`Adapter.residual_contributions`)."""
    fv = torch.zeros(lm.d_model, dtype=torch.float32)
    per_layer: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for l, h, *_ in heads:
            if l not in per_layer:
                per_layer[l] = lm.residual_contributions(l, mean[l]).float().cpu()
            fv += per_layer[l][h]
    return fv
