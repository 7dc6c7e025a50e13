"""Analogy evaluation: A:B :: C:? with or without a vector injected on the prompt of C.

* **open-ended**: top-1 first-token accuracy at the last prompt token of ``prompt(C)``; any accepted
  D counts; with ``exact=True`` also exact match of the whole of D under greedy decoding
  (:func:`fvtrain.evaluation.relation.exact_match`), which a shared first token cannot game;
* **multiple choice**: the argmax over the candidates ``(C_k, D_k)`` of the full (all-token)
  log-probability ``log P(D_k | prompt(C_k))``; correct when it is the gold candidate.

Prompts are zero-shot (``Q: C\\nA:``) or, for the one-shot baseline, the source pair as one
demonstration (``Q: A\\nA: B\\n\\nQ: C\\nA:``). Accuracies are reported overall, by near/far label
and by relation (micro averages, torchmetrics ``MeanMetric``).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torchmetrics.aggregation import MeanMetric

from fvtrain.data.types import AnalogyItem
from fvtrain.errors import ConfigError
from fvtrain.evaluation.relation import (
    exact_budgets,
    exact_match_methods,
    exact_outcomes,
    greedy_continue,
    method_rows,
)
from fvtrain.models.scoring import hidden_logprobs
from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import (
    PromptTemplate,
    encode_target,
    icl,
    make_batch,
    pad_id,
    zero_shot,
)

log = logging.getLogger(__name__)

PROMPTS = ("zero_shot", "one_shot")


class AnalogyEncodingError(ConfigError):
    """An analogy has a word that the model's tokenizer cannot encode."""


def describe_item(item: AnalogyItem) -> str:
    where = item.meta.get("where") if item.meta else None
    text = f"{item.a} : {item.b} :: {item.c} : {'/'.join(item.d)}"
    return f"{text!r}" + (f" ({where})" if where else "")


def _word_problem(tokenizer, text: str) -> str | None:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        return "encodes to no token"
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is not None and all(i == unk for i in ids):
        return "encodes only to the unknown token"
    return None


def check_encodable(
    tokenizer,
    items: Sequence[AnalogyItem],
    template: PromptTemplate | None = None,
    on_bad: str = "error",
) -> tuple[list[AnalogyItem], list[tuple[str, str]]]:
    """Every word of every item must encode to real tokens (A and C as prompt words, B, D and
    the candidates as targets). ``on_bad="skip"`` drops bad items and returns ``(where, why)``."""
    if on_bad not in ("error", "skip"):
        raise ValueError(f"on_bad must be 'error' or 'skip', got {on_bad!r}")
    template = template or PromptTemplate()
    kept, skipped = [], []
    for n, it in enumerate(items):
        words = [("A", it.a, " " + it.a), ("B", it.b, template.target(it.b)),
                 ("C", it.c, " " + it.c)]
        words += [("D", d, template.target(d)) for d in it.d]
        for k, (c, d) in enumerate(it.choices or ()):
            words += [(f"choice {k} C", c, " " + c), (f"choice {k} D", d, template.target(d))]
        bad = None
        for role, word, text in words:
            why = _word_problem(tokenizer, text)
            if why:
                bad = f"analogy {n} {describe_item(it)}: {role} {word!r} {why} with this tokenizer"
                break
        if bad is None:
            kept.append(it)
        elif on_bad == "error":
            raise AnalogyEncodingError(bad + "; fix or remove the item (or set analogies.on_bad=skip)")
        else:
            skipped.append((describe_item(it), bad))
    if skipped:
        log.warning("skipped %d analogy item(s) whose words do not encode, e.g. %s", len(skipped), skipped[0][1])
    return kept, skipped


@dataclass
class ItemResults:
    """Per-item outcomes of one method."""

    open_correct: torch.Tensor  # [I] bool
    mc_correct: torch.Tensor  # [I] float: 1/0, NaN for items without choices
    mc_pred: torch.Tensor  # [I] long: index of the chosen candidate, -1 without choices
    open_pred: list[str]  # decoded top-1 first token
    open_exact: torch.Tensor | None = None  # [I] float 0/1: greedy answer line equals an accepted D
    open_text: list[str] | None = None  # the greedy answer line
    mc_logprobs: list[list[float]] | None = None  # log P(candidate D | prompt) per choice, in order

    def subset(self, idx: Sequence[int]) -> "ItemResults":
        i = torch.as_tensor(list(idx), dtype=torch.long)
        rows = i.tolist()
        return ItemResults(self.open_correct[i], self.mc_correct[i], self.mc_pred[i],
                           [self.open_pred[j] for j in rows],
                           None if self.open_exact is None else self.open_exact[i],
                           None if self.open_text is None else [self.open_text[j] for j in rows],
                           None if self.mc_logprobs is None else [self.mc_logprobs[j] for j in rows])


def _prompt(template: PromptTemplate, prompt: str, item: AnalogyItem, c: str) -> str:
    if prompt == "zero_shot":
        return zero_shot(template, c)
    if prompt == "one_shot":
        return icl(template, [(item.a, item.b)], c)
    raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")


def _shared_prompt(it: AnalogyItem) -> bool:
    """Multiple choice where every candidate keeps the item's C: one prompt, several targets."""
    return bool(it.choices) and all(c == it.c for c, _ in it.choices)


def _eval_shared(lm: FrozenLM, items: Sequence[AnalogyItem], template: PromptTemplate, prompt: str,
                 methods: Mapping[str, torch.Tensor | None], layer: int | None,
                 budget: Sequence[int] | None = None) -> dict[str, tuple]:
    """Open-ended and multiple choice of shared-prompt items, for every method at once.

    The prompt's prefix (all columns but the last) runs once for all methods. Per method, the last
    prompt token runs once per item with the method's vector injected: its logits are the
    open-ended prediction and the first-token log-probabilities of every candidate. Candidates of
    more than one token then continue from that token's cache, one row each, with no further
    injection; only their target tokens are unembedded. With ``budget`` (greedy steps per
    item) every method's greedy continuation also starts from that token's top token and cache, as
    :func:`~fvtrain.evaluation.relation.exact_match_methods` would run them: its raw text is the
    tuple's fifth element, each candidate's log-probability its sixth.
    """
    tok = lm.tokenizer
    B = len(items)
    K = max(len(it.choices) for it in items)
    pb = make_batch(tok, [_prompt(template, prompt, it, it.c) for it in items], [it.d[0] for it in items],
                    template)
    P = pb.prompt_len
    ids, mask = pb.prompt_ids, pb.prompt_mask
    cands = [[encode_target(tok, template, d) for _, d in it.choices] for it in items]
    firsts = [{encode_target(tok, template, d)[0] for d in it.d} for it in items]
    M = max(len(c) for cs in cands for c in cs)
    first_tok = torch.zeros(B, K, dtype=torch.long)
    valid = torch.zeros(B, K, dtype=torch.bool)
    if M > 1:
        # Stage-2 rows: candidate tokens but the last (right-padded), predicting tokens 1..m-1.
        rest_ids = torch.full((B * K, M - 1), pad_id(tok), dtype=torch.long)
        rest_tgt = torch.zeros(B * K, M - 1, dtype=torch.long)
        rest_mask = torch.zeros(B * K, M - 1, dtype=torch.long)
    for r, cs in enumerate(cands):
        for k, c in enumerate(cs):
            first_tok[r, k], valid[r, k] = c[0], True
            if M > 1 and len(c) > 1:
                row = r * K + k
                rest_ids[row, : len(c) - 1] = torch.tensor(c[:-1])
                rest_tgt[row, : len(c) - 1] = torch.tensor(c[1:])
                rest_mask[row, : len(c) - 1] = 1
    multi = rest_mask[:, 0].nonzero().squeeze(1) if M > 1 else torch.zeros(0, dtype=torch.long)
    out: dict[str, tuple] = {}
    names = list(methods)
    NM = len(names)
    with torch.no_grad():
        cache = lm.prefix_cache(ids, mask)
        # The last prompt token of every method in one forward: row b * NM + m carries method m's
        # vector for item b (methods without one are unedited rows).
        rows = method_rows(methods, 0, B)
        edit = lm.inject(rows[0], layer, positions=0, rows=rows[1]) if rows is not None else _null()
        with edit:
            o1 = lm.continue_from(cache, ids[:, P - 1 :], mask, repeat=NM, hidden_only=True)
        st = lm.vocab_stats(o1.last_hidden_state[:, -1], first_tok.repeat_interleave(NM, 0))
        if budget is not None:
            texts = greedy_continue(lm, o1.cache, mask.repeat_interleave(NM, 0), st.argmax,
                                    [n for n in budget for _ in range(NM)])
        first_lp = st.logprob().cpu().view(B, NM, K)
        tops = st.argmax.cpu().view(B, NM)
        for m, name in enumerate(names):
            lp = first_lp[:, m]  # [B, K]
            if len(multi):
                # the continuation's own cache (with the edited last token), one copy per candidate
                # of more than one token (the others have no further token to score)
                c2 = lm.cache_rows(o1.cache, multi // K * NM + m)
                full = torch.cat([mask[multi // K], rest_mask[multi]], 1)
                o2 = lm.continue_from(c2, rest_ids[multi], full, hidden_only=True)
                rest = torch.zeros(B * K)
                rest[multi] = hidden_logprobs(lm, o2.last_hidden_state, rest_tgt[multi], rest_mask[multi]).cpu()
                lp = lp + rest.view(B, K)
            lp = lp.masked_fill(~valid, float("-inf"))
            top = tops[:, m]
            pred = lp.argmax(-1)
            out[name] = (
                [int(top[r]) in firsts[r] for r in range(B)], top.tolist(),
                [float(int(pred[r]) == it.answer_index) for r, it in enumerate(items)], pred.tolist(),
                texts[m::NM] if budget is not None else None,
                [lp[r, : len(it.choices)].tolist() for r, it in enumerate(items)],
            )
    return out


@contextmanager
def _null():
    yield


def evaluate_methods(
    lm: FrozenLM,
    items: Sequence[AnalogyItem],
    methods: Mapping[str, torch.Tensor | None],
    layer: int | None = None,
    template: PromptTemplate | None = None,
    prompt: str = "zero_shot",
    batch_size: int = 32,
    exact: bool = False,
) -> dict[str, ItemResults]:
    """Open-ended and multiple-choice outcomes of every item under several methods.

    ``methods[name]`` is ``None`` (no vector) or ``[I, d]`` with one vector per item (a zero row
    leaves that item unedited). Multiple-choice items whose candidates all keep C (the built-in
    layout) share the prompt's prefix across methods and candidates (see :func:`_eval_shared`);
    others (e.g. SAT, where each candidate has its own C) and open-ended items use plain batches.
    ``exact`` adds greedy exact match of D (``open_exact``, ``open_text``) for every method.
    """
    template = template or PromptTemplate()
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    for name, v in methods.items():
        if v is not None and len(v) != len(items):
            raise ValueError(f"method {name!r}: {len(v)} vectors for {len(items)} analogy items")
    I = len(items)
    res = {n: (torch.zeros(I, dtype=torch.bool), torch.full((I,), float("nan")),
               torch.full((I,), -1, dtype=torch.long), [0] * I) for n in methods}
    tok = lm.tokenizer
    shared = [i for i, it in enumerate(items) if _shared_prompt(it)]
    other = [i for i, it in enumerate(items) if not _shared_prompt(it)]
    # Items with candidates of equal token length share a batch: no padded target columns.
    longest = {i: max(len(tok(template.target(d), add_special_tokens=False)["input_ids"])
                      for _, d in items[i].choices) for i in shared}
    shared.sort(key=lambda i: (longest[i], i))
    # Exact match: the greedy steps of shared-prompt items continue from _eval_shared's last token
    # (the same computation exact_match_methods makes, without running the prompts twice).
    budgets = exact_budgets(tok, template, [list(it.d) for it in items]) if exact else None
    raw: dict[str, list] = {n: [None] * I for n in methods}
    scores: dict[str, list] = {n: [[] for _ in range(I)] for n in methods}
    for s in range(0, len(shared), batch_size):
        idx = shared[s : s + batch_size]
        sub = {n: None if v is None else v[idx] for n, v in methods.items()}
        got = _eval_shared(lm, [items[i] for i in idx], template, prompt, sub, layer,
                           [budgets[i] for i in idx] if exact else None)
        for n, (o, t, m, p, texts, lps) in got.items():
            ok, mc, pred, top = res[n]
            for j, i in enumerate(idx):
                ok[i], top[i], mc[i], pred[i], scores[n][i] = o[j], t[j], m[j], p[j], lps[j]
                if texts is not None:
                    raw[n][i] = texts[j]
    for s in range(0, len(other), batch_size):
        idx = other[s : s + batch_size]
        chunk = [items[i] for i in idx]
        tgt = make_batch(tok, [_prompt(template, prompt, it, it.c) for it in chunk],
                         [list(it.d) for it in chunk], template)
        prompts, answers, owner = [], [], []
        for row, it in enumerate(chunk):
            for c, d in it.choices or ():
                prompts.append(_prompt(template, prompt, it, c))
                answers.append(d)
                owner.append(row)
        owner_t = torch.tensor(owner, dtype=torch.long)
        cand = make_batch(tok, prompts, answers, template) if prompts else None
        for n, v in methods.items():
            ok, mc, pred, top = res[n]
            vec = None if v is None else v[idx]
            sc = lm.score(tgt, vector=vec, layer=layer)
            for j, i in enumerate(idx):
                ok[i], top[i] = bool(sc.correct[j]), int(sc.argmax[j])
            if cand is None:
                continue
            cvec = None if vec is None else vec[owner_t.to(vec.device)]
            lp = lm.score(cand, vector=cvec, layer=layer).target_logprob.float().cpu()
            for row, it in enumerate(chunk):
                if it.choices:
                    scores[n][idx[row]] = lp[owner_t == row].tolist()
                    k = int(lp[owner_t == row].argmax())
                    pred[idx[row]] = k
                    mc[idx[row]] = float(k == it.answer_index)
    out = {n: ItemResults(ok, mc, pred, [tok.decode([t]) for t in top], mc_logprobs=scores[n])
           for n, (ok, mc, pred, top) in res.items()}
    if exact and items:
        if other:  # items without a shared prompt decode on their own
            ems = exact_match_methods(lm, [_prompt(template, prompt, items[i], items[i].c) for i in other],
                                      [list(items[i].d) for i in other],
                                      {n: None if v is None else v[other] for n, v in methods.items()},
                                      layer, batch_size=batch_size, template=template)
            for n, em in ems.items():
                for j, i in enumerate(other):
                    raw[n][i] = em.raw[j]
        for n in methods:
            em = exact_outcomes(raw[n], [list(it.d) for it in items])
            out[n].open_exact, out[n].open_text = em.correct, em.texts
    return out


def evaluate_items(
    lm: FrozenLM,
    items: Sequence[AnalogyItem],
    template: PromptTemplate | None = None,
    vectors: torch.Tensor | None = None,
    layer: int | None = None,
    prompt: str = "zero_shot",
    batch_size: int = 32,
    exact: bool = False,
) -> ItemResults:
    """One method: :func:`evaluate_methods` with ``vectors[i]`` injected on item i (or none)."""
    return evaluate_methods(lm, items, {"method": vectors}, layer, template, prompt, batch_size,
                            exact)["method"]


def _acc(values: torch.Tensor) -> dict:
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return {"acc": None, "n": 0}
    m = MeanMetric()
    m.update(values)
    return {"acc": float(m.compute()), "n": int(values.numel())}


def _acc_ci(values: torch.Tensor) -> dict:
    """:func:`_acc` with a bootstrap interval (``acc_ci``; the micro mean, as for ``open``)."""
    from fvtrain.evaluation import stats

    out = _acc(values)
    values = values[~torch.isnan(values)]
    out["acc_ci"] = stats.accuracy(values)["acc_ci"] if values.numel() else None
    return out


MODES = ("open", "mc", "open_exact")


def _mode_values(res: ItemResults) -> dict[str, torch.Tensor]:
    out = {"open": res.open_correct.float(), "mc": res.mc_correct.float()}
    if res.open_exact is not None:
        out["open_exact"] = res.open_exact.float()
    return out


def _groups(items: Sequence[AnalogyItem]) -> dict[str, list[int]]:
    """Item indices of ``all``, ``near``, ``far`` and, where items carry a set, ``set:<name>``."""
    g = {"all": list(range(len(items)))}
    for dist in ("near", "far"):
        g[dist] = [i for i, it in enumerate(items) if it.distance == dist]
    for name in dict.fromkeys(it.meta.get("set") for it in items if it.meta.get("set")):
        g[f"set:{name}"] = [i for i, it in enumerate(items) if it.meta.get("set") == name]
    return g


def summarise(items: Sequence[AnalogyItem], res: ItemResults) -> dict:
    """``{"open"|"mc"|"open_exact": {"all", "near", "far", "set:<name>": {"acc", "acc_ci", "n"},
    "by_relation": {rel: {"acc", "n"}}}}`` (``open_exact`` when ``res`` has exact match). Every
    group's accuracy carries its 95% bootstrap interval (micro mean over the group's items)."""
    out = {}
    groups = _groups(items)
    for mode, vals in _mode_values(res).items():
        g = {k: (_acc_ci(vals[idx]) if idx else {"acc": None, "n": 0}) for k, idx in groups.items()}
        rels = sorted({it.relation for it in items if it.relation})
        g["by_relation"] = {r: _acc(vals[[i for i, it in enumerate(items) if it.relation == r]])
                            for r in rels}
        out[mode] = g
    return out


def paired_differences(items: Sequence[AnalogyItem], per_item: dict[str, tuple[Sequence[int], ItemResults]],
                       pairs: Sequence[tuple[str, str]], seed: int = 0) -> dict:
    """``{"b - a": {mode: {group: {"diff", "ci", "excludes_zero", "n"}}}}``: methods compared on the
    items both were evaluated on (the oracle only has items whose relation is in the bank), with a
    paired bootstrap (:func:`fvtrain.evaluation.stats.compare`)."""
    from fvtrain.evaluation import stats

    out: dict = {}
    for a, b in pairs:
        if a not in per_item or b not in per_item or a == b:
            continue
        (ia, ra), (ib, rb) = per_item[a], per_item[b]
        common = sorted(set(ia) & set(ib))
        if not common:
            continue
        pa, pb = {j: k for k, j in enumerate(ia)}, {j: k for k, j in enumerate(ib)}
        va, vb = _mode_values(ra), _mode_values(rb)
        sub = [items[i] for i in common]
        entry: dict = {}
        for mode in MODES:
            if mode not in va or mode not in vb:
                continue
            xa = va[mode][[pa[i] for i in common]]
            xb = vb[mode][[pb[i] for i in common]]
            entry[mode] = {}
            for g, idx in _groups(sub).items():
                keep = [k for k in idx if not (torch.isnan(xa[k]) or torch.isnan(xb[k]))]
                if len(keep) < 2:
                    continue
                d = stats.compare({a: xa[keep], b: xb[keep]}, pairs=[(a, b)], seed=seed)["differences"][f"{b} - {a}"]
                entry[mode][g] = {**d, "n": len(keep)}
        out[f"{b} - {a}"] = entry
    return out
