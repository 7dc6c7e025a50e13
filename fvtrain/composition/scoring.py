"""Scoring basis vectors on source pairs, and target log-probabilities with injected vectors.

``s[b, i] = log P(B_b | prompt(A_b), vector_i injected)``: the full (all-token) log-probability of
the target with basis vector ``i`` added to block ``layer``'s output at the last prompt token.

The batched path runs each prompt's prefix (every column but the last prompt token) once and keeps
its keys/values; the last prompt token and the target tokens then run against that cache with one
row per (prompt, vector), so N vectors cost one forward of N short rows instead of N full forwards.
Only the columns that predict target tokens produce logits. :func:`source_scores_loop` is the
reference (one :meth:`FrozenLM.score` call per vector) that tests hold the batched path to.
"""

from __future__ import annotations

from typing import Sequence

import torch

from fvtrain.models.scoring import hidden_logprobs
from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import PromptBatch, PromptTemplate, make_batch, zero_shot


def source_scores(
    lm: FrozenLM,
    batch: PromptBatch,
    bank: torch.Tensor,
    layer: int,
    max_rows: int | str = 64,
    tokens: str = "all",
) -> torch.Tensor:
    """``[B, N]`` target log-probabilities of every batch row with every bank vector (batched).

    At most ``max_rows`` (prompt, vector) rows run per forward (``"auto"``: as many as fit in
    free memory, :meth:`FrozenLM.rows_that_fit`); each prompt's prefix runs once.
    ``tokens="first"`` scores the target's first token only (an ablation: cheaper, but blind to
    everything after a first token that many words share).
    """
    if tokens not in ("all", "first"):
        raise ValueError(f"tokens must be 'all' or 'first', got {tokens!r}")
    if bank.dim() != 2 or len(bank) == 0:
        raise ValueError(f"bank must be a non-empty [N, d_model] tensor, got shape {tuple(bank.shape)}")
    lm.check_vector(bank)
    P, M = batch.prompt_len, batch.target_ids.shape[1]
    target_mask = batch.target_mask
    if tokens == "first":
        M, target_mask = 1, target_mask[:, :1]
    B, N = len(batch), len(bank)
    max_rows = lm.resolve_rows(max_rows, batch.input_ids.shape[1])
    vec_chunk = min(N, max(1, max_rows))
    per = max(1, max_rows // vec_chunk)
    out = torch.empty(B, N)
    bank = bank.to(lm.device, lm.dtype)
    with torch.no_grad():
        for s in range(0, B, per):
            ids = batch.input_ids[s : s + per]
            mask = batch.attention_mask[s : s + per]
            b = len(ids)
            cache = lm.prefix_cache(ids[:, :P], mask[:, :P])
            for v in range(0, N, vec_chunk):
                vecs = bank[v : v + vec_chunk]
                n = len(vecs)
                # Rows come out prompt-major: row j * n + i is prompt j with vector i.
                with lm.inject(vecs.repeat(b, 1), layer, positions=0):
                    # All tokens: the last prompt token and the target (but its last token) run;
                    # first token: the last prompt token alone.
                    hidden = lm.continue_from(cache, ids[:, P - 1 : P - 1 + M], mask[:, : P - 1 + M],
                                              repeat=n, hidden_only=True, keep_cache=False).last_hidden_state
                lp = hidden_logprobs(lm, hidden, batch.target_ids[s : s + per, :M].repeat_interleave(n, 0),
                                     target_mask[s : s + per].repeat_interleave(n, 0))
                out[s : s + b, v : v + n] = lp.view(b, n).cpu()
    return out


def source_scores_loop(lm: FrozenLM, batch: PromptBatch, bank: torch.Tensor, layer: int) -> torch.Tensor:
    """The reference: one full forward of the batch per bank vector."""
    cols = [lm.score(batch, vector=bank[i], layer=layer).target_logprob.float().cpu()
            for i in range(len(bank))]
    return torch.stack(cols, 1)


def score_pairs(
    lm: FrozenLM,
    pairs: Sequence[tuple[str, str]],
    bank: torch.Tensor,
    layer: int,
    template: PromptTemplate | None = None,
    batch_size: int = 16,
    max_rows: int | str = 64,
    progress=None,
    tokens: str = "all",
) -> torch.Tensor:
    """``[len(pairs), N]`` scores ``log P(b | zero-shot prompt of a, vector_i)`` for (a, b) pairs."""
    template = template or PromptTemplate()
    if not pairs:
        return torch.empty(0, len(bank))
    # A source pair shared by several analogies (Google's sections, training analogies drawn from a
    # few train pairs) is scored once: every row of the batched pass is a full N-vector forward.
    unique = list(dict.fromkeys(pairs))
    if len(unique) < len(pairs):
        at = {p: i for i, p in enumerate(unique)}
        done = score_pairs(lm, unique, bank, layer, template, batch_size, max_rows,
                           progress=None if progress is None else (lambda n: None), tokens=tokens)
        if progress is not None:
            progress(len(pairs))
        return done[[at[p] for p in pairs]]
    # Pairs with targets of equal token length share a forward: no padded target columns.
    tok = lm.tokenizer
    lengths = [len(tok(template.target(b), add_special_tokens=False)["input_ids"]) for _, b in pairs]
    order = sorted(range(len(pairs)), key=lambda i: (lengths[i], i))
    out = torch.empty(len(pairs), len(bank))
    for s in range(0, len(order), batch_size):
        idx = order[s : s + batch_size]
        chunk = [pairs[i] for i in idx]
        b = make_batch(tok, [zero_shot(template, a) for a, _ in chunk], [bb for _, bb in chunk], template)
        out[idx] = source_scores(lm, b, bank, layer, max_rows=max_rows, tokens=tokens)
        if progress is not None:
            progress(len(chunk))
    return out


def target_logprob(
    lm: FrozenLM,
    batch: PromptBatch,
    vectors: torch.Tensor | None,
    layer: int | None,
    tokens: str = "all",
    cache=None,
) -> torch.Tensor:
    """``[B]`` log P(target | prompt, vector_b injected), differentiable in ``vectors``
    (:meth:`FrozenLM.target_logprob`)."""
    return lm.target_logprob(batch, vectors, layer, tokens, cache)
