"""Average indirect effect of every attention head: a reference path and a fast path.

Indirect effect of head (l, h) on a shuffled-ICL prompt: replace that head's o_proj input at the
last token by its mean over clean ICL prompts and measure the change in probability of the first
target token. The reference runs one full forward per head and prompt, as in Todd et al. The fast
path exploits that only the last token changes: it runs each prompt's prefix once, keeps its
keys/values, and runs the last token alone for many heads at once (one head per batch row).
Both compute logits at the last position only, so their ratio measures caching and batching.
"""

from __future__ import annotations

from typing import Callable

import torch

from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import PromptBatch


def _target_prob(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Softmax probability of one token per row, without materialising the softmax."""
    z = logits.float()
    m = z.max(-1, keepdim=True).values
    denom = (z - m).exp_().sum(-1)
    return (z.gather(-1, target.unsqueeze(-1)) - m).squeeze(-1).exp() / denom


def _check(lm: FrozenLM, mean: torch.Tensor) -> None:
    want = (lm.n_layers, lm.n_heads, lm.head_dim)
    if tuple(mean.shape) != want:
        raise ValueError(f"mean activations have shape {tuple(mean.shape)}, expected {want}")


def aie_reference(
    lm: FrozenLM,
    batch: PromptBatch,
    mean: torch.Tensor,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Indirect effects ``[N, L, H]`` and corrupted probabilities ``[N]``, one forward per head.

    Each prompt is run unpadded at batch size 1.
    """
    _check(lm, mean)
    L, H = lm.n_layers, lm.n_heads
    N = len(batch)
    effects = torch.zeros(N, L, H)
    base = torch.zeros(N)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    for i in range(N):
        row = ids[i][mask[i].bool()].unsqueeze(0)
        ones = torch.ones_like(row)
        target = batch.target_ids[i, :1].to(lm.device)
        with torch.no_grad():
            base[i] = _target_prob(lm.forward(row, ones).logits[:, -1], target)[0].cpu()
            for l in range(L):
                for h in range(H):
                    with lm.patch_heads([l], [h], mean[l, h].unsqueeze(0)):
                        p = _target_prob(lm.forward(row, ones).logits[:, -1], target)[0]
                    effects[i, l, h] = p.cpu() - base[i]
        if progress:
            progress(L * H)
    return effects, base


def aie_fast(
    lm: FrozenLM,
    batch: PromptBatch,
    mean: torch.Tensor,
    max_rows: int = 512,
    progress: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`aie_reference`, from cached prefixes and batched last tokens.

    Prompts are processed in groups of G, heads in chunks of R, with ``G * R <= max_rows``
    last-token rows per forward (row ``g * R + r`` patches head ``r`` of the chunk for prompt g).
    """
    _check(lm, mean)
    L, H = lm.n_layers, lm.n_heads
    all_l = torch.arange(L).repeat_interleave(H)
    all_h = torch.arange(H).repeat(L)
    n_heads = L * H
    N = len(batch)
    R = min(n_heads, max_rows)
    G = max(1, max_rows // R)
    effects = torch.zeros(N, L, H)
    base = torch.zeros(N)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    values = mean.to(lm.device, lm.dtype)
    for g0 in range(0, N, G):
        gi, gm = ids[g0 : g0 + G], mask[g0 : g0 + G]
        n = gi.shape[0]
        target = batch.target_ids[g0 : g0 + G, 0].to(lm.device)
        cache = lm.prefix_cache(gi, gm)
        with torch.no_grad():
            p0 = _target_prob(lm.last_token(gi, gm, cache), target)
            base[g0 : g0 + n] = p0.cpu()
            for c0 in range(0, n_heads, R):
                cl, ch = all_l[c0 : c0 + R], all_h[c0 : c0 + R]
                r = len(cl)
                rows = torch.arange(n * r)
                with lm.patch_heads(cl.repeat(n), ch.repeat(n), values[cl, ch].repeat(n, 1), rows=rows):
                    logits = lm.last_token(gi, gm, cache, repeat=r)
                p = _target_prob(logits, target.repeat_interleave(r)).view(n, r)
                flat = effects[g0 : g0 + n].view(n, n_heads)
                flat[:, c0 : c0 + r] = (p - p0.unsqueeze(1)).cpu()
                if progress:
                    progress(n * r)
    return effects, base
