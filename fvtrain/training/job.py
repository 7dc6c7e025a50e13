"""The training job: fine-tuned function vectors (FFVs) with the language model frozen.

:func:`run` is what ``fvtrain-train`` and the main job call. In order: every check that needs no
weights (config values, geometry, data, splits, a resume checkpoint, the init vectors on disk),
then the model, FVs extracted here when none are given, one ``Trainer.fit`` (and a second one for
the random-init baseline), one ``Trainer.test`` with every method side by side, and the artifacts:
``bank/`` (the basis bank composition reads), ``metrics.json``, ``splits.json``, ``config.yaml``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from fvtrain import __version__, runs
from fvtrain.errors import ConfigError
from fvtrain.runtime import ModelLike, obtain, seed_everything
from fvtrain.tracking import current as current_tracker
from fvtrain.tracking import tracked

log = logging.getLogger("fvtrain.train")

METRIC_KEYS_DOC = (
    "zero_shot_acc.relations[relation][method] and zero_shot_acc.mean[method]: zero-shot test "
    "accuracy (top-1 first token, any accepted answer) of each method: none (no vector), fv (the "
    "extracted function vector), ffv (the fine-tuned vector), ffv_random (FFV trained from a random "
    "init with the FV's norm, when ffv.random_baseline=true), icl (clean 10-shot ICL prompts, no "
    "vector). relations[relation][mode][method] = {acc, prob, n} for mode zero_shot and "
    "shuffled_icl; relations[relation].icl = {acc, prob, n, source}. mean[mode][method] and "
    "mean.icl are means over relations."
)


@dataclass
class TrainResult(runs.StageResult):
    """The training run: ``bank`` is the folder of FFVs; ``fv_source`` the FVs they started from."""

    bank: Path = Path()
    layer: int = 0
    fv_source: Path | None = None


# -- checks that need no model ---------------------------------------------------------------------

def _list(node) -> list:
    if node is None:
        return []
    if isinstance(node, str):
        return [node]
    return list(node)


def check_ffv(cfg: DictConfig) -> None:
    """Everything in ``cfg.ffv`` that can be refused before loading a model."""
    from fvtrain.data.datamodules import EVAL_MODES, TRAIN_MODES
    from fvtrain.training.init import INITS
    from fvtrain.training.module import IMPLS, LOSS_TARGETS, SELECT

    f = cfg.ffv
    checks = [
        ("ffv.init", f.init, INITS), ("ffv.impl", f.impl, IMPLS),
        ("ffv.loss.target", f.loss.target, LOSS_TARGETS), ("ffv.select", f.select, SELECT),
    ]
    for key, value, allowed in checks:
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: use one of {', '.join(allowed)}")
    for key, allowed in (("train_modes", TRAIN_MODES), ("val_modes", EVAL_MODES), ("test_modes", EVAL_MODES)):
        modes = _list(f[key])
        bad = [m for m in modes if m not in allowed]
        if bad or (key != "test_modes" and not modes):
            raise ConfigError(f"ffv.{key}={modes}: use one or more of {', '.join(allowed)}")
    if float(f.loss["lambda"]) < 0:
        raise ConfigError(f"ffv.loss.lambda must be >= 0, got {f.loss['lambda']}")
    if int(f.batch_per_relation) < 1 or int(f.eval_batch_size) < 1:
        raise ConfigError("ffv.batch_per_relation and ffv.eval_batch_size must be positive")
    from fvtrain.training.baselines import check_names

    try:
        check_names(_list(f.get("baselines")))
    except ValueError as err:
        raise ConfigError(f"ffv.baselines: {err}") from None
    if f.get("baseline_prompts") is not None and int(f.baseline_prompts) < 1:
        raise ConfigError(f"ffv.baseline_prompts must be >= 1 (or null), got {f.baseline_prompts}")
    from fvtrain.training.soft_prompt import check_soft_prompt

    check_soft_prompt(f)


def model_d_model(cfg: DictConfig) -> int:
    from fvtrain.models.loading import load_config

    c = load_config(cfg.model.name, cfg.model.get("revision"), cfg.model.get("trust_remote_code", False),
                    cfg.model.get("layers"))
    c = getattr(c, "text_config", None) or c
    for name in ("hidden_size", "n_embd", "d_model"):
        if getattr(c, name, None) is not None:
            return int(getattr(c, name))
    raise ConfigError(f"cannot read d_model from the config of {cfg.model.name}")


def resolve_ckpt(ckpt_path: str | None, out: Path) -> Path | None:
    """``last`` (this run folder), a run folder, or a checkpoint file."""
    if ckpt_path in (None, "", "null"):
        return None
    if str(ckpt_path) == "last":
        p = out / runs.CHECKPOINTS / "last.ckpt"
        if not p.is_file():
            log.warning("ckpt_path=last but %s does not exist: starting from scratch", p)
            return None
        return p
    p = Path(str(ckpt_path)).expanduser()
    if p.is_dir():
        for cand in (p / runs.CHECKPOINTS / "last.ckpt", p / "last.ckpt"):
            if cand.is_file():
                return cand
        raise ConfigError(f"ckpt_path={ckpt_path}: no checkpoints/last.ckpt in that folder")
    if not p.is_file():
        raise ConfigError(f"ckpt_path={ckpt_path} does not exist")
    return p


def load_checkpoint(path: Path) -> dict:
    """A Lightning checkpoint read without unpickling code (tensors and plain containers only)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any failure is a damaged or foreign checkpoint
        others = sorted(p for p in Path(path).parent.glob("*.ckpt") if p.name != Path(path).name)
        hint = (f"; resume from the other checkpoint in that folder with ckpt_path={others[-1]}, or delete "
                f"{Path(path).name} to start afresh" if others else f"; delete {Path(path).name} to start afresh")
        raise ConfigError(f"checkpoint {path} cannot be read ({type(err).__name__}: {str(err)[:200]}): it is "
                          f"damaged or was not written by fvtrain{hint}") from None


def check_checkpoint(path: Path, relations: list[str], d_model: int, model_id: str) -> dict:
    """Refuse a checkpoint of other relations, another model or another vector size."""
    hp = load_checkpoint(path).get("hyper_parameters", {})
    if hp.get("relations") is not None and list(hp["relations"]) != list(relations):
        raise ConfigError(f"checkpoint {path} holds vectors of relations {hp['relations']}, "
                          f"this run trains {relations}")
    if hp.get("d_model") is not None and int(hp["d_model"]) != d_model:
        raise ConfigError(f"checkpoint {path} holds vectors of size {hp['d_model']}, this model has "
                          f"d_model {d_model}")
    if hp.get("model_id") is not None and hp["model_id"] != model_id:
        raise ConfigError(f"checkpoint {path} was trained with model {hp['model_id']!r}, this run uses "
                          f"{model_id!r}")
    return hp


# -- the job ---------------------------------------------------------------------------------------

@runs.owns_folder
@tracked("train")  # one run per job in each logger of cfg.logger; its Trainer logs into the same runs
def run(cfg: DictConfig, out: Path, lm: ModelLike, fv_source: Path | str | None = None) -> TrainResult:
    """Train FFVs for ``cfg`` (a composed ``train.yaml``) into ``out``.

    ``fv_source`` is the extraction run (or folder of FVs) to start from; None uses
    ``cfg.ffv.fv_run``, and when that is null too the FVs are extracted here (``extraction/``).
    """
    from hydra.utils import instantiate

    from fvtrain.data.datamodules import RelationDataModule, check_demos, needs_demos
    from fvtrain.data.select import load_relations
    from fvtrain.data.splits import configured_split, save_splits, split_hash
    from fvtrain.preflight import check_config, check_geometry
    from fvtrain.prompts import PromptTemplate, set_bos_policy
    from fvtrain.training.init import (
        InitArtifactError,
        common_layer,
        initial_vectors,
        load_init_vectors,
    )
    from fvtrain.training.module import FFVModule, LMFactory
    from fvtrain.training.trainer import (
        build_trainer,
        instantiate_callbacks,
        instantiate_loggers,
        start_loggers,
        tidy_lightning_logging,
    )

    t_start = time.time()
    tidy_lightning_logging()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    f = cfg.ffv
    seed = int(cfg.seed)
    template = PromptTemplate(cfg.prompt.template)
    check_config(cfg)
    check_ffv(cfg)
    if f.num_threads:
        torch.set_num_threads(int(f.num_threads))

    # -- everything checkable without the model -------------------------------------------
    geo = check_geometry(cfg, f.layer)
    d_model = model_d_model(cfg)
    ds = load_relations(cfg.data)
    splits = {name: configured_split(rel, int(cfg.data.n_train), cfg.data.n_val, seed,
                                     cfg.data.get("cv_folds"), cfg.data.get("cv_fold"))
              for name, rel in ds.relations.items()}
    relations = list(splits)
    hashes = {n: split_hash(s) for n, s in splits.items()}
    train_modes, val_modes, test_modes = _list(f.train_modes), _list(f.val_modes), _list(f.test_modes)
    if needs_demos(train_modes, val_modes + test_modes, bool(f.icl)):
        for s in splits.values():
            check_demos(s, int(f.n_shots))

    resume = resolve_ckpt(cfg.ckpt_path, out)
    if resume is not None:
        check_checkpoint(resume, relations, d_model, cfg.model.name)

    fv_run = fv_source if fv_source is not None else f.fv_run
    if fv_run is None and resume is not None:
        prev = resume.parent.parent / runs.EXTRACTION  # a run folder that extracted its own FVs
        if (prev / runs.VECTORS).is_dir():
            fv_run = str(prev)
            log.info("resuming: reusing the FVs extracted in %s", prev)
    need_fv = f.init in ("fv", "random") or bool(f.compare_fv)
    fv, fv_manifests, fv_folder = None, {}, None
    if fv_run is not None:
        fv, fv_manifests, fv_folder = load_init_vectors(
            fv_run, relations, model_id=cfg.model.name, d_model=d_model, layer=f.layer,
            split_hashes=None if f.allow_split_mismatch else hashes)
    layer = f.layer if f.layer is not None else common_layer(fv_manifests)
    if layer is None:
        layer = max(0, round(geo["n_layers"] / 3))
    layer = int(layer)
    baseline_names = baselines_needed(f)
    if (fv is None and need_fv) or baseline_names:
        from fvtrain.extraction.job import check_shots

        for s in splits.values():
            check_shots(s, int(cfg.extract.n_shots))

    runs.save_config(cfg, out)
    save_splits(out / runs.SPLITS, splits, seed=seed, n_train=int(cfg.data.n_train))

    # -- the model, and the FVs when they must be extracted here ---------------------------
    seed_everything(seed)
    lm = obtain(lm)
    set_bos_policy(lm.tokenizer, str(cfg.prompt.get("bos", "auto")))  # prompt.bos for every prompt here
    lm.check_layer(layer)
    if fv_manifests:
        revs = {m.get("model_revision") for m in fv_manifests.values()} - {None}
        if lm.source.revision is not None and revs and revs != {lm.source.revision}:
            raise InitArtifactError(f"the init vectors were made with revision(s) {sorted(revs)} of "
                                    f"{lm.model_id}, this run loaded {lm.source.revision!r}")
    if fv is None and need_fv:
        fv, fv_manifests, fv_folder = extract_fvs(cfg, lm, splits, template, seed, layer, out)
    frozen = lm.n_params
    lr_scale = residual_scale(lm, splits, template, layer) if f.lr_scale == "rms" else float(f.lr_scale)
    log.info("layer %d, learning-rate scale %.4g (%s)", layer, lr_scale, f.lr_scale)

    # ICL baseline: reuse the extraction's numbers when they were measured on the same prompts.
    icl_reused = reusable_icl(fv_manifests, hashes, template, seed, int(f.n_shots)) \
        if f.icl and f.icl_from_extraction else {}
    icl_compute = [r for r in relations if f.icl and r not in icl_reused]

    dm = RelationDataModule(splits, template, train_modes, val_modes, test_modes, icl_compute,
                       int(f.n_shots), int(f.n_shuffled), int(f.batch_per_relation), int(f.eval_batch_size), seed)
    optimizer = instantiate(cfg.optim.optimizer)
    scheduler = instantiate(cfg.optim.scheduler) if cfg.optim.get("scheduler") else None
    factory = LMFactory(OmegaConf.to_container(cfg.model, resolve=True), str(cfg.prompt.get("bos", "auto")))
    hp_common = {
        "model_id": lm.model_id, "model_revision": lm.source.revision, "params_frozen": frozen,
        "train_modes": train_modes, "n_shots": int(f.n_shots), "n_shuffled": int(f.n_shuffled),
        "batch_per_relation": int(f.batch_per_relation), "seed": seed, "select": f.select,
        "fv_source": str(fv_folder) if fv_folder else None,
        "optimizer": OmegaConf.to_container(cfg.optim, resolve=True),
        "max_epochs": cfg.trainer.get("max_epochs"), "fvtrain_version": __version__,
    }

    def make_module(init_kind: str, prefix: str = "") -> FFVModule:
        init = initial_vectors(init_kind, relations, d_model, seed, fv, base.vectors if base else None)
        m = FFVModule(relations, layer, init, fv if f.compare_fv or init_kind == "fv" else None,
                      lm_factory=factory, optimizer=optimizer, scheduler=scheduler,
                      scheduler_interval=cfg.optim.get("interval", "epoch"), lr_scale=lr_scale,
                      loss_target=f.loss.target, lam=float(f.loss["lambda"]), impl=f.impl,
                      template=template, val_modes=val_modes, test_modes=test_modes,
                      log_prefix=prefix, log_per_relation=bool(f.log_per_relation),
                      hparams={**hp_common, "init": init_kind, "variant": prefix.rstrip("/") or "ffv"})
        return m.attach_lm(lm)

    tracker = current_tracker()  # the run(s) this job logs to: the Trainers log into the same ones
    loggers = tracker.loggers if tracker is not None else instantiate_loggers(cfg)
    start_loggers(loggers)
    has_logger = bool(loggers)
    ckpt_dir = out / runs.CHECKPOINTS

    # -- fit the FFVs ----------------------------------------------------------------------
    times = {}
    base = None
    if baseline_names:
        from fvtrain.training.baselines import build_baselines

        t0 = time.time()
        base = build_baselines(lm, splits, baseline_names, template, seed, layer,
                               int(f.get("baseline_prompts") or cfg.extract.n_prompts), int(cfg.extract.n_shots),
                               int(cfg.extract.batch_size))
        times["baselines_s"] = time.time() - t0
    module = make_module(f.init)
    t0 = time.time()
    trainer = build_trainer(cfg, loggers, instantiate_callbacks(cfg, has_logger=has_logger, checkpoint_dir=ckpt_dir))
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=True)
    times["fit_s"] = time.time() - t0
    vectors = select(module, trainer, f.select)

    random_vectors, random_module = None, None
    if f.random_baseline:
        random_module = make_module("random", prefix="random/").share_from(module)
        rresume = resume.parent / "random" / "last.ckpt" if resume is not None else None
        t0 = time.time()
        rtrainer = build_trainer(cfg, loggers, instantiate_callbacks(cfg, variant="random", has_logger=has_logger,
                                                                  checkpoint_dir=ckpt_dir))
        rtrainer.fit(random_module, datamodule=dm,
                     ckpt_path=str(rresume) if rresume is not None and rresume.is_file() else None,
                     weights_only=True)
        times["fit_random_s"] = time.time() - t0
        random_vectors = select(random_module, rtrainer, f.select)

    soft = None
    if "soft_prompt" in _list(f.get("baselines")):
        from fvtrain.training.soft_prompt import fit_soft_prompt

        t0 = time.time()
        soft = fit_soft_prompt(cfg, lm, dm, splits, template, out, optimizer=optimizer, scheduler=scheduler,
                               factory=factory, loggers=loggers, resume=resume, hparams=hp_common,
                               select_fn=select)
        times["fit_soft_prompt_s"] = time.time() - t0

    # -- test: every method side by side ---------------------------------------------------
    with torch.no_grad():
        module.vectors.copy_(vectors.to(module.vectors))
    if random_vectors is not None:
        module.set_random_baseline(random_vectors)
    if base is not None:
        module.set_baselines({n: base.vectors[n] for n in _list(f.get("baselines")) if n in base.vectors})
    module.outcomes_file = str(out / runs.OUTCOMES)
    t0 = time.time()
    ttrainer = build_trainer(cfg, loggers, instantiate_callbacks(cfg, has_logger=has_logger, checkpoints=False))
    ttrainer.test(module, datamodule=dm, verbose=False)
    times["test_s"] = time.time() - t0
    bank = out / runs.BANK
    if ttrainer.global_rank != 0:
        return TrainResult("train", out, {}, bank=bank, layer=layer, fv_source=fv_folder)

    results = module.test_results or results_from_logged(ttrainer.callback_metrics, module, relations)
    metrics = collect_metrics(module, results, relations, test_modes, icl_reused, splits)
    if soft is not None:  # before the intervals: its outcomes join test_outcomes.json
        from fvtrain.training.soft_prompt import FOLDER, add_column

        add_column(metrics, out / runs.OUTCOMES, out / FOLDER / runs.OUTCOMES, relations)
        metrics["soft_prompt"] = soft
    if (out / runs.OUTCOMES).is_file() and any("correct" in v for v in icl_reused.values()):
        add_reused_icl(out / runs.OUTCOMES, icl_reused, relations)
    if (out / runs.OUTCOMES).is_file() and "zero_shot" in test_modes:
        from fvtrain.artifacts import read_json
        from fvtrain.training.metrics import completion_intervals

        metrics["zero_shot_acc"]["intervals"] = completion_intervals(
            read_json(out / runs.OUTCOMES)["outcomes"], relations, "zero_shot", seed)
    if f.get("eval_exact", False):
        metrics["zero_shot_exact"] = zero_shot_exact(module, lm, splits, template, int(f.eval_batch_size), seed)
    val = _best_val(module, relations)
    for r in relations:
        metrics["relations"][r]["val"] = val[r]
    times["total_s"] = time.time() - t_start
    metrics.update({
        "keys": METRIC_KEYS_DOC, "layer": layer, "init": f.init, "select": f.select,
        "loss_target": f.loss.target, "lambda": float(f.loss["lambda"]), "impl": f.impl,
        "epochs": int(trainer.current_epoch), "fv_source": str(fv_folder) if fv_folder else None,
        "lr_scale": lr_scale, "model": lm.describe(), "params": {"trainable": len(relations) * d_model, "frozen": frozen},
        "times": times,
    })
    if f.save_bank:
        sources = {r: rel.source for r, rel in ds.relations.items()}
        save_bank(bank, lm, relations, vectors, splits, template, cfg, layer, fv_manifests,
                  metrics, "ffv", val, sources)
        if random_vectors is not None:
            save_bank(out / runs.BANK_RANDOM, lm, relations, random_vectors, splits, template, cfg, layer,
                      fv_manifests, metrics, "ffv_random", _best_val(random_module, relations), sources)
    if base is not None:
        from fvtrain.training.baselines import FOLDER, save_baselines

        if "task_vector_replace" in _list(f.get("baselines")) and "zero_shot" in test_modes:
            t0 = time.time()
            add_replace_column(metrics, lm, splits, base, template, layer, int(f.eval_batch_size))
            times["replace_s"] = time.time() - t0
        save_baselines(out / FOLDER, base, lm, splits, template, seed, metrics)
        metrics["baselines"] = baseline_metrics(base)
    metrics = runs.write_metrics(out, "train", metrics)
    return TrainResult("train", out, metrics, bank=bank, layer=layer, fv_source=fv_folder)


def add_replace_column(metrics: dict, lm, splits, base, template, layer: int, batch_size: int) -> None:
    """The ``task_vector_replace`` column (Hendel's patching) in the zero-shot table, per relation
    and mean; scored outside the test loop (no bootstrap interval)."""
    from fvtrain.training.baselines import replace_scores

    name = "task_vector_replace"
    scores = replace_scores(lm, splits, base.vectors["task_vector"], layer, template, batch_size)
    table = metrics["zero_shot_acc"]
    at = table["methods"].index("icl") if "icl" in table["methods"] else len(table["methods"])
    table["methods"].insert(at, name)
    for r, sc in scores.items():
        sc = {k: (_f32(v) if k != "n" and v is not None else v) for k, v in sc.items()}
        metrics["relations"][r]["zero_shot"][name] = sc
        table["relations"][r][name] = sc["acc"]
    for key, stat in (("zero_shot", "acc"), ("zero_shot_prob", "prob")):
        metrics["mean"][key][name] = _mean([metrics["relations"][r]["zero_shot"][name][stat] for r in splits])
    table["mean"][name] = metrics["mean"]["zero_shot"][name]


def baselines_needed(f) -> list[str]:
    """Baselines to build: those of ``ffv.baselines``, and ``ffv.init`` when it is one."""
    from fvtrain.training.baselines import BASELINES

    names = [n for n in _list(f.get("baselines")) if n != "soft_prompt"]  # trained, not built
    return list(dict.fromkeys(names + ([f.init] if f.init in BASELINES else [])))


def baseline_metrics(base) -> dict:
    """What metrics.json says about the baseline vectors (their accuracies are in the test table)."""
    return {
        "about": "task_vector: mean block-`layer` output at the last token of clean ICL prompts; mean_diff: "
                 "that minus the mean over the matching zero-shot prompts; random_rms: a random direction "
                 "with the norm of the residual stream (residual_norm). All are added at the last prompt "
                 "token like the FV; vectors in baselines/<name>/<relation>.safetensors",
        "names": list(base.vectors), "n_prompts": base.n_prompts, "n_shots": base.n_shots,
        "residual_norm": {r: float(base.residual_norm[i]) for i, r in enumerate(base.relations)},
        "norm": {n: {r: float(v[i].norm()) for i, r in enumerate(base.relations)} for n, v in base.vectors.items()},
    }


def exact_rows(module, splits: dict, template) -> tuple[list[str], list[list[str]], list[str], dict]:
    """Every relation's zero-shot test prompts in one list, with their answers, relations and each
    method's vector repeated per prompt (``None`` for ``none``): one greedy pass then decodes all
    methods of a chunk of prompts together (:func:`~fvtrain.evaluation.relation.exact_match_methods`)."""
    from fvtrain.prompts import zero_shot

    prompts: list[str] = []
    answers: list[list[str]] = []
    groups: list[str] = []
    rows: dict[str, list[torch.Tensor]] = {m: [] for m in module.methods()}
    for i, r in enumerate(module.relations):
        test = splits[r].test
        if not test:
            continue
        prompts += [zero_shot(template, p.x) for p in test]
        answers += [list(p.answers) for p in test]
        groups += [r] * len(test)
        names, vecs = module.method_vectors(torch.tensor([i]))
        for j, m in enumerate(names):
            if m != "none":
                rows[m].append(vecs[j].detach().float().cpu().expand(len(test), -1))
    vectors = {m: torch.cat(rows[m]) if rows[m] else None for m in rows}
    return prompts, answers, groups, vectors


def zero_shot_exact(module, lm, splits: dict, template, batch_size: int, seed: int) -> dict:
    """Exact match of the whole answer on every relation's zero-shot test prompts, per test method.

    Greedy decoding with the method's vector at the prompt's last position, compared up to the end
    of the line with every accepted answer (:func:`fvtrain.evaluation.relation.exact_match`). It
    sits beside ``zero_shot_acc`` (first token), which answers sharing a first token can inflate.
    Returns ``{"methods", "relations": {r: {m: acc}}, "mean": {m: acc}, "acc_ci": {m: [lo, hi]},
    "differences", "n", "first_token_degeneracy", "seconds"}``; means are over relations, as in
    ``zero_shot_acc``, with stratified bootstrap intervals (:mod:`fvtrain.evaluation.stats`).
    """
    from fvtrain.evaluation import stats
    from fvtrain.evaluation.relation import exact_match_methods, first_token_degeneracy, warn_if_degenerate

    t0 = time.time()
    methods = module.methods()
    prompts, every_answer, groups, vectors = exact_rows(module, splits, template)
    # Only the outcomes are kept, so a row stops once it can no longer match (same outcomes).
    ems = exact_match_methods(lm, prompts, every_answer, vectors, module.layer, batch_size=batch_size,
                              template=template, stop_on_mismatch=True)
    cols = {m: ems[m].correct if groups else torch.zeros(0) for m in methods}
    per: dict[str, dict] = {}
    for r in dict.fromkeys(groups):
        at = torch.tensor([g == r for g in groups])
        per[r] = {m: float(cols[m][at].mean()) for m in methods}
    pairs = [(a, "ffv") for a in methods if a != "ffv"]
    cmp = stats.compare(cols, groups, pairs, seed=seed)
    degeneracy = first_token_degeneracy(lm.tokenizer, every_answer, template)
    warn_if_degenerate(degeneracy, "zero-shot relation completion", log)
    return {"methods": methods, "relations": per,
            "mean": {m: cmp["methods"][m]["acc"] if groups else None for m in methods},
            "acc_ci": {m: cmp["methods"][m]["acc_ci"] for m in methods},
            "differences": cmp["differences"], "n": len(groups), "bootstrap": cmp["bootstrap"],
            "first_token_degeneracy": degeneracy, "seconds": time.time() - t0}


def _best_val(module, relations) -> dict:
    acc, prob = module.best_val
    return {r: {"acc": float(acc[i]), "prob": float(prob[i]), "best_epoch": int(module.best_epoch[i])}
            for i, r in enumerate(relations)}


def residual_scale(lm, splits, template, layer: int, n: int = 64) -> float:
    """RMS per coordinate of the residual stream where vectors are added (block ``layer``'s output
    at the last token of zero-shot train prompts): the unit of ``ffv.lr_scale=rms``."""
    from fvtrain.prompts import make_batch, zero_shot

    pairs = [p for s in splits.values() for p in s.train]
    pairs = pairs[:: max(1, len(pairs) // n)][:n]
    norms = []
    for i in range(0, len(pairs), 32):
        chunk = pairs[i: i + 32]
        b = make_batch(lm.tokenizer, [zero_shot(template, p.x) for p in chunk], [p.answers for p in chunk],
                       template)
        norms.append(lm.residual_norm(b.prompt_ids, b.prompt_mask, layer))
    return float(torch.cat(norms).mean()) / lm.d_model ** 0.5


def select(module, trainer, how: str) -> torch.Tensor:
    """Per-relation best validation epoch, the checkpoint with the best mean, or the last epoch."""
    if how == "best":
        cb = trainer.checkpoint_callback
        path = getattr(cb, "best_model_path", "") if cb is not None else ""
        if not path:
            log.warning("ffv.select=best but no best checkpoint was kept; using the last vectors")
            return module.vectors.detach().cpu().clone()
        return load_checkpoint(Path(path))["state_dict"]["vectors"].float().clone()
    return module.selected_vectors(how)


def extract_fvs(cfg, lm, splits, template, seed, layer, out):
    """FVs of every relation (train split only), saved as an extraction run under ``extraction/``."""
    from fvtrain.console import progress
    from fvtrain.extraction.job import extract_relation, save_extracted

    folder = out / runs.EXTRACTION
    vecs, mans = [], {}
    log.info("extracting function vectors at layer %d for %d relation(s)", layer, len(splits))
    with progress() as bar:
        task = bar.add_task("extraction", total=len(splits))
        for name, split in splits.items():
            ex = extract_relation(lm, split, cfg.extract, template, seed, layer, progress=bar)
            ex.metrics = {"layer": layer, "heads": [[l, h, a] for l, h, a in ex.heads]}
            save_extracted(folder, lm, ex, split, template, cfg.extract, seed)
            v, man = runs.read_vector(folder / runs.VECTORS / f"{name}.safetensors")
            vecs.append(v)
            mans[name] = man
            bar.advance(task)
    return torch.stack(vecs), mans, folder / runs.VECTORS


def reusable_icl(manifests: dict, hashes: dict, template, seed: int, n_shots: int) -> dict:
    """Clean-ICL test numbers of an extraction run measured on exactly this run's test prompts."""
    out = {}
    for r, man in manifests.items():
        icl = (man.get("metrics") or {}).get("icl")
        if (icl and man.get("split_hash") == hashes.get(r) and man.get("template") == template.template
                and man.get("seed") == seed and int(man.get("n_shots", -1)) == n_shots):
            out[r] = {"acc": icl.get("acc"), "prob": icl.get("prob"), "n": icl.get("n"),
                      "source": "extraction"}
            if icl.get("correct") is not None:  # per-item outcomes, in test-split order
                out[r]["correct"] = list(icl["correct"])
    return out


def add_reused_icl(path: Path, icl_reused: dict, relations: list[str]) -> None:
    """Put the extraction's per-item ICL outcomes into ``test_outcomes.json`` (keys as the test
    loop's: the pair's position in the test split), so ICL gets intervals and paired differences."""
    from fvtrain.artifacts import read_json, write_json
    from fvtrain.training.metrics import ITEM_STRIDE

    data = read_json(path)
    o = data["outcomes"].setdefault("icl", {"key": [], "correct": []})
    for i, r in enumerate(relations):
        for j, c in enumerate((icl_reused.get(r) or {}).get("correct") or []):
            o["key"].append(i * ITEM_STRIDE + j)
            o["correct"].append(float(c))
    order = sorted(range(len(o["key"])), key=o["key"].__getitem__)
    o["key"], o["correct"] = [o["key"][k] for k in order], [o["correct"][k] for k in order]
    if o["key"]:
        write_json(path, data)


def _f32(x: float) -> float:
    # Logged metrics are float32; metrics.json keeps that precision so that numbers written by
    # earlier versions (read back from the logger) and by this one are the same.
    return float(torch.tensor(float(x), dtype=torch.float32))


def _mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return sum(xs) / len(xs) if xs else None


def results_from_logged(logged: dict, module, relations) -> dict[str, dict[str, torch.Tensor]]:
    """The module's ``test_results`` rebuilt from the logged values: under ``ddp_spawn`` the test
    loop runs in other processes, and Lightning sends only the logged metrics back."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    keys = [f"{mode}/{m}" for mode in ("zero_shot", "shuffled_icl") for m in module.methods()] + ["icl"]
    for key in keys:
        prefix = f"test/{key}"
        counts = [logged.get(f"{prefix}/n/{r}") for r in relations]
        if key != "icl":  # counts are logged with the FFV rows; every method saw the same prompts
            counts = [logged.get(f"test/{key.split('/')[0]}/ffv/n/{r}") for r in relations]
        if all(c is None for c in counts):
            continue
        nan = float("nan")
        out[key] = {
            "acc": torch.tensor([float(logged.get(f"{prefix}/acc/{r}", nan)) for r in relations]),
            "prob": torch.tensor([float(logged.get(f"{prefix}/prob/{r}", nan)) for r in relations]),
            "count": torch.tensor([float(c) if c is not None else 0.0 for c in counts]),
        }
    return out


def collect_metrics(module, res: dict, relations, test_modes, icl_reused, splits) -> dict:
    """The test table from the test loop's results (:attr:`FFVModule.test_results`): per relation,
    per mode and method."""
    methods = module.methods()

    def value(key: str, stat: str, i: int):
        r = res.get(key)
        if r is None or not float(r["count"][i]) > 0 or math.isnan(float(r[stat][i])):
            return None
        return _f32(r[stat][i])

    per: dict[str, dict] = {}
    for i, r in enumerate(relations):
        entry: dict[str, Any] = {}
        for mode in test_modes:
            counts = res.get(f"{mode}/ffv")
            n = None if counts is None else float(counts["count"][i])
            entry[mode] = {m: {"acc": value(f"{mode}/{m}", "acc", i), "prob": value(f"{mode}/{m}", "prob", i),
                               "n": None if n is None else int(n)} for m in methods}
        if r in icl_reused:
            entry["icl"] = dict(icl_reused[r])
        elif value("icl", "count", i) is not None:
            entry["icl"] = {"acc": value("icl", "acc", i), "prob": value("icl", "prob", i),
                            "n": int(value("icl", "count", i)), "source": "test"}
        entry["n_test"] = len(splits[r].test)
        per[r] = entry

    means: dict[str, Any] = {"n_relations": len(relations)}
    for mode in test_modes:
        means[mode] = {m: _mean([per[r][mode][m]["acc"] for r in relations]) for m in methods}
        means[f"{mode}_prob"] = {m: _mean([per[r][mode][m]["prob"] for r in relations]) for m in methods}
    if any("icl" in per[r] for r in relations):
        means["icl"] = _mean([per[r].get("icl", {}).get("acc") for r in relations])
    table_methods = methods + (["icl"] if "icl" in means else [])

    def row(r):
        zs = per[r].get("zero_shot", {})
        d = {m: zs[m]["acc"] for m in methods if m in zs}
        if "icl" in per[r]:
            d["icl"] = per[r]["icl"]["acc"]
        return d

    table = {"methods": table_methods, "relations": {r: row(r) for r in relations}}
    table["mean"] = {m: _mean([table["relations"][r].get(m) for r in relations]) for m in table_methods}
    return {"zero_shot_acc": table, "relations": per, "mean": means}


def save_bank(folder: Path, lm, relations, vectors, splits, template, cfg, layer, fv_manifests,
              metrics, kind, val, sources: dict | None = None) -> None:
    from fvtrain.artifacts import save_vector
    from fvtrain.data.splits import split_hash

    f = cfg.ffv
    for i, r in enumerate(relations):
        fvm = fv_manifests.get(r, {})
        test = {k: v for k, v in metrics["relations"][r].items() if k != "val"}
        man = {
            "kind": kind, "relation": r, "model_id": lm.model_id, "model_revision": lm.source.revision,
            "model_type": lm.model_type, "n_layers": lm.n_layers, "layer": layer,
            "heads": fvm.get("heads", []), "k": fvm.get("k"), "template": template.template,
            "n_shots": int(f.n_shots), "split_hash": split_hash(splits[r]), "seed": int(cfg.seed),
            "init": "random" if kind == "ffv_random" else f.init, "fv_norm": fvm.get("norm"),
            "loss_target": f.loss.target, "lambda": float(f.loss["lambda"]),
            "train_modes": _list(f.train_modes), "select": f.select,
            "best_epoch": val[r]["best_epoch"], "metrics": {"val": val[r], "test": test},
            "source": (sources or {}).get(r, {}),  # where the relation's pairs come from (data.sources: each)
            "fvtrain_version": __version__,
        }
        save_vector(folder, r, vectors[i], man)
