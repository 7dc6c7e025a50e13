"""``fvtrain-train``: fine-tune function vectors (FFVs) with the language model frozen.

    fvtrain-train                                         # embedded model, FVs extracted first
    fvtrain-train ffv.fv_run=outputs/extract/2026-01-01/12-00-00 ffv.random_baseline=true
    fvtrain-train ffv.init=zeros ffv.loss.target=full optim.optimizer.lr=0.02 trainer.max_epochs=20
    fvtrain-train model=tiny-llama trainer=ddp_sim logger=[csv,tensorboard]
    fvtrain-train hydra.run.dir=outputs/train/my-run ckpt_path=last   # resume an interrupted run
    fvtrain-train data.cv_folds=5     # every pair tested once, by vectors trained on the other folds

Writes to the run folder: ``metrics.json`` (test table, per relation and mean), ``bank/<relation>
.safetensors`` + ``.json`` (the basis bank composition reads), ``bank_random/`` (the random-init
baseline, when requested), ``checkpoints/`` (vectors + optimiser state only; ``last.ckpt`` and the
best epoch), ``extraction/`` (when FVs were extracted here), ``splits.json``, ``config.yaml`` and
the logger folders (``csv/``, ``tensorboard/``, ``wandb/``). With ``data.cv_folds=k`` each fold is
such a run in ``fold_<i>/`` and the top folder holds the merged ``metrics.json`` and
``test_outcomes.json``.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fvtrain import cli


def train(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run FFV training for ``cfg`` (a composed ``train.yaml``); prints its tables, returns the metrics."""
    from fvtrain.runtime import LazyModel
    from fvtrain.training import job, tables
    from fvtrain.training.trainer import finish_wandb

    out = Path(out) if out is not None else Path(cfg.paths.output_dir)
    cli.pin_run_dir(out)
    try:
        if cfg.data.get("cv_folds"):
            from fvtrain.training import cv

            result = cv.run(cfg, out, LazyModel(cfg.model))
        else:
            result = job.run(cfg, out, LazyModel(cfg.model))
    finally:
        finish_wandb()
    if result.metrics:  # empty on DDP ranks other than 0
        for t in tables.tables(result.metrics):
            t.print()
        print(f"run folder: {result.out}")
    return result.metrics


def main() -> None:
    cli.run("train", train)


if __name__ == "__main__":
    main()
