"""Mean per-head activations (inputs of the attention output projection) at the last token."""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import make_batch


def mean_head_activations(
    lm: FrozenLM,
    prompts: Sequence[str],
    batch_size: int = 16,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """``mean[l, h]`` over prompts of head h's o_proj input at the last prompt token.

    Returns ``[n_layers, n_heads, head_dim]`` in float32 on the CPU.
    """
    if not prompts:
        raise ValueError("mean head activations need at least one prompt")
    total = torch.zeros(lm.n_layers, lm.n_heads, lm.head_dim, dtype=torch.float64)
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i : i + batch_size])
        # A throwaway one-token answer: only the prompt columns are run.
        b = make_batch(lm.tokenizer, chunk, ["x"] * len(chunk))
        # The heads' inputs only: no unembedding, and no MLP after the last heads.
        with torch.no_grad(), lm.record_heads() as rec, lm.without_final_mlp():
            lm.body(b.prompt_ids, b.prompt_mask)
        total += torch.stack([rec[l].double().sum(0).cpu() for l in range(lm.n_layers)])
        if progress:
            progress(len(chunk))
    return (total / len(prompts)).float()
