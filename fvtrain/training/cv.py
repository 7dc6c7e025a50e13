"""k-fold cross-validated FFV evaluation (``fvtrain-train data.cv_folds=k``).

With ``n_train=20`` a relation of 25 pairs keeps two or three test pairs, so its accuracy can only
read 0, 0.5 or 1. Cross-validation tests every pair exactly once instead: fold ``i`` holds out every
k-th pair of the seeded order (:func:`fvtrain.data.splits.cv_split`) and trains, on the others, the
FVs (extracted inside the fold, so they never see its test pairs), the FFVs and every baseline. Each
fold is an ordinary training run in ``out/fold_<i>/``; this module merges their per-item test
outcomes into one table (a pair's key is its position in the seeded order, so keys never collide)
with bootstrap intervals. A fold that finished before an interruption is reused, not rerun.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from fvtrain import runs
from fvtrain.artifacts import read_json, write_json
from fvtrain.errors import ConfigError
from fvtrain.runtime import ModelLike

log = logging.getLogger(__name__)

FOLD = "fold_{}"


def fold_config(cfg: DictConfig, fold: int) -> DictConfig:
    """The config of one fold: the same run with ``data.cv_fold`` set. ICL is measured in the test
    loop (not reused from the extraction's manifests) so that it is paired item by item too."""
    c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(c):
        c.data.cv_fold = fold
        c.ffv.icl_from_extraction = False
        c.ckpt_path = None
    return c


@runs.owns_folder
def run(cfg: DictConfig, out: Path, lm: ModelLike):
    """Every fold of ``cfg.data.cv_folds`` into ``out/fold_<i>/``, then the merged table into
    ``out/metrics.json`` and ``out/test_outcomes.json``."""
    from fvtrain.preflight import check_config
    from fvtrain.training import job
    from fvtrain.training.metrics import ITEM_STRIDE

    check_config(cfg)
    k = int(cfg.data.cv_folds)
    if k < 2:
        raise ConfigError(f"data.cv_folds={k}: cross-validation needs at least 2 folds")
    if cfg.data.get("cv_fold") is not None:
        raise ConfigError("data.cv_fold is set: fvtrain-train runs every fold of data.cv_folds itself "
                          "(leave data.cv_fold=null), or drop data.cv_folds for a single split")
    if cfg.ffv.get("fv_run"):
        raise ConfigError("ffv.fv_run cannot be used with data.cv_folds: FVs extracted on another split "
                          "saw this fold's test pairs; leave ffv.fv_run=null and each fold extracts its own")
    out.mkdir(parents=True, exist_ok=True)
    runs.save_config(cfg, out)
    merged: dict[str, dict[str, list]] = {}
    relations: list[str] | None = None
    folds = []
    for i in range(k):
        folder = out / FOLD.format(i)
        if (folder / runs.METRICS).is_file() and (folder / runs.OUTCOMES).is_file():
            log.info("fold %d of %d: finished before, reused (%s)", i + 1, k, folder)
        else:
            log.info("fold %d of %d", i + 1, k)
            res = job.run(fold_config(cfg, i), folder, lm)
            if not res.metrics:  # a DDP rank other than 0
                return res
        data = read_json(folder / runs.OUTCOMES)
        relations = relations or list(data["relations"])
        if list(data["relations"]) != relations:
            raise RuntimeError(f"{folder}: relations {data['relations']} differ from fold 0's {relations}")
        for name, o in data["outcomes"].items():
            m = merged.setdefault(name, {"key": [], "correct": []})
            for key, c in zip(o["key"], o["correct"]):
                r, j = divmod(int(key), ITEM_STRIDE)
                m["key"].append(r * ITEM_STRIDE + i + j * k)  # the pair's position in the seeded order
                m["correct"].append(float(c))
        folds.append(runs.read_metrics(folder))
    for o in merged.values():
        order = sorted(range(len(o["key"])), key=o["key"].__getitem__)
        o["key"] = [o["key"][j] for j in order]
        o["correct"] = [o["correct"][j] for j in order]
    write_json(out / runs.OUTCOMES, {"relations": relations, "key": "relation_index * 1e6 + position in "
                                     "the seeded order", "folds": k, "outcomes": merged})
    metrics = merge_metrics(merged, relations or [], folds, k, int(cfg.seed))
    metrics = runs.write_metrics(out, "train", metrics)
    return job.TrainResult("train", out, metrics, bank=out / FOLD.format(0) / runs.BANK,
                           layer=int(metrics["layer"]))


def merge_metrics(outcomes: dict, relations: list[str], folds: list[dict], k: int, seed: int) -> dict:
    """The zero-shot test table over all folds: per relation and method, the share of its pairs
    answered correctly (each pair tested once), their mean, intervals and paired differences."""
    import torch

    from fvtrain.evaluation import stats
    from fvtrain.training.metrics import ITEM_STRIDE, completion_intervals

    methods = [m for m in folds[0]["zero_shot_acc"]["methods"]
               if (f"zero_shot/{m}" in outcomes or (m == "icl" and "icl" in outcomes))]
    per: dict[str, dict] = {r: {} for r in relations}
    n_pairs: dict[str, int] = {}
    for m in methods:
        o = outcomes["icl" if m == "icl" else f"zero_shot/{m}"]
        keys = torch.tensor(o["key"], dtype=torch.long)
        vals = torch.tensor(o["correct"], dtype=torch.float64)
        for i, r in enumerate(relations):
            sel = keys // ITEM_STRIDE == i
            if bool(sel.any()):
                per[r][m] = float(vals[sel].mean())
                n_pairs[r] = int(sel.sum())
    table = {"methods": methods, "relations": per,
             "mean": {m: stats.macro_mean([per[r][m] for r in relations if m in per[r]]) for m in methods},
             "intervals": completion_intervals(outcomes, relations, "zero_shot", seed)}
    layers = sorted({f.get("layer") for f in folds})
    return {"zero_shot_acc": table, "cv": {"folds": k, "pairs_tested": n_pairs,
                                           "fold_folders": [FOLD.format(i) for i in range(k)]},
            "layer": layers[0], "layers_of_folds": layers,
            "relations": {r: {"n_test": n_pairs.get(r, 0)} for r in relations},
            "mean": {"n_relations": len(relations), "zero_shot": dict(table["mean"])},
            "times": {"folds_total_s": sum(f.get("times", {}).get("total_s", 0.0) for f in folds)}}
