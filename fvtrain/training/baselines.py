"""Baseline vectors reported beside the FV and the FFV, and usable as an FFV's starting point.

All are ``[relations, d_model]`` vectors injected like an FV: *added* to the output of block
``layer`` at the last prompt token.

* ``task_vector`` (Hendel et al. 2023): the mean over clean ICL prompts of block ``layer``'s output
  at the last token. Hendel et al. *replace* the residual by this vector (on a ``x ->`` prompt);
  here it is added, like every vector of this framework, so the query's own residual is kept and
  the vector's norm (about the residual's) doubles the stream's scale.
* ``task_vector_replace``: the same vector evaluated Hendel's way, overwriting the residual at the
  last token. Its per-prompt edit (``mean - h``) is no fixed vector, so it is not an FFV init and is
  scored outside the batched test loop (:func:`replace_scores`, zero-shot test prompts only).
* ``mean_diff`` (ActAdd / CAA style): the same mean over ICL prompts minus the mean over the
  matching zero-shot prompts (same queries), i.e. what the demonstrations add to the residual.
* ``random_rms``: a random direction (the same seeded direction as ``ffv.init=random``) scaled to
  the residual stream's norm at the layer (mean over the zero-shot prompts of ``||h||`` at the
  last token), not to the FV's norm, which a massive-activation dimension can inflate.

Prompts follow the extraction's recipe (:func:`fvtrain.extraction.job.extract_relation`): with the
same seed, ``n_prompts`` and ``n_shots`` the clean prompts are the ones the FV's mean head
activations are taken over. Residuals come from :meth:`FrozenLM.block_output`, which runs only
blocks ``0..layer`` (a prefix cache would not help: every prompt is run once).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import torch

from fvtrain.data.splits import Split
from fvtrain.prompts import PromptTemplate, icl, make_batch, sample_demos, zero_shot
from fvtrain.training.init import BASELINE_INITS, random_like

BASELINES = BASELINE_INITS  # vectors added like an FV (test-table columns and FFV inits)
REPLACED = ("task_vector_replace",)  # the task vector overwriting the residual (a column only)
TRAINED = ("soft_prompt",)  # trained beside the FFV (fvtrain.training.soft_prompt; a column only)
FOLDER = "baselines"  # run-folder subfolder: baselines/<name>/<relation>.safetensors + .json


@dataclass
class BaselineSet:
    """Baseline vectors of several relations: ``vectors[name]`` is ``[relations, d_model]``."""

    relations: list[str]
    layer: int
    vectors: dict[str, torch.Tensor]
    residual_norm: torch.Tensor  # [relations] mean ||h_layer|| at the last zero-shot prompt token
    n_prompts: int
    n_shots: int
    info: dict = field(default_factory=dict)


def check_names(names: Sequence[str]) -> list[str]:
    """The baseline names, checked (a ``ValueError`` names the unknown ones), duplicates dropped."""
    names = list(dict.fromkeys(str(n) for n in names))
    known = BASELINES + REPLACED + TRAINED
    bad = [n for n in names if n not in known]
    if bad:
        raise ValueError(f"unknown baseline(s) {', '.join(bad)}: use any of {', '.join(known)}")
    return names


def relation_prompts(split: Split, template: PromptTemplate, seed: int, n_prompts: int,
                     n_shots: int) -> tuple[list[str], list[str]]:
    """``(clean ICL prompts, matching zero-shot prompts)`` over the train split: the extraction's
    recipe (same seed, same draws), so the task vector averages the FV's own clean prompts."""
    rng = random.Random(f"{seed}-{split.relation}")
    train = list(split.train)
    queries = [rng.choice(train) for _ in range(int(n_prompts))]
    clean = [icl(template, sample_demos(train, q.x, int(n_shots), rng), q.x) for q in queries]
    return clean, [zero_shot(template, q.x) for q in queries]


def last_token_residuals(lm, prompts: Sequence[str], layer: int, batch_size: int = 16) -> torch.Tensor:
    """``[N, d_model]`` block ``layer``'s output at each prompt's last token (float32, CPU)."""
    out = []
    for i in range(0, len(prompts), batch_size):
        chunk = list(prompts[i: i + batch_size])
        b = make_batch(lm.tokenizer, chunk, ["x"] * len(chunk))  # a throwaway answer: prompts only
        out.append(lm.block_output(b.prompt_ids, b.prompt_mask, layer))
    return torch.cat(out) if out else torch.zeros(0, lm.d_model)


def _mean_over(prompts: list[str], lm, layer: int, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Repeated prompts (a query drawn twice) have identical residuals: run each once, weight by count.
    uniq = list(dict.fromkeys(prompts))
    res = last_token_residuals(lm, uniq, layer, batch_size).double()
    where = {p: i for i, p in enumerate(uniq)}
    idx = torch.tensor([where[p] for p in prompts])
    return res[idx].mean(0), res[idx].norm(dim=-1).mean()


def build_baselines(lm, splits: Mapping[str, Split], names: Sequence[str], template: PromptTemplate,
                    seed: int, layer: int, n_prompts: int, n_shots: int,
                    batch_size: int = 16) -> BaselineSet:
    """The ``names`` baselines of every relation in ``splits`` (train pairs only) at ``layer``."""
    names = [n[: -len("_replace")] if n in REPLACED else n for n in check_names(names) if n not in TRAINED]
    names = list(dict.fromkeys(names))
    relations = list(splits)
    need_icl = any(n in ("task_vector", "mean_diff") for n in names)
    icl_means, zs_means, norms = [], [], []
    for r in relations:
        clean, zs = relation_prompts(splits[r], template, seed, n_prompts, n_shots)
        if need_icl:
            icl_means.append(_mean_over(clean, lm, layer, batch_size)[0])
        zm, zn = _mean_over(zs, lm, layer, batch_size)
        zs_means.append(zm)
        norms.append(zn)
    norm = torch.stack(norms).float()
    vectors: dict[str, torch.Tensor] = {}
    for n in names:
        if n == "task_vector":
            vectors[n] = torch.stack(icl_means).float()
        elif n == "mean_diff":
            vectors[n] = (torch.stack(icl_means) - torch.stack(zs_means)).float()
        elif n == "random_rms":
            vectors[n] = random_like(norm, relations, lm.d_model, seed)
    return BaselineSet(relations, int(layer), vectors, norm, int(n_prompts), int(n_shots))


def replace_scores(lm, splits: Mapping[str, Split], vectors: torch.Tensor, layer: int,
                   template: PromptTemplate, batch_size: int = 32) -> dict[str, dict]:
    """``{relation: {acc, prob, n}}`` on the zero-shot test prompts with block ``layer``'s output
    at the last prompt token overwritten by the relation's row of ``vectors`` (first-token
    top-1 accuracy and probability, as in the test table)."""
    out = {}
    for i, (r, split) in enumerate(splits.items()):
        correct, prob = [], []
        pairs = list(split.test)
        for j in range(0, len(pairs), batch_size):
            chunk = pairs[j: j + batch_size]
            b = make_batch(lm.tokenizer, [zero_shot(template, p.x) for p in chunk], [p.answers for p in chunk],
                           template)
            with lm.replace(vectors[i], layer, positions=b.prompt_len - 1):
                sc = lm.score(b)
            correct.append(sc.correct.float().cpu())
            prob.append(sc.first_prob.float().cpu())
        n = len(pairs)
        out[r] = {"acc": float(torch.cat(correct).mean()) if n else None,
                  "prob": float(torch.cat(prob).mean()) if n else None, "n": n}
    return out


def save_baselines(folder: str | Path, base: BaselineSet, lm, splits: Mapping[str, Split],
                   template: PromptTemplate, seed: int, metrics: Mapping | None = None) -> Path:
    """``folder/<name>/<relation>.safetensors + .json`` for every baseline: the same artifacts as
    an FV or FFV, so they can be evaluated, used as ``ffv.fv_run`` or composed as a basis bank."""
    from fvtrain import __version__
    from fvtrain.artifacts import save_vector
    from fvtrain.data.splits import split_hash

    folder = Path(folder)
    per = (metrics or {}).get("relations", {})
    for name, vecs in base.vectors.items():
        for i, r in enumerate(base.relations):
            test = {mode: v[name] for mode, v in per.get(r, {}).items()
                    if isinstance(v, dict) and isinstance(v.get(name), dict)}
            man = {
                "kind": name, "relation": r, "model_id": lm.model_id, "model_revision": lm.source.revision,
                "model_type": lm.model_type, "n_layers": lm.n_layers, "layer": base.layer,
                "template": template.template, "n_prompts": base.n_prompts, "n_shots": base.n_shots,
                "split_hash": split_hash(splits[r]), "seed": int(seed),
                "residual_norm": float(base.residual_norm[i]), "injection": "add",
                "metrics": {"test": test}, "fvtrain_version": __version__,
            }
            save_vector(folder / name, r, vecs[i], man)
    return folder
