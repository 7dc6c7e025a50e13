"""Lightning Trainer, loggers and callbacks from the config (``trainer/``, ``logger/``, ``callbacks/``)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from omegaconf import DictConfig


def instantiate_loggers(cfg: DictConfig) -> list:
    """Every node of ``cfg.logger`` with a ``_target_`` (``logger=[csv,wandb]`` gives several)."""
    from hydra.utils import instantiate

    node = cfg.get("logger")
    if not node:
        return []
    return [instantiate(sub) for sub in node.values() if isinstance(sub, DictConfig) and "_target_" in sub]


def instantiate_callbacks(cfg: DictConfig, variant: str = "", has_logger: bool = True,
                          checkpoints: bool = True, checkpoint_dir: Path | None = None) -> list:
    """Callbacks of ``cfg.callbacks``; for a second variant checkpoints go to a subfolder and
    monitored keys get the variant's log prefix. ``checkpoints=False`` leaves checkpointing out
    (the test loop). ``checkpoint_dir`` (the run's ``checkpoints/``) replaces every ``dirpath``:
    the stage's run folder, not Hydra's, holds its checkpoints (the main job runs several stages
    in one Hydra folder)."""
    from hydra.utils import instantiate
    from lightning.pytorch.callbacks import Checkpoint, LearningRateMonitor

    node = cfg.get("callbacks")
    if not node:
        return []
    out = []
    for sub in node.values():
        if not (isinstance(sub, DictConfig) and "_target_" in sub):
            continue
        kw: dict[str, Any] = {}
        if "dirpath" in sub and checkpoint_dir is not None:
            kw["dirpath"] = str(Path(checkpoint_dir) / variant if variant else Path(checkpoint_dir))
        if variant:
            if sub.get("dirpath") and "dirpath" not in kw:
                kw["dirpath"] = str(Path(sub.dirpath) / variant)
            if sub.get("monitor"):
                kw["monitor"] = f"{variant}/{sub.monitor}"
        cb = instantiate(sub, **kw)
        if isinstance(cb, LearningRateMonitor) and not has_logger:
            continue  # it refuses to run without a logger
        if isinstance(cb, Checkpoint) and not checkpoints:
            continue
        out.append(cb)
    return out


def build_trainer(cfg: DictConfig, loggers: list, callbacks: list, **overrides):
    from hydra.utils import instantiate

    from fvtrain.training.callbacks import AtomicCheckpointIO

    kw = dict(logger=loggers if loggers else False, callbacks=callbacks, use_distributed_sampler=False,
              plugins=[AtomicCheckpointIO()])
    kw.update(overrides)
    return instantiate(cfg.trainer, **kw)


def start_loggers(loggers: list) -> None:
    """Start wandb in this process so that spawned ranks attach to the same run."""
    from lightning.pytorch.loggers import WandbLogger

    for lg in loggers:
        if isinstance(lg, WandbLogger):
            _ = lg.experiment


class _NoTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "Tip:" not in str(record.msg)


def tidy_lightning_logging() -> None:
    """One copy of each Lightning message, in Hydra's format (console and the job's log file),
    without the advertising tips."""
    if logging.getLogger().hasHandlers():
        for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
            lg = logging.getLogger(name)
            for h in list(lg.handlers):
                if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler):
                    lg.removeHandler(h)
            lg.propagate = True
    for name in ("lightning.pytorch", "lightning.pytorch.utilities.rank_zero", "lightning.fabric"):
        logging.getLogger(name).addFilter(_NoTips())


def finish_wandb() -> None:
    """End the wandb run of this job (multirun jobs must not share one)."""
    wandb = sys.modules.get("wandb")
    if wandb is not None and getattr(wandb, "run", None) is not None:
        wandb.finish()
