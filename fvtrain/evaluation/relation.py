"""Relation completion with and without a vector: first-token accuracy, exact match of the whole
answer under greedy decoding, the layer sweep, and a check of when first tokens say little."""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import torch
from torchmetrics.aggregation import MeanMetric

from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import PromptTemplate, encode_target, make_batch

log = logging.getLogger(__name__)


def check_methods(methods: Mapping[str, torch.Tensor | None], n_prompts: int, layer: int | None) -> None:
    """Each method's vector is ``None``, ``[d]`` or ``[n_prompts, d]``, and a vector needs a layer."""
    for v in methods.values():
        if v is not None and layer is None:
            raise ValueError("a vector needs a layer to be injected at")
        if v is not None and v.dim() == 2 and len(v) != n_prompts:
            raise ValueError(f"{len(v)} vectors for {n_prompts} prompts")


def method_rows(methods: Mapping[str, torch.Tensor | None], start: int, B: int
                ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``(vectors, rows)`` for prompts ``start .. start + B`` run once per method, row ``b * M + m``
    (methods without a vector add no row); ``None`` when no method has one."""
    M = len(methods)
    vecs, rows = [], []
    for m, v in enumerate(methods.values()):
        if v is not None:
            vecs.append(v.expand(B, -1) if v.dim() == 1 else v[start : start + B])
            rows.append(torch.arange(B) * M + m)
    return (torch.cat(vecs), torch.cat(rows)) if vecs else None


def first_token_outcomes(lm: FrozenLM, hidden: torch.Tensor, batch, repeat: int = 1
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(P(first target token), top-1 starts an accepted answer)``, each ``[B, repeat]`` on the CPU,
    from final-normed last-token states ``[B * repeat, d]`` of ``batch``'s prompts (row
    ``b * repeat + r``)."""
    B = len(batch)
    with torch.no_grad():
        st = lm.vocab_stats(hidden, batch.target_ids[:, :1].repeat_interleave(repeat, 0))
    p = st.logprob()[:, 0].exp().view(B, repeat).cpu()
    firsts = batch.first_token_matrix().cpu().repeat_interleave(repeat, 0)
    ok = (st.argmax.cpu().unsqueeze(1) == firsts).any(-1).view(B, repeat)
    return p, ok


def completion(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    vector: torch.Tensor | None = None,
    layer: int | None = None,
    batch_size: int = 32,
) -> dict[str, float]:
    """Top-1 first-token accuracy (any accepted answer) with its 95% bootstrap interval, mean
    P(first target token), and every item's outcome (``correct``, 0/1 in prompt order: intervals
    over relations and paired differences need them). ``vector`` (``[d]`` or ``[N, d]``) is added
    to block ``layer``'s output at the prompt's last token."""
    return completion_methods(lm, prompts, answers, {"_": vector}, layer, batch_size)["_"]


def completion_methods(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    methods: Mapping[str, torch.Tensor | None],
    layer: int | None = None,
    batch_size: int = 32,
) -> dict[str, dict]:
    """:func:`completion` of every method (``None``, ``[d]`` or ``[N, d]``) on the same prompts.

    Only the last prompt token differs between methods, and only its logits are read: each
    chunk's prefix runs once into a cache, then the last token once per method (rows ``b * M +
    m``), unembedded at that one column (block by block: :meth:`FrozenLM.vocab_stats`).
    """
    from fvtrain.evaluation import stats

    names = list(methods)
    M = len(names)
    check_methods(methods, len(prompts), layer)
    acc = {n: MeanMetric() for n in names}
    prob = {n: MeanMetric() for n in names}
    correct: dict[str, list[int]] = {n: [] for n in names}
    for i in range(0, len(prompts), batch_size):
        b = make_batch(lm.tokenizer, prompts[i : i + batch_size], answers[i : i + batch_size])
        B = len(b)
        rows = method_rows(methods, i, B)
        edit = lm.inject(rows[0], layer, positions=-1, rows=rows[1]) if rows is not None else nullcontext()
        with torch.no_grad():
            if b.prompt_len > 1:
                cache = lm.prefix_cache(b.prompt_ids, b.prompt_mask)
                with edit:
                    hidden = lm.last_token(b.prompt_ids, b.prompt_mask, cache, repeat=M, hidden_only=True)
            else:  # nothing to cache
                ids, mask = (t.repeat_interleave(M, 0) for t in (b.prompt_ids, b.prompt_mask))
                with edit:
                    hidden = lm.body(ids, mask).last_hidden_state[:, -1]
            p, ok = first_token_outcomes(lm, hidden, b, M)
        for m, n in enumerate(names):
            acc[n].update(ok[:, m].float())
            prob[n].update(p[:, m])
            correct[n] += [int(c) for c in ok[:, m].tolist()]
    return {n: {"acc": float(acc[n].compute()), "prob": float(prob[n].compute()), "n": len(prompts),
                "acc_ci": stats.mean_ci(correct[n]), "correct": correct[n]} for n in names}


def layer_sweep(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    vector: torch.Tensor,
    batch_size: int = 32,  # prompts per pass: batch_size * n_layers rows (vocab_stats keeps them small)
) -> dict[str, list[float]]:
    """Accuracy and P(first token) with the vector injected at each layer, in one pass per batch.

    Every prompt's prefix is run once, and its unedited last token once, recording the residual
    entering each block. The last token then runs once per layer as rows of one forward: row
    ``l`` (the vector added to block ``l``'s output) joins at block ``l`` from that residual
    (:func:`fvtrain.models.hooks.join_at`), since blocks below the edit compute what the unedited
    token did. Block ``j`` runs ``j + 1`` rows per prompt instead of ``L``.
    """
    L = lm.n_layers
    correct = torch.zeros(L)
    prob = torch.zeros(L)
    n = 0
    starts = torch.arange(L)
    for i in range(0, len(prompts), batch_size):
        b = make_batch(lm.tokenizer, prompts[i : i + batch_size], answers[i : i + batch_size])
        B = len(b)
        ids, mask = b.prompt_ids, b.prompt_mask
        cache = lm.prefix_cache(ids, mask)
        _, resid = lm.last_token_inputs(ids, mask, cache)
        # At block l each prompt runs its first l + 1 rows: row l of prompt p is p * (l + 1) + l there.
        edits = [(l, vector, torch.arange(B) * (l + 1) + l) for l in range(L)]
        with torch.no_grad(), lm.inject_many(edits):
            hidden = lm.last_token(ids, mask, cache, repeat=L, hidden_only=True, join=(starts, resid))
        p, ok = first_token_outcomes(lm, hidden, b, L)
        correct += ok.float().sum(0).cpu()
        prob += p.sum(0).cpu()
        n += B
    return {"acc": (correct / n).tolist(), "prob": (prob / n).tolist()}


# -- exact match of the whole answer under greedy decoding ------------------------------------------
#
# First-token accuracy counts a prediction as right when its first token starts any accepted answer.
# With a byte-level or small vocabulary many answers share that token (" s" starts "sofa", "salt",
# "star"), so a vector that pushes one token scores well without producing a single answer. Exact
# match generates the whole answer and compares it with the accepted ones.

EXTRA_TOKENS = 2  # greedy steps allowed beyond the longest accepted answer (room for the line break)


@dataclass
class ExactMatch:
    """Per-item outcomes of :func:`exact_match` (``correct`` is a ``[N]`` float tensor of 0/1)."""

    correct: torch.Tensor
    texts: list[str]  # the generated answer line of each item, stripped
    raw: list[str]  # the whole greedy continuation (up to and with its line break)

    @property
    def acc(self) -> float:
        return float(self.correct.mean()) if self.correct.numel() else float("nan")

    @property
    def n(self) -> int:
        return int(self.correct.numel())

    def summary(self, groups: Sequence | None = None, seed: int = 0) -> dict:
        """``{"acc", "acc_ci", "n"}`` with a bootstrap interval (macro over ``groups`` when given)."""
        from fvtrain.evaluation import stats

        return stats.accuracy(self.correct, groups, seed=seed)


def answer_line(text: str) -> str:
    """The generated answer: everything before the first line break, stripped.

    The text is cut before it is stripped, so a continuation that starts a new line at once has
    answered nothing (the ``A:`` line is the answer line)."""
    return text.split("\n", 1)[0].strip()


def is_exact(text: str, answers: Sequence[str]) -> bool:
    """Whether the answer line of ``text`` equals an accepted answer (both stripped)."""
    line = answer_line(text)
    return bool(line) and any(line == a.strip() for a in answers)


def exact_match(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    vector: torch.Tensor | None = None,
    layer: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    template: PromptTemplate | None = None,
) -> ExactMatch:
    """Exact match of the whole answer under greedy decoding: 1 when the generated line, stripped,
    equals any accepted answer, else 0.

    Each continuation stops at its first line break, at EOS or after ``max_new_tokens`` (default
    per item: its longest accepted answer's token count + 2, so an item's text does not depend on
    what it is batched with). ``vector`` (``[d]`` shared, or ``[N, d]`` one row per prompt) is added
    to block ``layer``'s output at the prompt's last position only: the prompt's prefix runs once
    into a key/value cache, its last token runs with the edit, every new token runs against the
    cache without it. :func:`exact_match_methods` does the same for several vectors at once.
    """
    return exact_match_methods(lm, prompts, answers, {"_": vector}, layer, max_new_tokens, batch_size,
                               template)["_"]


def exact_match_methods(
    lm: FrozenLM,
    prompts: Sequence[str],
    answers: Sequence[Sequence[str]],
    methods: Mapping[str, torch.Tensor | None],
    layer: int | None = None,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
    template: PromptTemplate | None = None,
    stop_on_mismatch: bool = False,
) -> dict[str, ExactMatch]:
    """:func:`exact_match` of every method on the same prompts (``methods[name]``: ``None``, a
    shared ``[d]`` vector or ``[N, d]``, one row per prompt).

    ``stop_on_mismatch`` stops a row as soon as its text can no longer become any accepted answer:
    the outcomes are the same, the texts are cut there (for callers that keep only the outcomes).

    Methods differ only from the prompt's last token on, so each chunk's prefix runs once and the
    last token and every greedy step run for all methods as rows of one batch (row ``b * M + m``):
    on a CPU the unembedding of a step costs about the same for 5 rows as for 50.
    """
    template = template or PromptTemplate()
    tok = lm.tokenizer
    names = list(methods)
    M = len(names)
    check_methods(methods, len(prompts), layer)
    alts = [[a] if isinstance(a, str) else list(a) for a in answers]
    raw: list[list[str]] = [[] for _ in names]
    for i in range(0, len(prompts), batch_size):
        chunk = alts[i : i + batch_size]
        b = make_batch(tok, prompts[i : i + batch_size], chunk, template)
        budget = exact_budgets(tok, template, chunk, max_new_tokens)
        edit = method_rows(methods, i, len(b))
        texts = _greedy_batch(lm, b.prompt_ids, b.prompt_mask, budget, edit, layer, repeat=M,
                              answers=chunk if stop_on_mismatch else None)
        for m in range(M):
            raw[m] += texts[m::M]
    return {n: exact_outcomes(raw[m], alts) for m, n in enumerate(names)}


def exact_budgets(tok, template: PromptTemplate, answers: Sequence[Sequence[str]],
                  max_new_tokens: int | None = None) -> list[int]:
    """Greedy steps per item: ``max_new_tokens``, or its longest accepted answer's token count plus
    :data:`EXTRA_TOKENS` (so an item's text does not depend on what it is batched with)."""
    if max_new_tokens is not None:
        return [int(max_new_tokens)] * len(answers)
    return [max(len(encode_target(tok, template, a)) for a in alts) + EXTRA_TOKENS for alts in answers]


def exact_outcomes(raw: Sequence[str], answers: Sequence[Sequence[str]]) -> ExactMatch:
    """:class:`ExactMatch` of greedy continuations ``raw`` against each item's accepted answers."""
    correct = torch.tensor([float(is_exact(t, a)) for t, a in zip(raw, answers)])
    return ExactMatch(correct, [answer_line(t) for t in raw], list(raw))


def _greedy_batch(lm: FrozenLM, ids: torch.Tensor, mask: torch.Tensor, budget: list[int],
                  edit: tuple[torch.Tensor, torch.Tensor] | None, layer: int | None,
                  repeat: int = 1, answers: Sequence[Sequence[str]] | None = None) -> list[str]:
    """Greedy continuations of left-padded prompts with per-prompt token budgets (see exact_match),
    each prompt's last token run ``repeat`` times (rows ``b * repeat + r``); ``edit`` is
    ``(vectors, rows)``, added to block ``layer``'s output at those rows' last token.
    """
    with torch.no_grad():
        cache = lm.prefix_cache(ids, mask)
        ctx = lm.inject(edit[0], layer, positions=0, rows=edit[1]) if edit is not None else _null()
        with ctx:
            out = lm.continue_from(cache, ids[:, -1:], mask, repeat=repeat, hidden_only=True)
        first = lm.vocab_stats(out.last_hidden_state[:, -1]).argmax
    return greedy_continue(lm, out.cache, mask.repeat_interleave(repeat, 0), first,
                           [n for n in budget for _ in range(repeat)],
                           None if answers is None else [a for a in answers for _ in range(repeat)])


def can_still_match(text: str, answers: Sequence[str]) -> bool:
    """Whether a greedy text without a line break yet can still become a line that
    :func:`is_exact` accepts: its stripped start is a prefix of an accepted answer (or the answer
    itself followed by spaces). A cut multi-byte character (U+FFFD) keeps every answer possible."""
    t = text.lstrip()
    if not t or "\ufffd" in t:
        return True
    for a in answers:
        a = a.strip()
        if a.startswith(t) or (t.startswith(a) and not t[len(a):].strip()):
            return True
    return False


def greedy_continue(lm: FrozenLM, cache, mask: torch.Tensor, first: torch.Tensor,
                    budget: Sequence[int], answers: Sequence[Sequence[str]] | None = None) -> list[str]:
    """Greedy continuation of rows whose prompts have run through their last token: ``cache``
    holds their keys/values (``mask`` covers it), ``first`` ``[R]`` is the last token's argmax.
    The cache is not modified. Each row stops at its first line break, at EOS or after
    ``budget[r]`` tokens, and (given its accepted ``answers[r]``) once it can no longer match any
    of them (:func:`can_still_match`); a row leaves the batch once it has finished (the later
    steps run only the rows still generating, their keys/values selected from the cache)."""
    tok = lm.tokenizer
    eos = tok.eos_token_id
    new: list[list[int]] = [[] for _ in budget]
    done = [n <= 0 for n in budget]
    live = [r for r in range(len(budget)) if not done[r]]  # batch row j generates item row live[j]
    with torch.no_grad():
        if len(live) < len(budget):
            cache = lm.cache_rows(cache, torch.tensor(live))
        nxt = first.cpu()[live]
        mask = mask[live]
        for _ in range(max(budget, default=0)):
            for j, t in enumerate(nxt.tolist()):
                r = live[j]
                if t == eos:
                    done[r] = True
                    continue
                new[r].append(t)
                text = tok.decode(new[r], skip_special_tokens=True)
                if len(new[r]) >= budget[r] or "\n" in text or \
                        (answers is not None and not can_still_match(text, answers[r])):
                    done[r] = True
            keep = [j for j, r in enumerate(live) if not done[r]]
            if not keep:
                break
            if len(keep) < len(live):
                cache = lm.cache_rows(cache, torch.tensor(keep))
                nxt, mask, live = nxt[keep], mask[keep], [live[j] for j in keep]
            mask = torch.cat([mask, torch.ones(len(live), 1, dtype=mask.dtype)], 1)
            out = lm.continue_from(cache, nxt.unsqueeze(1), mask, hidden_only=True)
            cache = out.cache
            nxt = lm.vocab_stats(out.last_hidden_state[:, -1]).argmax.cpu()
    return [tok.decode(n, skip_special_tokens=True) for n in new]


# -- when first-token accuracy says little ----------------------------------------------------------

SHARED_FIRST_WARN = 0.2  # share of items whose first token also starts another item's answer


def first_token_degeneracy(
    tokenizer,
    answers: Sequence[Sequence[str] | str],
    template: PromptTemplate | None = None,
) -> dict:
    """How far first-token correctness is from answer correctness on a set of items.

    ``shared_first``: the share of items one of whose accepted answers starts with a token that also
    starts an answer of another item, other than the item's own answers (identical answers of two
    items are not a collision). ``median_tokens``: the median token count of the items' first
    answers. ``degenerate`` when the share exceeds 20% or the median answer has more than one token.
    Answers that do not encode are left out.
    """
    template = template or PromptTemplate()
    items: list[tuple[set[str], set[int], int]] = []  # (accepted texts, their first tokens, length)
    starts: dict[int, set[str]] = {}  # token -> every answer text that starts with it
    for a in answers:
        enc: dict[str, list[int]] = {}
        for alt in ([a] if isinstance(a, str) else list(a)):
            try:
                enc.setdefault(alt.strip(), encode_target(tokenizer, template, alt))
            except ValueError:
                continue
        if not enc:
            continue
        for w, e in enc.items():
            starts.setdefault(e[0], set()).add(w)
        items.append((set(enc), {e[0] for e in enc.values()}, len(next(iter(enc.values())))))
    shared = sum(any(starts.get(t, set()) - words for t in firsts) for words, firsts, _ in items)
    n = len(items)
    lengths = sorted(k for _, _, k in items)
    median = float(torch.tensor(lengths, dtype=torch.float64).median()) if lengths else None
    share = shared / n if n else None
    return {"n": n, "shared_first": share, "median_tokens": median,
            "degenerate": bool(n and (share > SHARED_FIRST_WARN or (median or 0) > 1))}


def warn_if_degenerate(report: dict, what: str, logger: logging.Logger | None = None,
                       instead: str = "the exact-match metric") -> bool:
    """Log a warning naming the share when :func:`first_token_degeneracy` says ``degenerate``."""
    if not report.get("degenerate"):
        return False
    (logger or log).warning(
        "first-token accuracy of %s is degenerate with this tokenizer: %.0f%% of %d items share their "
        "answer's first token with another item's answer, and the median answer has %s tokens; a "
        "vector that pushes a common first token scores without producing answers: read %s "
        "instead", what, 100 * report["shared_first"], report["n"], f"{report['median_tokens']:g}", instead)
    return True


@contextmanager
def _null() -> Iterator[None]:
    yield
