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
from dataclasses import dataclass
from typing import Sequence

import torch
from torchmetrics.aggregation import MeanMetric

from fvtrain.data.types import AnalogyItem
from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import PromptTemplate, icl, make_batch, zero_shot

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


def evaluate_items(
    lm: FrozenLM,
    items: Sequence[AnalogyItem],
    template: PromptTemplate | None = None,
    vectors: torch.Tensor | None = None,
    layer: int | None = None,
    prompt: str = "zero_shot",
    batch_size: int = 16,
) -> ItemResults:
    """Open-ended and multiple-choice outcomes of every item; ``vectors[i]`` is injected on item i."""
    template = template or PromptTemplate()
    if vectors is not None and len(vectors) != len(items):
        raise ValueError(f"{len(vectors)} vectors for {len(items)} analogy items")
    open_ok, mc_ok, mc_pred, open_pred = [], [], [], []
    for s in range(0, len(items), batch_size):
        chunk = list(items[s : s + batch_size])
        vec = None if vectors is None else vectors[s : s + batch_size]
        tgt = make_batch(lm.tokenizer, [_prompt(template, prompt, it, it.c) for it in chunk],
                         [list(it.d) for it in chunk], template)
        sc = lm.score(tgt, vector=vec, layer=layer)
        open_ok.append(sc.correct.cpu())
        open_pred += [lm.tokenizer.decode([int(t)]) for t in sc.argmax.tolist()]
        prompts, answers, owner = [], [], []
        for row, it in enumerate(chunk):
            for c, d in it.choices or ():
                prompts.append(_prompt(template, prompt, it, c))
                answers.append(d)
                owner.append(row)
        ok = torch.full((len(chunk),), float("nan"))
        pred = torch.full((len(chunk),), -1, dtype=torch.long)
        if prompts:
            owner_t = torch.tensor(owner)
            cand = make_batch(lm.tokenizer, prompts, answers, template)
            cvec = None if vec is None else vec[owner_t.to(vec.device)]
            lp = lm.score(cand, vector=cvec, layer=layer).target_logprob.float().cpu()
            for row, it in enumerate(chunk):
                if not it.choices:
                    continue
                k = int(lp[owner_t == row].argmax())
                pred[row] = k
                ok[row] = float(k == it.answer_index)
        mc_ok.append(ok)
        mc_pred.append(pred)
    return ItemResults(torch.cat(open_ok), torch.cat(mc_ok), torch.cat(mc_pred), open_pred)


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
