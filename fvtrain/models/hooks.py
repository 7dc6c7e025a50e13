"""Forward hooks as context managers: inject, record and patch.

All three work on batched, left-padded inputs with per-row positions (default: the last column,
which is every row's last real token under left padding), can be nested, and remove themselves
on exit, also when the body raises. ``positions`` may be an int (same column for every row, negative
counts from the end) or a ``[rows]`` LongTensor.
"""

from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator, Sequence

import torch

from fvtrain.models.adapters import Adapter

Positions = int | torch.Tensor | None


def _columns(positions: Positions, n_rows: int, seq_len: int, device) -> torch.Tensor:
    if positions is None:
        positions = -1
    if isinstance(positions, int):
        col = positions if positions >= 0 else seq_len + positions
        if not 0 <= col < seq_len:
            raise IndexError(f"position {positions} outside a sequence of length {seq_len}")
        return torch.full((n_rows,), col, dtype=torch.long, device=device)
    pos = positions.to(device=device, dtype=torch.long)
    if pos.shape != (n_rows,):
        raise ValueError(f"positions must have shape ({n_rows},), got {tuple(pos.shape)}")
    return torch.where(pos < 0, pos + seq_len, pos)


def _rows(rows: torch.Tensor | None, batch: int, device) -> torch.Tensor:
    if rows is None:
        return torch.arange(batch, device=device)
    return rows.to(device=device, dtype=torch.long)


@contextmanager
def inject(
    adapter: Adapter,
    vectors: torch.Tensor,
    layer: int,
    positions: Positions = None,
    rows: torch.Tensor | None = None,
    first_call_only: bool = False,
) -> Iterator[None]:
    """Add ``vectors`` to the output of block ``layer``.

    ``vectors`` is one shared ``[d_model]`` vector or ``[n, d_model]`` with one row per edited
    batch row (``rows``, default all rows). With ``first_call_only`` only the first forward is
    edited: under ``generate()`` that is the prompt, so only its last position changes and the
    new tokens see the edit through the cache.
    """
    with _edit_block_output(adapter, layer, vectors, positions, rows, first_call_only, accumulate=True):
        yield


@contextmanager
def _edit_block_output(adapter: Adapter, layer: int, vectors: torch.Tensor, positions: Positions,
                       rows: torch.Tensor | None, first_call_only: bool, accumulate: bool) -> Iterator[None]:
    """The hook behind :func:`inject` (``accumulate``: add) and :func:`replace` (overwrite)."""
    block = adapter.block(layer)
    calls = 0

    def hook(module, args, output):
        nonlocal calls
        calls += 1
        if first_call_only and calls > 1:
            return output
        hidden = output[0] if isinstance(output, tuple) else output
        b, t, _ = hidden.shape
        r = _rows(rows, b, hidden.device)
        cols = _columns(positions, len(r), t, hidden.device)
        v = vectors.to(device=hidden.device, dtype=hidden.dtype)
        if v.dim() == 1:
            v = v.expand(len(r), -1)
        # Out of place, so autograd can flow into the vector and the frozen output is untouched.
        hidden = hidden.index_put((r, cols), v, accumulate=accumulate)
        if isinstance(output, tuple):
            return (hidden,) + tuple(output[1:])
        return hidden

    handle = block.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def inject_many(
    adapter: Adapter,
    edits: Sequence[tuple[int, torch.Tensor, torch.Tensor | None]],
    positions: Positions = None,
) -> Iterator[None]:
    """Several injections at once: ``(layer, vectors, rows)`` each (e.g. one layer per row)."""
    with ExitStack() as stack:
        for layer, vecs, rows in edits:
            stack.enter_context(inject(adapter, vecs, layer, positions=positions, rows=rows))
        yield


@contextmanager
def record_heads(
    adapter: Adapter,
    layers: Sequence[int] | None = None,
    positions: Positions = None,
) -> Iterator[dict[int, torch.Tensor]]:
    """Record per-head inputs of the attention output projection.

    Yields a dict filled during the forward: ``layer -> [batch, n_heads, head_dim]`` at each
    row's position (a later forward overwrites the entry).
    """
    layers = list(range(adapter.n_layers)) if layers is None else [adapter.check_layer(l) for l in layers]
    store: dict[int, torch.Tensor] = {}
    H, D = adapter.n_heads, adapter.head_dim

    def make(layer: int):
        def pre_hook(module, args):
            x = args[0]
            b, t, _ = x.shape
            cols = _columns(positions, b, t, x.device)
            picked = x[torch.arange(b, device=x.device), cols]
            store[layer] = picked.detach().reshape(b, H, D)

        return pre_hook

    handles = [adapter.out_proj(l).register_forward_pre_hook(make(l)) for l in layers]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def patch_heads(
    adapter: Adapter,
    layers: torch.Tensor | Sequence[int],
    heads: torch.Tensor | Sequence[int],
    values: torch.Tensor,
    rows: torch.Tensor | Sequence[int] | None = None,
    positions: Positions = None,
) -> Iterator[None]:
    """Replace head slices of the output projection's input with ``values``.

    Entry ``i`` sets head ``heads[i]`` of layer ``layers[i]`` in batch row ``rows[i]`` (default
    ``i``) at that row's position to ``values[i]`` (``[head_dim]``). Rows may repeat, so one row
    can patch several heads, or every row a different head (the fast AIE batch).
    """
    layers = torch.as_tensor(layers, dtype=torch.long)
    heads = torch.as_tensor(heads, dtype=torch.long)
    n = len(layers)
    rows = torch.arange(n) if rows is None else torch.as_tensor(rows, dtype=torch.long)
    if not (len(heads) == len(rows) == n == values.shape[0]):
        raise ValueError("layers, heads, rows and values must have the same length")
    if values.shape[-1] != adapter.head_dim:
        raise ValueError(f"values must be [n, head_dim={adapter.head_dim}], got {tuple(values.shape)}")
    for l in layers.unique().tolist():
        adapter.check_layer(int(l))
    if n and (heads.min() < 0 or heads.max() >= adapter.n_heads):
        raise ValueError(f"head index out of range 0..{adapter.n_heads - 1}")
    H, D = adapter.n_heads, adapter.head_dim

    def make(sel: torch.Tensor):
        def pre_hook(module, args):
            x = args[0]
            b, t, _ = x.shape
            r = rows[sel].to(x.device)
            cols = _columns(positions, b, t, x.device)[r]
            x4 = x.reshape(b, t, H, D).clone()
            x4[r, cols, heads[sel].to(x.device)] = values[sel].to(device=x.device, dtype=x.dtype)
            return (x4.reshape(b, t, H * D),) + tuple(args[1:])

        return pre_hook

    handles = []
    try:
        for l in layers.unique().tolist():
            sel = (layers == l).nonzero(as_tuple=True)[0]
            handles.append(adapter.out_proj(int(l)).register_forward_pre_hook(make(sel)))
        yield
    finally:
        for h in handles:
            h.remove()


def _hidden_arg(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


@contextmanager
def record_block_inputs(adapter: Adapter, positions: Positions = None) -> Iterator[dict]:
    """Yield ``{"inputs": [L, B, d_model], "tuple": bool}``, filled by the next forward.

    ``inputs[l]`` is the residual stream entering block ``l`` at each row's position (default the
    last column); ``tuple`` says whether blocks return tuples (needed by :func:`start_at`).
    """
    out: dict = {"inputs": [None] * adapter.n_layers, "tuple": False}
    handles = []

    def make(l: int):
        def pre_hook(module, args, kwargs):
            x = _hidden_arg(args, kwargs)
            cols = _columns(positions, x.shape[0], x.shape[1], x.device)
            out["inputs"][l] = x[torch.arange(x.shape[0], device=x.device), cols].detach()

        return pre_hook

    def on_output(module, args, output):
        out["tuple"] = isinstance(output, tuple)

    try:
        for l, block in enumerate(adapter.blocks):
            handles.append(block.register_forward_pre_hook(make(l), with_kwargs=True))
        handles.append(adapter.blocks[0].register_forward_hook(on_output))
        yield out
    finally:
        for h in handles:
            h.remove()
    if all(x is not None for x in out["inputs"]):
        out["inputs"] = torch.stack(out["inputs"])


@contextmanager
def replace(adapter: Adapter, vectors: torch.Tensor, layer: int, positions: Positions = None) -> Iterator[None]:
    """Overwrite block ``layer``'s output at each row's position (default the last column) with
    ``vectors`` (``[d_model]`` or ``[B, d_model]``): Hendel et al.'s task-vector patching, where
    :func:`inject` adds."""
    with _edit_block_output(adapter, layer, vectors, positions, None, False, accumulate=False):
        yield


@contextmanager
def record_block_output(adapter: Adapter, layer: int, positions: Positions = None) -> Iterator[dict]:
    """Yield ``{"output": [B, d_model]}``: block ``layer``'s output (the residual stream where vectors
    are injected) at each row's position (default the last column), filled by the next forward.
    """
    adapter.check_layer(layer)
    out: dict = {"output": None}

    def hook(module, args, output):
        hidden = output[0] if isinstance(output, tuple) else output
        cols = _columns(positions, hidden.shape[0], hidden.shape[1], hidden.device)
        out["output"] = hidden[torch.arange(hidden.shape[0], device=hidden.device), cols].detach()

    handle = adapter.block(layer).register_forward_hook(hook)
    try:
        yield out
    finally:
        handle.remove()


class _Skip(torch.nn.Module):
    """Stands in for a block that must not run: passes its input through, or returns ``replace``."""

    def __init__(self, as_tuple: bool, replace: torch.Tensor | None = None) -> None:
        super().__init__()
        self.as_tuple, self.replace = as_tuple, replace

    def forward(self, *args, **kwargs):
        hidden = _hidden_arg(args, kwargs) if self.replace is None else self.replace
        return (hidden,) if self.as_tuple else hidden


class _NoMLP(torch.nn.Module):
    """Stands in for an MLP whose output nothing reads: adds zero to the residual stream."""

    def forward(self, hidden, *args, **kwargs):
        return torch.zeros_like(hidden)


@contextmanager
def skip_mlp(adapter: Adapter, layer: int) -> Iterator[None]:
    """Do not run block ``layer``'s MLP (its output is zero) for the next forwards.

    For passes that read only what comes before it: the block's keys/values (a prefix cache)
    or its heads' inputs (mean activations). In the last block the MLP feeds nothing else, and
    it is most of the block's work.
    """
    owner, name = adapter.mlp_slot(layer)
    mlp = getattr(owner, name)
    setattr(owner, name, _NoMLP())
    try:
        yield
    finally:
        setattr(owner, name, mlp)


@contextmanager
def start_at(adapter: Adapter, layer: int, residual: torch.Tensor, as_tuple: bool = False) -> Iterator[None]:
    """Run only blocks ``layer..L-1``, feeding ``residual`` (``[B, T, d_model]``) to block ``layer``.

    Valid when nothing before block ``layer`` differs from the run that recorded ``residual``
    (e.g. a head patched at ``layer``): the skipped blocks would recompute it exactly. Their
    cache entries are not extended, so the cache is for this one forward only.
    """
    adapter.check_layer(layer)
    saved = [adapter.blocks[j] for j in range(layer)]
    try:
        for j in range(layer):
            adapter.blocks[j] = _Skip(as_tuple, residual if j == layer - 1 else None)
        yield
    finally:
        for j, block in enumerate(saved):
            adapter.blocks[j] = block


class _Joined(torch.nn.Module):
    """Block ``j`` of a forward whose rows join at different blocks: rows ``joining`` take their
    recorded residual here, and the block runs on the ``active`` rows only (the others pass)."""

    def __init__(self, block, active: torch.Tensor, joining: torch.Tensor, values: torch.Tensor,
                 as_tuple: bool) -> None:
        super().__init__()
        self.block, self.as_tuple = block, as_tuple
        self.active, self.joining, self.values = active, joining, values

    def forward(self, *args, **kwargs):
        hidden = _hidden_arg(args, kwargs)
        R = hidden.shape[0]
        if len(self.active) == 0:
            return (hidden,) if self.as_tuple else hidden
        hidden = hidden.clone()
        if len(self.joining):
            hidden[self.joining.to(hidden.device), -1] = self.values.to(hidden.device, hidden.dtype)
        active = self.active.to(hidden.device)

        def rows(x):  # every per-row argument (states, masks, positions, rotary tables) to the active rows
            if isinstance(x, torch.Tensor) and x.dim() and x.shape[0] == R:
                return x.index_select(0, active)
            if isinstance(x, tuple) and any(isinstance(t, torch.Tensor) for t in x):
                return tuple(rows(t) for t in x)
            return x

        args = (hidden,) + args[1:] if args else args
        if not args:
            kwargs = {**kwargs, "hidden_states": hidden}
        out = self.block(*(rows(a) for a in args), **{k: rows(v) for k, v in kwargs.items()})
        hidden.index_copy_(0, active, out[0] if isinstance(out, tuple) else out)
        return (hidden,) if self.as_tuple else hidden


def joined_rows(starts: torch.Tensor, n_layers: int) -> list[int]:
    """How many of a prompt's rows (start layers ``starts``, ascending) each block runs."""
    return [int((starts <= j).sum()) for j in range(n_layers)]


@contextmanager
def join_at(adapter: Adapter, starts: torch.Tensor, residual: torch.Tensor, as_tuple: bool = False
            ) -> Iterator[None]:
    """Rows that start at different blocks in one forward, for edits at different layers.

    The batch is ``B`` prompts x ``r`` rows, prompt-major (row ``b * r + i``); row ``i`` of every
    prompt starts at block ``starts[i]`` (ascending) from ``residual[starts[i], b]``
    (``[L, B, d_model]``, the residual stream entering each block at the last column, as
    :func:`record_block_inputs` gives it), and blocks below it never run for it, as with
    :func:`start_at`. Block ``j`` runs the first ``k_j`` rows of every prompt
    (:func:`joined_rows`), so an edit at layer ``l`` addresses row ``b * k_l + i`` there. One
    forward replaces one per start layer, and each block's products run on all its rows at once.
    """
    starts = torch.as_tensor(starts, dtype=torch.long)
    if starts.dim() != 1 or not bool((starts[1:] >= starts[:-1]).all()):
        raise ValueError("join_at: starts must be one ascending start layer per row of a prompt")
    L, B = residual.shape[0], residual.shape[1]
    r = len(starts)
    saved = list(adapter.blocks)
    try:
        for j, k in enumerate(joined_rows(starts, L)):
            prompt = torch.arange(B).repeat_interleave(k)
            active = prompt * r + torch.arange(k).repeat(B)
            new = (starts == j).nonzero(as_tuple=True)[0]
            joining = (torch.arange(B).repeat_interleave(len(new)) * r + new.repeat(B))
            values = residual[j].repeat_interleave(len(new), 0)
            adapter.blocks[j] = _Joined(saved[j], active, joining, values, as_tuple)
        yield
    finally:
        for j, block in enumerate(saved):
            adapter.blocks[j] = block
