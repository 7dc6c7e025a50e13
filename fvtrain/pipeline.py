"""``fvtrain``: the whole study in one command.

    fvtrain                                   # embedded model, built-in relations and analogies
    fvtrain model=meta-llama/Llama-3.2-1B model.device=cuda trainer=ddp    # on GPUs
    fvtrain judgments.path=../shared/data/relsim_chen2017/relsim data.path=../shared/data/semeval2012_task2

Stages, each in its own subfolder of the run folder: ``extract/`` (FVs by causal mediation),
``train/`` (FFVs; ``train/bank/`` is the basis bank), ``compose/`` (CFVs and analogies),
``eval/`` (logit-lens decoding, and alignment when ``judgments.path`` is set), then ``report.md``
with figures and ``metrics.csv`` at the top of the run folder. ``stages=[...]`` runs a subset; a
stage that is not run but whose folder exists (an earlier run into the same folder) is used as input.
The model is loaded once, by the first stage that needs it.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig

from fvtrain import cli

log = logging.getLogger("fvtrain.pipeline")
STAGES = ("extract", "train", "compose", "eval", "report")


def check_stages(cfg: DictConfig) -> list[str]:
    stages = [str(s) for s in cfg.stages]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise cli.ConfigError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def pipeline(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run the configured stages in order; returns ``{"results": {stage: metrics}, "seconds": ...}``."""
    from fvtrain import runs

    from fvtrain.preflight import check_config

    out = Path(out) if out is not None else cli.output_dir()
    stages = check_stages(cfg)
    check_config(cfg)  # every stage's settings, before the first stage loads any weights
    if cfg.data.get("cv_folds"):
        raise cli.ConfigError("data.cv_folds is an evaluation of fvtrain-train (one bank per fold); the "
                              "main job composes one bank: run fvtrain-train data.cv_folds=... instead")
    from fvtrain.tracking import label, scope

    # One logger group for the whole job (its run folder), one run per stage (out/<stage>/).
    with runs.claim(out, resume=runs.resuming(cfg)), scope(group=label(out, cfg.paths.output_root), name="{stage}"):
        return _run(cfg, out, stages)


def _run(cfg: DictConfig, out: Path, stages: list[str]) -> dict:
    from fvtrain import runs
    from fvtrain.artifacts import write_json
    from fvtrain.composition import job as compose_job
    from fvtrain.evaluation import job as eval_job
    from fvtrain.extraction import job as extract_job
    from fvtrain.runtime import LazyModel
    from fvtrain.training import job as train_job
    from fvtrain.training.trainer import finish_wandb

    runs.save_config(cfg, out)
    cli.pin_run_dir(out)
    lm = LazyModel(cfg.model)
    results: dict[str, Any] = {}
    times: dict[str, float] = {}

    def timed(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        log.info("stage %s -> %s", name, out / name)
        results[name] = fn()
        times[name] = time.perf_counter() - t0

    def existing(stage: str) -> Path | None:
        """The folder of ``stage``: this run's result, or one left by an earlier run."""
        if stage in results:
            return results[stage].out
        return out / stage if (out / stage).is_dir() else None

    if "extract" in stages:
        timed("extract", lambda: extract_job.run(cfg, out / "extract", lm))
    if "train" in stages:
        def train():
            try:
                return train_job.run(cfg, out / "train", lm, fv_source=existing("extract"))
            finally:
                finish_wandb()
        timed("train", train)
    if "compose" in stages:
        basis = cfg.basis.path if cfg.basis.path is not None else existing("train")
        timed("compose", lambda: compose_job.run(cfg, out / "compose", lm, basis=basis))
    if "eval" in stages:
        vectors = {"fv": cfg.vectors.fv or existing("extract"), "ffv": cfg.vectors.ffv or existing("train")}
        timed("eval", lambda: eval_job.run(cfg, out / "eval", lm, vectors={k: v for k, v in vectors.items() if v}))

    def record() -> None:
        write_json(out / runs.PIPELINE, {"stages": stages, "seconds": times,
                                         "folders": {s: str(out / s) for s in stages if s != "report"}})

    report = None
    if "report" in stages:
        from fvtrain.reporting.report import build_report

        record()  # the report reads the stages and their times from it
        t0 = time.perf_counter()
        report = build_report(out, None, False)
        times["report"] = time.perf_counter() - t0
    record()
    summary(results, times)
    if report is not None:
        print(f"report: {report.report_md}")
    metrics = {name: r.metrics for name, r in results.items()}
    if report is not None:
        metrics["report"] = str(report.report_md)
    return {"results": metrics, "seconds": times, "model_loads": lm.loads}


def summary(results: dict, times: dict) -> None:
    """The closing tables: relation completion by method, analogies by scheme and distance."""
    from fvtrain.composition.tables import analogy_table
    from fvtrain.composition.tables import exact_table as analogy_exact
    from fvtrain.console import print_table
    from fvtrain.training.tables import completion_table
    from fvtrain.training.tables import exact_table as training_exact

    if "train" in results and results["train"].metrics:
        completion_table(results["train"].metrics, "Relation completion, zero-shot test accuracy").print()
        _print_if(training_exact(results["train"].metrics))
    if "compose" in results:
        analogy_table(results["compose"].metrics).print()
        _print_if(analogy_exact(results["compose"].metrics))
    if times:
        print_table("Stage times", ["stage", "seconds"], [[k, v] for k, v in times.items()])


def _print_if(table) -> None:
    if table is not None:
        table.print()


def main() -> None:
    cli.run("pipeline", pipeline)


if __name__ == "__main__":
    main()
