"""The composition job: composite function vectors (CFV) from a basis bank, and analogy solving.

For every analogy A:B :: C:D the basis vectors are scored on the source pair,
``s_i = log P(B | prompt(A), basis_i)`` (one batched forward per pair), the weight scheme turns
the scores into weights, and ``CFV = sum_i w_i basis_i`` is injected on the prompt of C.

:func:`run` is what ``fvtrain-compose`` and the main job call. It writes to its run folder:
metrics.json (open-ended and multiple-choice accuracy, overall / near / far / by relation, for every
scheme and baseline), predictions.jsonl, scores.safetensors (source scores and every scheme's
weights), figures/analogy_accuracy.png, config.yaml, and for ``affine`` combiner.safetensors (W, b),
checkpoints/combiner-best.ckpt and combiner/metrics.csv.
"""

from __future__ import annotations

import json
import logging
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fvtrain import runs
from fvtrain.data.select import name_list
from fvtrain.errors import ConfigError
from fvtrain.composition.training import scheme_kwargs, trainer_factory
from fvtrain.runtime import ModelLike, obtain, seed_everything
from fvtrain.tracking import tracked

log = logging.getLogger("fvtrain.compose")

SCHEME_ORDER = ("uniform", "softmax", "top1", "affine")
BASELINES = ("none", "one_shot", "oracle")
PREDICTIONS = "predictions.jsonl"
SCORES = "scores.safetensors"
COMBINER = "combiner.safetensors"
FIGURE = "analogy_accuracy.png"


@dataclass
class ComposeResult(runs.StageResult):
    """The composition run: ``bank`` is the folder of basis vectors it composed, ``scheme`` the
    main weight scheme."""

    bank: Path = Path()
    scheme: str = ""


# -- checks and inputs (no model needed) -----------------------------------------------------------


def load_analogies(a_cfg: DictConfig, seed: int):
    """Read ``analogies.path`` and apply the relation / distance / max_items filters; or, with
    ``analogies.sets``, every set (:mod:`fvtrain.data.analogy_sets`), each tagged with its name."""
    from fvtrain.data.readers import read

    if a_cfg.get("sets"):
        from omegaconf import OmegaConf

        from fvtrain.data.analogy_sets import read_sets
        from fvtrain.data.types import DataSet

        specs = OmegaConf.to_container(a_cfg.sets, resolve=True)
        if a_cfg.path and str(a_cfg.path) != "builtin":  # analogies.path=<file>: one more set
            p = Path(str(a_cfg.path))
            specs.append({"name": p.parent.name if p.suffix else p.name, "path": str(p),
                          "format": a_cfg.format, "relations": name_list(a_cfg.relations)})
        try:
            items, info = read_sets(specs, seed)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        ds = DataSet("sets", analogies=items, path=";".join(i["path"] for i in info))
        ds.sets = info  # type: ignore[attr-defined]  # the summary metrics.json reports
        return items, ds
    ds = read(a_cfg.path, a_cfg.format, name_list(a_cfg.relations))
    items = list(ds.analogies)
    if not items:
        raise ConfigError(
            f"analogies.path={a_cfg.path!r} holds no analogy items ({ds.format} format: "
            f"{len(ds.relations)} relation(s), 0 analogies); give an analogy file (jsonl, google, "
            "sat/relbert, ...)"
        )
    if a_cfg.distance is not None:
        if a_cfg.distance not in ("near", "far"):
            raise ConfigError(f"analogies.distance must be near, far or null, got {a_cfg.distance!r}")
        items = [it for it in items if it.distance == a_cfg.distance]
        if not items:
            raise ConfigError(f"no analogy in {a_cfg.path} is labelled distance={a_cfg.distance}")
    if a_cfg.max_items is not None and int(a_cfg.max_items) < len(items):
        keep = sorted(random.Random(f"fvtrain-compose-items\0{seed}").sample(range(len(items)),
                                                                            int(a_cfg.max_items)))
        items = [items[i] for i in keep]
    return items, ds


def check_config(cfg: DictConfig) -> tuple[list[str], list[str]]:
    """``(fixed schemes reported beside the main one, baselines)``, checked."""
    also = name_list(cfg.compose.also) or []
    bad = [n for n in also if n not in ("uniform", "softmax", "top1")]
    if bad:
        raise ConfigError(f"compose.also may list uniform, softmax and top1 (fixed schemes), got {bad}; "
                          "a trained scheme is chosen with composition=affine")
    baselines = name_list(cfg.compose.baselines) or []
    bad = [n for n in baselines if n not in BASELINES]
    if bad:
        raise ConfigError(f"unknown baseline(s) {bad}; available: {', '.join(BASELINES)}")
    if "scheme" not in cfg.composition or "name" not in cfg.composition:
        raise ConfigError("the composition config needs 'name' and 'scheme' (see conf/composition/)")
    if cfg.compose.get("ablations"):
        from fvtrain.composition.ablation import check_specs

        check_specs(cfg.compose.ablations)
        if cfg.composition.name != "affine":
            raise ConfigError("compose.ablations vary the affine map: use composition=affine")
    return also, baselines


def training_analogies(cfg: DictConfig, bank, eval_items, template, seed: int):
    """The affine combiner's training analogies (see fvtrain.composition.training)."""
    from fvtrain.composition.training import analogies_from_pairs, relation_train_pairs
    from fvtrain.data.readers import read
    from fvtrain.data.select import load_relations

    a_cfg = cfg.analogies
    if a_cfg.train_path:
        ds = read(a_cfg.train_path, a_cfg.train_format, name_list(a_cfg.relations))
        if not ds.analogies:
            raise ConfigError(f"analogies.train_path={a_cfg.train_path!r} holds no analogy items")
        return list(ds.analogies), f"file {a_cfg.train_path}"
    marked = [it for it in eval_items if it.meta.get("split") == "train"]
    if marked:
        return marked, "items of analogies.path marked split=train"
    relations = None
    try:
        relations = load_relations(cfg.data)
    except Exception as err:  # noqa: BLE001 - only needed when the bank's run has no splits.json
        log.warning("could not read relation pairs from data.path=%s (%s)", cfg.data.path, err)
    pairs = relation_train_pairs(bank, relations, int(cfg.data.n_train), cfg.data.n_val)
    missing = [n for n in bank.names if n not in pairs]
    if missing:
        log.warning("no train pairs for basis relation(s) %s: no training analogies of them",
                    ", ".join(missing))
    items = analogies_from_pairs(pairs, int(cfg.composition.train.analogies_per_relation), seed,
                                 cfg.composition.train.get("sources_per_relation"))
    if not items:
        raise ConfigError(
            "the affine combiner has no training analogies: the bank's run folder has no splits.json "
            f"and data.path={cfg.data.path!r} has none of the bank's relations "
            f"({', '.join(bank.names[:6])}...); set data.path to the relations the bank was made from "
            "or give analogies.train_path"
        )
    return items, f"train pairs of {len(pairs)} basis relation(s)"


def _eval_items(items: list) -> list:
    """The test items of a split-marked file (else those not marked train), or all items."""
    if all(it.meta.get("split") in ("train", "val", "test") for it in items):
        return [it for it in items if it.meta["split"] == "test"] or \
               [it for it in items if it.meta["split"] != "train"]
    return items


# -- the job ----------------------------------------------------------------------------------------


@runs.owns_folder
@tracked("compose")  # one run per job in each logger of cfg.logger: config, metrics, tables, figures
def run(cfg: DictConfig, out: Path | str, lm: ModelLike, basis: Path | str | None = None) -> ComposeResult:
    """Compose the bank at ``basis`` (default ``cfg.basis.path``) and solve ``cfg.analogies`` into
    ``out`` (``cfg`` is a composed ``compose.yaml`` or ``pipeline.yaml``; it is not modified).

    Everything that can be checked without the model is checked before ``lm`` is obtained.
    """
    import torch
    from hydra.utils import instantiate

    from fvtrain.composition import compose as combine
    from fvtrain.composition import load_bank, make_scheme, score_pairs
    from fvtrain.console import progress
    from fvtrain.evaluation.analogy import check_encodable, evaluate_methods, paired_differences, summarise
    from fvtrain.preflight import check_config as check_settings
    from fvtrain.preflight import check_geometry
    from fvtrain.prompts import PromptTemplate, set_bos_policy

    out = Path(out)
    seed = int(cfg.seed)
    template = PromptTemplate(cfg.prompt.template)
    check_settings(cfg)
    also, baselines = check_config(cfg)
    bank = load_bank(cfg.basis.path if basis is None else basis, name_list(cfg.basis.relations))
    geo = check_geometry(cfg, None)
    if not 0 <= bank.layer < geo["n_layers"]:
        raise ConfigError(f"the bank at {bank.path} injects at layer {bank.layer}, but "
                          f"{cfg.model.name} has {geo['n_layers']} layers")
    items, ds = load_analogies(cfg.analogies, seed)
    eval_items = _eval_items(items)
    main_name = str(cfg.composition.name)
    main = instantiate(cfg.composition.scheme, **scheme_kwargs(cfg.composition, len(bank)))
    train_items = train_source = None
    if getattr(main, "trainable", False):
        train_items, train_source = training_analogies(cfg, bank, items, template, seed)
    runs.save_config(cfg, out)

    seed_everything(seed)
    lm = obtain(lm)
    set_bos_policy(lm.tokenizer, str(cfg.prompt.get("bos", "auto")))  # prompt.bos for every prompt here
    bank.check_compatible(lm, bool(cfg.basis.check_model))
    eval_items, skipped = check_encodable(lm.tokenizer, eval_items, template, cfg.analogies.on_bad)
    if not eval_items:
        raise ConfigError("no analogy item left to evaluate after dropping those that do not encode")
    bs, max_rows = int(cfg.compose.batch_size), cfg.compose.max_rows  # an integer or auto
    vectors, layer = bank.vectors, bank.layer
    log.info("bank: %d %s vectors at layer %d from %s; %d analogies", len(bank), bank.kind, layer,
             bank.path, len(eval_items))

    with progress() as bar:
        # 1. Source scores s[item, i] = log P(B | prompt(A), basis_i): one batched forward per chunk.
        task = bar.add_task("scoring the basis on A:B", total=len(eval_items))
        scores = score_pairs(lm, [(it.a, it.b) for it in eval_items], vectors, layer, template, bs,
                             max_rows, progress=lambda n: bar.advance(task, n),
                             tokens=str(cfg.compose.get("score_tokens", "all")))

        # 2. Weight schemes (the affine one is trained first).
        combiner_info = train_scores = None
        if train_items is not None:
            combiner_info, train_items, train_scores = _train_affine(cfg, main, lm, bank, train_items,
                                                                     train_source, template, seed, out, bar)
        schemes = {main_name: main}
        tau = float(cfg.composition.scheme.get("temperature", 1.0) or 1.0)  # not every scheme has one
        for name in also:
            schemes.setdefault(name, make_scheme(name, tau))
        order = [n for n in SCHEME_ORDER if n in schemes] + [n for n in schemes if n not in SCHEME_ORDER]
        with torch.no_grad():
            weights = {n: schemes[n].weights(scores).detach().float().cpu() for n in order}

        # 3. Evaluation: baselines, every scheme, the oracle. All zero-shot methods share each
        #    prompt's prefix; the one-shot baseline has prompts of its own.
        zs: dict[str, Any] = {}
        if "none" in baselines:
            zs["none"] = None
        for n in order:
            zs[n] = combine(weights[n], vectors)
        oracle_idx = []
        if "oracle" in baselines:
            # The basis vector of the item's own (labelled) relation: what a perfect selector picks.
            oracle_idx = [i for i, it in enumerate(eval_items)
                          if it.relation is not None and bank.index(it.relation) is not None]
            if oracle_idx:
                v = torch.zeros(len(eval_items), bank.d_model)
                for i in oracle_idx:
                    v[i] = vectors[bank.index(eval_items[i].relation)]
                zs["oracle"] = v
            else:
                log.warning("oracle baseline skipped: no analogy carries a relation that is in the bank")
        task = bar.add_task("evaluating methods", total=2 if "one_shot" in baselines else 1)
        exact = bool(cfg.compose.get("eval_exact", False))  # greedy exact match beside first-token
        results = evaluate_methods(lm, eval_items, zs, layer, template, "zero_shot", bs, exact)
        bar.advance(task)
        if "one_shot" in baselines:
            results["one_shot"] = evaluate_methods(lm, eval_items, {"one_shot": None}, None, template,
                                                   "one_shot", bs, exact)["one_shot"]
            bar.advance(task)
        everything = list(range(len(eval_items)))
        per_item: dict[str, Any] = {}
        for n in ["none", "one_shot", *order, "oracle"]:
            if n in results:
                idx = oracle_idx if n == "oracle" else everything
                per_item[n] = (idx, results[n] if n != "oracle" else results[n].subset(idx))
        methods = {n: summarise([eval_items[i] for i in idx], r) for n, (idx, r) in per_item.items()}
        # What the main scheme adds over each alternative, paired on the same items.
        versus = [(n, main_name) for n in ("none", "one_shot", *order) if n != main_name] + [(main_name, "oracle")]
        differences = paired_differences(eval_items, per_item, versus, seed)
        oracle_info = None
        if cfg.compose.oracle_search:
            oracle_info = _oracle_search(lm, eval_items, vectors, bank.names, layer, template, bs, methods)

    # 4. Artifacts.
    top = scores.argmax(1)
    _write_predictions(out, scores, weights, eval_items, per_item, bank.names, top)
    metrics = {
        "model": lm.describe(),
        "bank": bank.describe(),
        "layer": layer,
        "scheme": {"name": main_name, **main.describe()},
        "analogies": {"path": str(cfg.analogies.path), "format": ds.format, "n": len(eval_items),
                      "n_multiple_choice": sum(it.is_multiple_choice for it in eval_items),
                      "n_near": sum(it.distance == "near" for it in eval_items),
                      "n_far": sum(it.distance == "far" for it in eval_items),
                      "skipped": [why for _, why in skipped],
                      **({"sets": ds.sets} if hasattr(ds, "sets") else {})},
        "methods": methods,
        "differences": differences,
        "top_basis_is_item_relation": _top_hit(eval_items, top, bank.names),
        "first_token_degeneracy": _degeneracy(lm, eval_items, template),
    }
    if combiner_info is not None:
        metrics["combiner"] = combiner_info
    if oracle_info is not None:
        metrics["oracle_search"] = oracle_info
    metrics = runs.write_metrics(out, "compose", metrics)
    _figure(methods, out / runs.FIGURES / FIGURE, main_name, bank)
    if cfg.compose.get("ablations"):
        # After the main results are on disk: the variants take a while on a large bank.
        from fvtrain.composition.ablation import run_ablations

        base = dict(metrics)

        def write(block: dict) -> dict:  # after every variant: a stopped run keeps what it finished
            return runs.write_metrics(out, "compose", {**base, "ablations": block})

        ablations = run_ablations(cfg, lm, bank, eval_items, scores, train_items, train_scores,
                                  results[main_name], template, seed, out, on_variant=write)
        metrics = write(ablations)
    return ComposeResult("compose", out, metrics, bank=Path(bank.path), scheme=main_name)


# -- pieces of the job ------------------------------------------------------------------------------


def _write_predictions(out: Path, scores, weights: dict, eval_items: list, per_item: dict,
                       names: list[str], top) -> None:
    """``scores.safetensors`` (source scores, every scheme's weights) and ``predictions.jsonl``."""
    from fvtrain.artifacts import _atomic, save_tensors

    save_tensors(out / SCORES, {"scores": scores, **{f"weights.{n}": w for n, w in weights.items()}})
    rows = [{"a": it.a, "b": it.b, "c": it.c, "d": list(it.d), "distance": it.distance,
             "relation": it.relation, "top_basis": names[int(top[i])]}
            for i, it in enumerate(eval_items)]
    for name, (idx, res) in per_item.items():
        for j, i in enumerate(idx):
            it, k = eval_items[i], int(res.mc_pred[j])
            rows[i][name] = {"open_pred": res.open_pred[j], "open_correct": bool(res.open_correct[j]),
                             "mc_pred": it.choices[k][1] if k >= 0 and it.choices else None,
                             "mc_correct": None if k < 0 else bool(res.mc_correct[j] == 1)}
            if res.open_exact is not None:
                rows[i][name].update(open_text=res.open_text[j], open_exact=bool(res.open_exact[j] == 1))
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    _atomic(out / PREDICTIONS, lambda tmp: Path(tmp).write_text("\n".join(lines) + "\n"))


def _degeneracy(lm, items, template) -> dict:
    """How shared first tokens make open-ended first-token accuracy easy (warned about when so)."""
    from fvtrain.evaluation.relation import first_token_degeneracy, warn_if_degenerate

    report = first_token_degeneracy(lm.tokenizer, [list(it.d) for it in items], template)
    warn_if_degenerate(report, "open-ended analogies", log)
    return report


def _top_hit(items, top, names) -> dict:
    hits = [names[int(t)] == it.relation for it, t in zip(items, top) if it.relation]
    return {"acc": sum(hits) / len(hits) if hits else None, "n": len(hits)}


def _figure(methods: dict, path: Path, main_name: str, bank) -> None:
    from fvtrain.reporting.figures import grouped_bars

    values: dict[str, dict[str, float]] = {}
    for mode, label in (("open", "open"), ("mc", "MC")):
        for g in ("all", "near", "far"):
            vals = {n: m[mode][g]["acc"] for n, m in methods.items()}
            if all(v is None for v in vals.values()):
                continue
            values[f"{label} {g}"] = {n: (float("nan") if v is None else v) for n, v in vals.items()}
    if values:
        grouped_bars(values, path, "accuracy",
                     f"Analogies with composite vectors ({main_name}; {len(bank)} basis vectors)")


def _train_affine(cfg, combiner, lm, bank, train_items, source, template, seed, out, bar):
    """Fit the combiner; returns ``(info, the training analogies that encode, their scores)``."""
    from fvtrain.artifacts import save_tensors
    from fvtrain.composition import score_pairs
    from fvtrain.composition.training import fit_combiner
    from fvtrain.data.datamodules import AnalogyDataModule
    from fvtrain.evaluation.analogy import check_encodable

    t_cfg = cfg.composition.train
    train_items, skipped = check_encodable(lm.tokenizer, train_items, template, cfg.analogies.on_bad)
    if not train_items:
        raise ConfigError("no training analogy left for the affine combiner")
    task = bar.add_task("scoring the basis on training A:B", total=len(train_items))
    s = score_pairs(lm, [(it.a, it.b) for it in train_items], bank.vectors, bank.layer, template,
                    int(cfg.compose.batch_size), cfg.compose.max_rows,
                    progress=lambda n: bar.advance(task, n), tokens=str(cfg.compose.get("score_tokens", "all")))
    combiner.attach(lm, bank.vectors, bank.layer)
    data = AnalogyDataModule(train_items, s, lm.tokenizer, template, int(t_cfg.batch_size),
                              float(t_cfg.val_fraction), seed, prefix_cache=lm.prefix_cache)
    log.info("training the affine combiner on %d analogies (%s)", len(train_items), source)
    info = fit_combiner(combiner, data, trainer_factory(t_cfg, lm), out)
    save_tensors(out / COMBINER, {"W": combiner.matrix().detach(), "b": combiner.b.detach(),
                                   "temperature": combiner.log_tau.detach().exp().reshape(1)})
    combiner.eval()
    return ({"source": source, "n_items": len(train_items), "skipped": len(skipped), **info,
             **combiner.describe()}, train_items, s)


def _oracle_search(lm, items, basis, names, layer, template, bs, methods) -> dict:
    """Every basis vector alone on every item: the best single vector (chosen on these items, per
    mode) and the per-item best (an upper bound for any one-vector choice)."""
    import torch

    from fvtrain.evaluation.analogy import ItemResults, evaluate_methods, summarise

    got = evaluate_methods(lm, items, {n: basis[j].expand(len(items), -1) for j, n in enumerate(names)},
                           layer, template, "zero_shot", bs)
    res = [got[n] for n in names]
    open_m = torch.stack([r.open_correct.float() for r in res])  # [N, I]
    mc_m = torch.stack([r.mc_correct for r in res])
    mc_mean = torch.nan_to_num(mc_m, nan=0.0).mean(1)
    j_open, j_mc = int(open_m.mean(1).argmax()), int(mc_mean.argmax())
    best = summarise(items, res[j_open])
    best["mc"] = summarise(items, res[j_mc])["mc"]
    methods["best_single"] = best
    any_open = open_m.max(0).values.bool()
    any_mc = torch.where(torch.isnan(mc_m[0]), torch.nan, torch.nan_to_num(mc_m, nan=0.0).max(0).values)
    methods["best_per_item"] = summarise(items, ItemResults(any_open, any_mc, res[0].mc_pred, res[0].open_pred))
    return {"best_single_open": names[j_open], "best_single_mc": names[j_mc],
            "per_vector_open": dict(zip(names, open_m.mean(1).tolist())),
            "per_vector_mc": dict(zip(names, mc_mean.tolist()))}
