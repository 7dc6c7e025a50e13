"""Attention of many rows against one shared cached prefix, without repeating the prefix.

The fast AIE, the layer sweep, composition scoring and the cached training step run each
prompt's last tokens ``r`` times (one head, layer or vector per row) against that prompt's
cached keys and values. Repeating the prefix ``r`` times first (``batch_repeat_interleave``)
writes ``r`` copies of every cached key and value, and attention then reads each copy once: on
the embedded model that copy alone was 6% of the fast AIE. Here the cache layers hand attention
only the rows' own new keys and values, and attention reads the prefix once per prompt: the
scores of all ``r`` rows against it are one matrix product.

It runs as an attention implementation of transformers (``AttentionInterface``) standing in for
``sdpa`` while :func:`shared_prefix` is active; attention masks are sdpa's own, so padding,
sliding windows and causality among the new tokens are exactly the model's. Models that run
another implementation (eager, flash) keep the repeated cache, and so does everything while
``FVTRAIN_SHARED_PREFIX=0`` is set or inside :func:`disabled` (for side-by-side timing).
"""

from __future__ import annotations

import os
import weakref
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Iterator

import torch

NAME = "fvtrain_shared_prefix"
BASE = "sdpa"  # the implementation whose semantics (and masks) this one reproduces

# Per forward: layer index -> (prefix keys, prefix values), filled by the cache layers'
# update and consumed by that layer's attention.
_PREFIX: ContextVar[dict | None] = ContextVar("fvtrain_shared_prefix", default=None)
_OFF: ContextVar[bool] = ContextVar("fvtrain_shared_prefix_off", default=False)
_registered = False
# Per model: the distinct configs its modules read the attention implementation from (found once,
# not on every forward).
_CONFIGS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


@contextmanager
def disabled() -> Iterator[None]:
    """Repeat the prefix the plain way within this context (benchmarks time both paths)."""
    token = _OFF.set(True)
    try:
        yield
    finally:
        _OFF.reset(token)


def _register() -> None:
    global _registered
    if _registered:
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(NAME, shared_prefix_attention)
    AttentionMaskInterface.register(NAME, sdpa_mask)
    _registered = True


def available(model) -> bool:
    """Whether forwards of ``model`` can share prefixes: it runs sdpa and sharing is not off."""
    if _OFF.get() or os.environ.get("FVTRAIN_SHARED_PREFIX", "1") == "0":
        return False
    return getattr(model.config, "_attn_implementation", None) == BASE


def supported(model, layers) -> bool:
    """Whether ``model`` runs sdpa attention and every cache layer in ``layers`` is a plain
    dynamic (or sliding-window) layer holding ``[B, heads, T, d]`` keys (and it is not off)."""
    from transformers.cache_utils import DynamicLayer, DynamicSlidingWindowLayer

    return available(model) and all(
        type(layer) in (DynamicLayer, DynamicSlidingWindowLayer) and not getattr(layer, "record_past", False)
        and getattr(layer, "keys", None) is not None and layer.keys.dim() == 4
        for layer in layers)


def _share(layer, index: int) -> None:
    """Make a fresh cache layer give attention the prefix once and the new rows as they are.
    The layer itself is left holding the prefix only: the forward's cache is not reusable."""
    keys, values = layer.keys, layer.values

    def update(new_keys: torch.Tensor, new_values: torch.Tensor, *args, **kwargs):
        table = _PREFIX.get()
        table[index] = (keys, values)
        return new_keys, new_values

    layer.update = update


@contextmanager
def shared_prefix(model, cache) -> Iterator[None]:
    """Within this context a forward of ``model`` on ``cache`` (a fresh view whose rows are the
    ``B`` prompts) treats its ``B * r`` new rows as ``r`` per prompt, prompt-major (row
    ``b * r + j`` continues prompt ``b``'s prefix); ``r`` may differ from layer to layer
    (:func:`fvtrain.models.hooks.join_at`).

    Raises if an attention layer took the new keys without going through the attention
    interface, which would have attended to the new tokens alone.
    """
    _register()
    for i, layer in enumerate(cache.layers):
        _share(layer, i)
    if model not in _CONFIGS:
        _CONFIGS[model] = {id(m.config): m.config for m in model.modules()
                           if hasattr(getattr(m, "config", None), "_attn_implementation")}
    configs = _CONFIGS[model]
    before = {k: c._attn_implementation for k, c in configs.items()}
    table: dict = {}
    token = _PREFIX.set(table)
    try:
        for c in configs.values():
            c._attn_implementation = NAME
        yield
        if table:
            raise RuntimeError(f"shared-prefix attention: layers {sorted(table)} stored new keys but "
                               f"never attended through the attention interface")
    finally:
        for k, c in configs.items():
            c._attn_implementation = before[k]
        _PREFIX.reset(token)


def shared_prefix_attention(module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            attention_mask: torch.Tensor | None, dropout: float = 0.0,
                            scaling: float | None = None, **kwargs):
    """sdpa attention of ``query`` ``[B*r, H, n, d]`` over the shared prefix of its prompt and its
    own row's ``key``/``value`` ``[B*r, KV, n, d]``; returns ``([B*r, n, H, d], None)`` as
    transformers' sdpa does. Layers without a shared prefix run sdpa itself."""
    table = _PREFIX.get()
    entry = table.pop(module.layer_idx, None) if table is not None else None
    if entry is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    pk, pv = entry
    B, KV, T, d = pk.shape
    R, H, n, _ = query.shape
    r = R // B
    if r * B != R:
        raise RuntimeError(f"shared-prefix attention: {R} rows do not split over {B} prompts")
    g = H // KV
    scale = scaling if scaling is not None else d ** -0.5
    # Scores, softmax and the weighted sum in float32, as sdpa's kernels accumulate them: rounding
    # the scores of a half-precision model to its dtype first costs it about 10% more error.
    dtype = query.dtype
    query, key, value, pk, pv = (t.float() for t in (query, key, value, pk, pv))
    # Prefix scores of all r rows of a prompt in one product: [B, KV, r*g*n, T].
    q = query.reshape(B, r, KV, g, n, d).transpose(1, 2).reshape(B, KV, r * g * n, d)
    s_pre = torch.matmul(q, pk.transpose(-1, -2)).view(B, KV, r, g, n, T) * scale
    # Each row against its own new tokens: [R, KV, g, n, n] -> [B, KV, r, g, n, n].
    s_new = torch.matmul(query.reshape(R, KV, g, n, d), key.reshape(R, KV, 1, n, d).transpose(-1, -2)) * scale
    s_new = s_new.view(B, r, KV, g, n, n).transpose(1, 2)
    if attention_mask is None:  # sdpa's mask was skipped: everything visible, causal among new tokens
        if n > 1:
            causal = torch.ones(n, n, dtype=torch.bool, device=query.device).tril()
            s_new = s_new.masked_fill(~causal, float("-inf"))
    else:
        if attention_mask.shape[-1] != T + n:
            raise RuntimeError(f"shared-prefix attention: mask covers {attention_mask.shape[-1]} keys, "
                               f"the prefix and new tokens are {T} + {n}")
        if attention_mask.shape[1] != 1 or attention_mask.shape[0] not in (1, R):
            raise RuntimeError(f"shared-prefix attention: unexpected mask shape {tuple(attention_mask.shape)}")
        # The repeats of a prompt share its prefix mask: one per prompt (or one for all).
        m = attention_mask.expand(R, 1, n, T + n)
        m_pre = m[::r, :, :, :T].reshape(B, 1, 1, 1, n, T)
        m_new = m[..., T:].reshape(B, r, 1, 1, n, n).transpose(1, 2)
        if attention_mask.dtype == torch.bool:
            s_pre = s_pre.masked_fill(~m_pre, float("-inf"))
            s_new = s_new.masked_fill(~m_new, float("-inf"))
        else:
            s_pre, s_new = s_pre + m_pre, s_new + m_new
    p = torch.cat([s_pre, s_new], -1).softmax(-1)
    out = torch.matmul(p[..., :T].reshape(B, KV, r * g * n, T), pv).view(B, KV, r, g, n, d)
    own = p[..., T:].transpose(1, 2).reshape(R, KV, g * n, n)
    out = out.transpose(1, 2).reshape(R, KV, g * n, d) + torch.matmul(own, value)
    return out.reshape(R, H, n, d).transpose(1, 2).to(dtype).contiguous(), None
