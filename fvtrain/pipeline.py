"""``fvtrain``: the whole study in one command.

    fvtrain                                   # embedded model, built-in relations and analogies
    fvtrain model=meta-llama/Llama-3.2-1B model.device=cuda trainer=ddp    # on GPUs
    fvtrain judgments.path=../shared/data/relsim_chen2017/relsim data.path=../shared/data/semeval2012_task2

Stages, each in its own subfolder of the run folder: ``extract/`` (FVs by causal mediation),
``train/`` (FFVs; ``train/bank/`` is the basis bank), ``compose/`` (CFVs and analogies),
``eval/`` (logit-lens decoding, and alignment when ``judgments.path`` is set), then ``report.md``
with figures and ``metrics.csv`` at the top of the run folder. ``stages=[...]`` runs a subset.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from omegaconf import DictConfig, open_dict, read_write

from fvtrain import cli

log = logging.getLogger("fvtrain.pipeline")
STAGES = ("extract", "train", "compose", "eval", "report")


@contextmanager
def stage_folder(out: Path) -> Iterator[Path]:
    """Point the Hydra run folder at ``out`` while one stage runs (stages read it from Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    before = hc.runtime.output_dir
    out.mkdir(parents=True, exist_ok=True)
    with read_write(hc), open_dict(hc):
        hc.runtime.output_dir = str(out)
    try:
        yield out
    finally:
        with read_write(hc), open_dict(hc):
            hc.runtime.output_dir = before


def _check(cfg: DictConfig) -> list[str]:
    stages = [str(s) for s in cfg.stages]
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        raise cli.ConfigError(f"unknown stage(s) {unknown}; choose from {list(STAGES)}")
    return [s for s in STAGES if s in stages]


def pipeline(cfg: DictConfig) -> dict:
    """Run the configured stages in order; returns ``{stage: metrics}`` and per-stage times."""
    from fvtrain.compose import compose
    from fvtrain.evaluate import evaluate
    from fvtrain.extract import extract
    from fvtrain.train import train

    out = cli.output_dir()
    stages = _check(cfg)
    cli.save_resolved_config(cfg, out)
    results: dict = {}
    times: dict[str, float] = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        log.info("stage %s -> %s", name, out / name)
        results[name] = fn()
        times[name] = time.perf_counter() - t0

    if "extract" in stages:
        with stage_folder(out / "extract") as f:
            timed("extract", lambda: extract(cfg, f))
    if "train" in stages:
        with open_dict(cfg):
            if (out / "extract").is_dir():
                cfg.ffv.fv_run = str(out / "extract")
        with stage_folder(out / "train"):
            timed("train", lambda: train(cfg))
    if "compose" in stages:
        with open_dict(cfg):
            if cfg.basis.path is None:
                cfg.basis.path = str(out / "train")
        with stage_folder(out / "compose"):
            timed("compose", lambda: compose(cfg))
    if "eval" in stages:
        with open_dict(cfg):
            if cfg.vectors.fv is None and (out / "extract").is_dir():
                cfg.vectors.fv = str(out / "extract")
            if cfg.vectors.ffv is None and (out / "train").is_dir():
                cfg.vectors.ffv = str(out / "train")
        with stage_folder(out / "eval") as f:
            timed("eval", lambda: evaluate(cfg, f))
    from fvtrain.artifacts import write_json

    def record() -> None:
        write_json(out / "pipeline.json", {"stages": stages, "seconds": times,
                                           "folders": {s: str(out / s) for s in stages if s != "report"}})

    if "report" in stages:
        from fvtrain.evaluation.report import build_report

        record()  # the report reads the stages and their times from it
        t0 = time.perf_counter()
        rep = build_report(out, None, False)
        times["report"] = time.perf_counter() - t0
        results["report"] = str(rep.report_md)
    record()
    _summary(results, times)
    if "report" in results:
        print(f"report: {results['report']}")
    return {"results": results, "seconds": times}


def _summary(results: dict, times: dict) -> None:
    """The closing tables: relation completion by method, analogies by scheme and distance."""
    tr = results.get("train")
    if tr and "zero_shot_acc" in tr:
        table = tr["zero_shot_acc"]
        cols = list(table["methods"])
        rows = [[name, *[_acc(r.get(m)) for m in cols]] for name, r in table["relations"].items()]
        mean = tr.get("mean", {})
        rows.append(["mean", *[_acc(mean.get("zero_shot", {}).get(m, mean.get(m))) for m in cols]])
        cli.print_table("Relation completion, zero-shot test accuracy", ["relation", *cols], rows)
    co = results.get("compose")
    if co and "methods" in co:
        rows = []
        for name, m in co["methods"].items():
            rows.append([name, *[_acc(m.get(k, {}).get(d)) for k in ("open", "mc") for d in ("near", "far")]])
        cli.print_table("Analogies (accuracy)", ["method", "open near", "open far", "MC near", "MC far"], rows)
    if times:
        cli.print_table("Stage times", ["stage", "seconds"], [[k, v] for k, v in times.items()])


def _acc(v) -> float | str:
    if isinstance(v, dict):
        v = v.get("acc", v.get("all"))
    return float(v) if isinstance(v, (int, float)) else "-"


def main() -> None:
    cli.run("pipeline", pipeline)


if __name__ == "__main__":
    main()
