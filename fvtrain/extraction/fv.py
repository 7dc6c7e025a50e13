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


FV_BIAS = ("none", "per_head")


def function_vector(
    lm: FrozenLM,
    mean: torch.Tensor,
    heads: list[tuple[int, int, float]] | list[tuple[int, int]],
    bias: str = "none",
) -> torch.Tensor:
    """``FV = sum over heads of W_O[:, slice(h)] @ mean[l, h]``: the heads' writes into the residual
    stream (through the attention-output norm where the architecture has one, see
    :meth:`Adapter.residual_contributions`).

    ``bias``: ``none`` (default) adds no o_proj bias, since it is no head's; ``per_head`` adds it
    once per selected head, as Todd et al.'s code does (it runs the whole ``out_proj`` on each
    head's zero-padded mean), for exact reproduction of their vectors.
    """
    if bias not in FV_BIAS:
        raise ValueError(f"extract.fv_bias={bias!r}: it must be one of {', '.join(FV_BIAS)}")
    fv = torch.zeros(lm.d_model, dtype=torch.float32)
    per_layer: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for l, h, *_ in heads:
            if l not in per_layer:
                per_layer[l] = lm.residual_contributions(l, mean[l]).float().cpu()
            fv += per_layer[l][h]
            if bias == "per_head":
                fv += lm.residual_bias(l, mean[l]).float().cpu()
    return fv


FV_VARIANTS = ("plain", "centred", "centred_zero_shot")


def centred_function_vector(
    lm: FrozenLM,
    mean: torch.Tensor,
    baseline: torch.Tensor,
    heads: list[tuple[int, int, float]] | list[tuple[int, int]],
    bias: str = "none",
) -> torch.Tensor:
    """The plain FV minus the same heads' writes at their ``baseline`` means (``extract.fv_variant``
    ``centred``: shuffled-ICL twins of the clean prompts; ``centred_zero_shot``: zero-shot prompts).

    What a head writes on every prompt of the format (on Gemma 3 mostly one massive-activation
    channel) cancels; what the demonstrated relation adds remains. Any bias stays as in the plain FV.
    """
    return function_vector(lm, mean, heads, bias) - function_vector(lm, baseline, heads)
