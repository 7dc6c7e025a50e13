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
    """Softmax probability of one token per row. Consumes ``logits``: the softmax runs in place,
    since a fresh ``[rows, vocab]`` buffer per chunk costs more than the exponentials."""
    z = logits.float()
    zt = z.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    m = z.max(-1, keepdim=True).values
    denom = z.sub_(m).exp_().sum(-1)
    return (zt - m.squeeze(-1)).exp() / denom


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
    max_rows: int = 2048,
    progress: Callable[[int], None] | None = None,
    layer_start: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Same result as :func:`aie_reference`, from cached prefixes and batched last tokens.

    Prompts are processed in groups of G, heads in chunks of R, with ``G * R <= max_rows``
    last-token rows per forward (row ``g * R + r`` patches head ``r`` of the chunk for prompt g).
    With ``layer_start`` a patched row runs only the blocks from its head's layer up: below it
    the patched token's residual stream equals the unpatched one, which is recorded once per
    prompt, so about half of the blocks need not run. When every head of a prompt fits
    (``max_rows >= L * H``) one forward holds them all, each row joining at its layer
    (:func:`fvtrain.models.hooks.join_at`), so block ``l`` multiplies ``G * (l + 1) * H`` rows at
    once; otherwise a chunk holds heads of one layer and starts there. The forwards stop at
    the final norm; the unembedding, the costliest step per row on a large vocabulary, runs on
    ``max_rows`` rows at a time gathered across chunks, where a matrix product is most efficient,
    and block by block over the vocabulary (:meth:`FrozenLM.vocab_stats`).
    """
    _check(lm, mean)
    L, H = lm.n_layers, lm.n_heads
    n_heads = L * H
    # Every head of a prompt in one forward, each row joining at its head's layer, when a
    # prompt's L * H rows fit in max_rows; otherwise one forward per layer (or chunk of heads).
    joined = layer_start and max_rows >= n_heads
    if joined:
        R = n_heads
        chunks = []
    elif layer_start:
        R = min(H, max_rows)
        chunks = [(torch.full((len(hs),), l), hs, l)
                  for l in range(L) for hs in torch.arange(H).split(R)]
    else:
        R = min(n_heads, max_rows)
        chunks = [(fl // H, fl % H, 0) for fl in torch.arange(n_heads).split(R)]
    N = len(batch)
    G = max(1, max_rows // R)
    probs = torch.zeros(N, n_heads)  # patched probabilities; effects are these minus the base
    base = torch.zeros(N)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    targets = batch.target_ids[:, 0]
    values = mean.to(lm.device, lm.dtype)
    # (hidden, prompt, head) rows waiting for the unembedding; head -1 is the unpatched prompt.
    pending: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def unembed_pending() -> None:
        hidden, prompt, head = (torch.cat(x) for x in zip(*pending))
        pending.clear()
        st = lm.vocab_stats(hidden, targets[prompt].unsqueeze(1), argmax=False)
        p = st.logprob()[:, 0].exp().cpu()
        unpatched = head < 0
        base[prompt[unpatched]] = p[unpatched]
        probs[prompt[~unpatched], head[~unpatched]] = p[~unpatched]

    def add(hidden: torch.Tensor, prompt: torch.Tensor, head: torch.Tensor) -> None:
        pending.append((hidden, prompt, head))
        if sum(len(x[0]) for x in pending) >= max_rows:
            unembed_pending()

    for g0 in range(0, N, G):
        gi, gm = ids[g0 : g0 + G], mask[g0 : g0 + G]
        n = gi.shape[0]
        cache = lm.prefix_cache(gi, gm)
        with torch.no_grad():
            if layer_start:
                hidden0, resid = lm.last_token_inputs(gi, gm, cache)
            else:
                hidden0, resid = lm.last_token(gi, gm, cache, hidden_only=True), None
            add(hidden0, torch.arange(g0, g0 + n), torch.full((n,), -1))
            if joined:
                # Row b * R + l * H + h patches head (l, h) of prompt b; at block l each prompt
                # runs its first (l + 1) * H rows, so that row is b * (l + 1) * H + l * H + h there.
                layer_of = torch.arange(L).repeat_interleave(H)
                head_of = torch.arange(H).repeat(L)
                b = torch.arange(n).repeat_interleave(R)
                l, h = layer_of.repeat(n), head_of.repeat(n)
                with lm.patch_heads(l, h, values[l, h], rows=b * (l + 1) * H + l * H + h):
                    hidden = lm.last_token(gi, gm, cache, repeat=R, hidden_only=True, join=(layer_of, resid))
                add(hidden, torch.arange(g0, g0 + n).repeat_interleave(R), torch.arange(R).repeat(n))
                if progress:
                    progress(n * R)
            for cl, ch, start in chunks:
                r = len(cl)
                rows = torch.arange(n * r)
                res = resid[start].repeat_interleave(r, 0) if start else None
                with lm.patch_heads(cl.repeat(n), ch.repeat(n), values[cl, ch].repeat(n, 1), rows=rows):
                    hidden = lm.last_token(gi, gm, cache, repeat=r, start_layer=start, residual=res,
                                           hidden_only=True)
                add(hidden, torch.arange(g0, g0 + n).repeat_interleave(r), (cl * H + ch).repeat(n))
                if progress:
                    progress(n * r)
    if pending:
        unembed_pending()
    return (probs - base.unsqueeze(1)).view(N, L, H), base
