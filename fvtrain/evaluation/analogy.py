"""Analogy evaluation: A:B :: C:? with or without a vector injected on the prompt of C.

* **open-ended**: top-1 first-token accuracy at the last prompt token of ``prompt(C)``; any accepted
  D counts;
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
from typing import Sequence

import torch
from torchmetrics.aggregation import MeanMetric

from fvtrain.data.types import AnalogyItem
from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import PromptTemplate, encode_target, icl, make_batch, zero_shot

log = logging.getLogger(__name__)

PROMPTS = ("zero_shot", "one_shot")


class AnalogyEncodingError(ValueError):
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

    def subset(self, idx: Sequence[int]) -> "ItemResults":
        i = torch.as_tensor(list(idx), dtype=torch.long)
        return ItemResults(self.open_correct[i], self.mc_correct[i], self.mc_pred[i],
                           [self.open_pred[j] for j in i.tolist()])


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
                 vec: torch.Tensor | None, layer: int | None):
    """Open-ended and multiple choice of shared-prompt items in one forward.

    The prompt's prefix runs once per item; its last token and each candidate's target tokens run
    as one row per candidate (item-major, padded to the most candidates by repeating the last).
    The logits at the last prompt token are the open-ended prediction (the same for every row of
    an item: same prompt, same vector).
    """
    K = max(len(it.choices) for it in items)
    prompts, answers = [], []
    for it in items:
        cands = list(it.choices) + [it.choices[-1]] * (K - len(it.choices))
        p = _prompt(template, prompt, it, it.c)
        prompts += [p] * K
        answers += [d for _, d in cands]
    b = make_batch(lm.tokenizer, prompts, answers, template)
    P, M = b.prompt_len, b.target_ids.shape[1]
    first = torch.arange(len(items)) * K
    with torch.no_grad():
        cache = lm.prefix_cache(b.input_ids[first, :P], b.attention_mask[first, :P])
        cache.batch_repeat_interleave(K)  # our own cache object: rows now match the candidates
        edit = (lm.inject(vec.repeat_interleave(K, 0), layer, positions=0) if vec is not None
                else _null())
        with edit:
            logits = lm.continue_from(cache, b.input_ids[:, P - 1 :], b.attention_mask,
                                      logits_to_keep=M).logits
    lp = _logprobs(logits, b.target_ids, b.target_mask).view(len(items), K).cpu()
    top = logits[first, 0].argmax(-1).cpu()
    open_ok, mc_ok, mc_pred = [], [], []
    for r, it in enumerate(items):
        firsts = {encode_target(lm.tokenizer, template, d)[0] for d in it.d}
        open_ok.append(int(top[r]) in firsts)
        k = int(lp[r, : len(it.choices)].argmax())
        mc_pred.append(k)
        mc_ok.append(float(k == it.answer_index))
    return open_ok, top.tolist(), mc_ok, mc_pred


def _logprobs(logits, target_ids, target_mask):
    from fvtrain.composition.scoring import _target_logprobs

    return _target_logprobs(logits, target_ids, target_mask)


@contextmanager
def _null():
    yield


def evaluate_items(
    lm: FrozenLM,
    items: Sequence[AnalogyItem],
    template: PromptTemplate | None = None,
    vectors: torch.Tensor | None = None,
    layer: int | None = None,
    prompt: str = "zero_shot",
    batch_size: int = 16,
) -> ItemResults:
    """Open-ended and multiple-choice outcomes of every item; ``vectors[i]`` is injected on item i.

    Multiple-choice items whose candidates all keep C (the built-in layout) take one forward for
    both measures with a shared prefix; others (e.g. SAT, where each candidate has its own C) and
    open-ended items use plain batches.
    """
    template = template or PromptTemplate()
    if prompt not in PROMPTS:
        raise ValueError(f"prompt must be one of {PROMPTS}, got {prompt!r}")
    if vectors is not None and len(vectors) != len(items):
        raise ValueError(f"{len(vectors)} vectors for {len(items)} analogy items")
    I = len(items)
    open_ok = torch.zeros(I, dtype=torch.bool)
    mc_ok = torch.full((I,), float("nan"))
    mc_pred = torch.full((I,), -1, dtype=torch.long)
    open_tok = [0] * I
    shared = [i for i, it in enumerate(items) if _shared_prompt(it)]
    other = [i for i, it in enumerate(items) if not _shared_prompt(it)]
    for s in range(0, len(shared), batch_size):
        idx = shared[s : s + batch_size]
        vec = None if vectors is None else vectors[idx]
        o, t, m, p = _eval_shared(lm, [items[i] for i in idx], template, prompt, vec, layer)
        for j, i in enumerate(idx):
            open_ok[i], open_tok[i], mc_ok[i], mc_pred[i] = o[j], t[j], m[j], p[j]
    for s in range(0, len(other), batch_size):
        idx = other[s : s + batch_size]
        chunk = [items[i] for i in idx]
        vec = None if vectors is None else vectors[idx]
        tgt = make_batch(lm.tokenizer, [_prompt(template, prompt, it, it.c) for it in chunk],
                         [list(it.d) for it in chunk], template)
        sc = lm.score(tgt, vector=vec, layer=layer)
        for j, i in enumerate(idx):
            open_ok[i], open_tok[i] = bool(sc.correct[j]), int(sc.argmax[j])
        prompts, answers, owner = [], [], []
        for row, it in enumerate(chunk):
            for c, d in it.choices or ():
                prompts.append(_prompt(template, prompt, it, c))
                answers.append(d)
                owner.append(row)
        if not prompts:
            continue
        owner_t = torch.tensor(owner)
        cand = make_batch(lm.tokenizer, prompts, answers, template)
        cvec = None if vec is None else vec[owner_t.to(vec.device)]
        lp = lm.score(cand, vector=cvec, layer=layer).target_logprob.float().cpu()
        for row, it in enumerate(chunk):
            if it.choices:
                k = int(lp[owner_t == row].argmax())
                mc_pred[idx[row]] = k
                mc_ok[idx[row]] = float(k == it.answer_index)
    open_pred = [lm.tokenizer.decode([t]) for t in open_tok]
    return ItemResults(open_ok, mc_ok, mc_pred, open_pred)


def _acc(values: torch.Tensor) -> dict:
    values = values[~torch.isnan(values)]
    if values.numel() == 0:
        return {"acc": None, "n": 0}
    m = MeanMetric()
    m.update(values)
    return {"acc": float(m.compute()), "n": int(values.numel())}


def summarise(items: Sequence[AnalogyItem], res: ItemResults) -> dict:
    """``{"open"|"mc": {"all", "near", "far": {"acc", "n"}, "by_relation": {rel: {"acc", "n"}}}}``."""
    out = {}
    for mode, vals in (("open", res.open_correct.float()), ("mc", res.mc_correct.float())):
        groups = {"all": _acc(vals)}
        for dist in ("near", "far"):
            idx = [i for i, it in enumerate(items) if it.distance == dist]
            groups[dist] = _acc(vals[idx]) if idx else {"acc": None, "n": 0}
        rels = sorted({it.relation for it in items if it.relation})
        groups["by_relation"] = {r: _acc(vals[[i for i, it in enumerate(items) if it.relation == r]])
                                 for r in rels}
        out[mode] = groups
    return out
