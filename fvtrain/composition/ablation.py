"""Ablations of the affine combiner on the held-out analogies (``compose.ablations``).

Each variant changes one thing against the configured scheme (the *reference*): the basis bank
(a subset of its relations), the number of training analogies per relation, the map's form
(``diagonal``, ``learn_temperature``, ``identity_reg``) or the source score (``score_tokens:
first``). Everything else is shared: the LM, the bank, the training analogies (a variant with fewer
per relation takes the first ones of each relation, so the sets are nested) and the evaluation
items, scored once. A bank subset uses the matching columns of the full score matrix: a basis
vector's score does not depend on the others. Every variant is evaluated on the same items as the
reference, so its difference from the reference carries a paired bootstrap interval.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from omegaconf import DictConfig, OmegaConf

from fvtrain.errors import ConfigError

log = logging.getLogger(__name__)

KEYS = ("name", "basis", "analogies_per_relation", "form", "learn_temperature", "identity_reg",
        "score_tokens")
SCHEME_KEYS = ("form", "learn_temperature", "identity_reg")


def check_specs(specs: Any, bank_names: Sequence[str] | None = None) -> list[dict]:
    """The variants as plain dicts, refused with a clear message when malformed."""
    out = []
    raw = OmegaConf.to_container(specs, resolve=True) if OmegaConf.is_config(specs) else list(specs)
    for spec in raw:
        d = dict(spec)
        bad = set(d) - set(KEYS)
        if bad or not d.get("name"):
            raise ConfigError(f"compose.ablations: each variant is {{name, {', '.join(KEYS[1:])}}}; got {d}")
        if d["name"] in {o["name"] for o in out} or d["name"] == "reference":
            raise ConfigError(f"compose.ablations: the name {d['name']!r} is taken")
        if d.get("score_tokens", "all") not in ("all", "first"):
            raise ConfigError(f"compose.ablations[{d['name']}].score_tokens must be all or first")
        if bank_names is not None and d.get("basis"):
            missing = [r for r in d["basis"] if r not in bank_names]
            if missing:
                raise ConfigError(f"compose.ablations[{d['name']}].basis names {missing[:5]}, which the bank "
                                  "does not hold")
        out.append(d)
    return out


def nested_subset(items: Sequence, per_relation: int | None) -> list[int]:
    """Indices of the first ``per_relation`` training analogies of every relation (all if None)."""
    if per_relation is None:
        return list(range(len(items)))
    seen: dict[Any, int] = {}
    keep = []
    for i, it in enumerate(items):
        if seen.get(it.relation, 0) < int(per_relation):
            keep.append(i)
            seen[it.relation] = seen.get(it.relation, 0) + 1
    return keep


def run_ablations(cfg: DictConfig, lm, bank, eval_items: list, eval_scores: torch.Tensor, train_items: list,
                  train_scores: torch.Tensor, reference, template, seed: int, out: Path,
                  on_variant: Callable[[dict], Any] | None = None) -> dict:
    """Train and evaluate every variant of ``cfg.compose.ablations``; returns the metrics block
    ``{"variants", "methods", "differences"}`` (``reference``: the configured scheme's results).

    Each variant is evaluated as soon as it is trained: its outcomes go to
    ``out/ablations/<name>/outcomes.json`` and ``on_variant`` gets the block of the variants so far
    (the job rewrites ``metrics.json`` with it), so a run stopped half-way keeps what it finished.
    A resumed run (``ckpt_path`` set) reuses every variant whose saved spec is unchanged.
    """
    from fvtrain import runs

    specs = check_specs(cfg.compose.ablations, bank.names)
    ref_tokens = str(cfg.compose.get("score_tokens", "all"))
    scores = {ref_tokens: (train_scores, eval_scores)}
    ref = OmegaConf.to_container(cfg.composition.scheme, resolve=True)
    variants = {"reference": {"name": "reference", "n_basis": len(bank), "n_train_analogies": len(train_items),
                              "score_tokens": ref_tokens, **{k: ref.get(k) for k in SCHEME_KEYS}}}
    everything = list(range(len(eval_items)))
    per_item = {"reference": (everything, reference)}
    block: dict = {}
    for spec in specs:
        name = spec["name"]
        folder = out / "ablations" / name
        saved = load_variant(folder, spec, len(eval_items)) if runs.resuming(cfg) else None
        if saved is not None:
            log.info("ablation %s: reusing the outcomes in %s", name, folder)
            variants[name], per_item[name] = saved[0], (everything, saved[1])
        else:
            variants[name], res = train_variant(cfg, lm, bank, spec, scores, train_items, eval_items,
                                                template, seed, folder)
            save_variant(folder, spec, variants[name], res)
            per_item[name] = (everything, res)
        block = ablation_block(eval_items, variants, per_item, seed)
        if on_variant is not None:
            on_variant(block)
    return block


def train_variant(cfg: DictConfig, lm, bank, spec: dict, scores: dict, train_items: list, eval_items: list,
                  template, seed: int, folder: Path):
    """Fit one variant's combiner and evaluate its CFVs: ``(variant description, ItemResults)``.
    ``scores`` maps a score type to its ``(train, eval)`` source scores; a missing one is computed
    once and kept there for the variants after it."""
    from hydra.utils import instantiate

    from fvtrain.composition import compose, score_pairs
    from fvtrain.composition.training import fit_combiner, scheme_kwargs, trainer_factory
    from fvtrain.data.datamodules import AnalogyDataModule
    from fvtrain.evaluation.analogy import evaluate_methods

    name, t_cfg = spec["name"], cfg.composition.train
    bs, max_rows = int(cfg.compose.batch_size), cfg.compose.max_rows  # an integer or auto
    tokens = spec.get("score_tokens") or str(cfg.compose.get("score_tokens", "all"))
    if tokens not in scores:  # one more scoring pass, shared by every variant that needs it
        log.info("ablations: scoring the basis with %s-token source scores", tokens)
        scores[tokens] = tuple(score_pairs(lm, [(it.a, it.b) for it in its], bank.vectors, bank.layer,
                                           template, bs, max_rows, tokens=tokens)
                               for its in (train_items, eval_items))
    s_train, s_eval = scores[tokens]
    cols = [bank.index(r) for r in spec["basis"]] if spec.get("basis") else list(range(len(bank)))
    idx = nested_subset(train_items, spec.get("analogies_per_relation"))
    overrides = {k: spec[k] for k in SCHEME_KEYS if spec.get(k) is not None}
    combiner = instantiate(cfg.composition.scheme, **scheme_kwargs(cfg.composition, len(cols)), **overrides)
    basis = bank.vectors[cols]
    combiner.attach(lm, basis, bank.layer)
    data = AnalogyDataModule([train_items[i] for i in idx], s_train[idx][:, cols], lm.tokenizer, template,
                             int(t_cfg.batch_size), float(t_cfg.val_fraction), seed, prefix_cache=lm.prefix_cache)
    log.info("ablation %s: %d basis vectors, %d training analogies, %s", name, len(cols), len(idx),
             overrides or "reference map")
    info = fit_combiner(combiner, data, trainer_factory(t_cfg, lm), folder)
    combiner.eval()
    with torch.no_grad():
        cfv = compose(combiner.weights(s_eval[:, cols]).detach().float().cpu(), basis)
    variant = {**spec, "n_basis": len(cols), "n_train_analogies": len(idx), "score_tokens": tokens,
               "epochs": info.get("epochs"), **combiner.describe()}
    return variant, evaluate_methods(lm, eval_items, {name: cfv}, bank.layer, template, "zero_shot", bs)[name]


def ablation_block(eval_items: list, variants: dict, per_item: dict, seed: int) -> dict:
    """The ``ablations`` block of the compose metrics for the variants in ``per_item``."""
    from fvtrain.evaluation.analogy import paired_differences, summarise

    return {
        "variants": {n: variants[n] for n in per_item},
        "methods": {n: summarise(eval_items, r) for n, (_, r) in per_item.items()},
        "differences": paired_differences(eval_items, per_item, [("reference", n) for n in per_item
                                                                 if n != "reference"], seed),
    }


OUTCOMES = "outcomes.json"


def save_variant(folder: Path, spec: dict, variant: dict, res) -> Path:
    """A variant's spec, description and per-item outcomes (atomic JSON)."""
    from fvtrain.artifacts import write_json

    return write_json(Path(folder) / OUTCOMES, {
        "spec": spec, "variant": variant,
        "open_correct": res.open_correct.int().tolist(), "mc_correct": res.mc_correct.tolist(),
        "mc_pred": res.mc_pred.tolist(), "open_pred": list(res.open_pred)})


def load_variant(folder: Path, spec: dict, n_items: int):
    """``(variant, ItemResults)`` saved by :func:`save_variant` for this very spec, else None."""
    from fvtrain.artifacts import read_json
    from fvtrain.evaluation.analogy import ItemResults

    path = Path(folder) / OUTCOMES
    if not path.exists():
        return None
    d = read_json(path)
    if d.get("spec") != spec or len(d.get("open_correct", ())) != n_items:
        log.info("ablation %s: %s holds another spec or item set; training it again", spec["name"], path)
        return None
    res = ItemResults(torch.tensor(d["open_correct"], dtype=torch.bool),
                      torch.tensor([float("nan") if v is None else v for v in d["mc_correct"]]),
                      torch.tensor(d["mc_pred"], dtype=torch.long), list(d["open_pred"]))
    return d["variant"], res
