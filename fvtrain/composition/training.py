"""Training analogies for the affine combiner, and its fit (the data: :class:`fvtrain.data.datamodules.AnalogyDataModule`).

Training analogies come from (in this order of preference)

1. a user file (``analogies.train_path``, any analogy format the data layer reads);
2. items of the evaluation file marked ``split: train`` (e.g. RelBERT's layout);
3. the basis relations' own *train* pairs: ``(A, B), (C, D)`` of one relation with ``A != C``.
   The train split is the one the basis vectors were made from: the run's ``splits.json`` when it
   is there, else re-derived from the data with the vectors' seed (and checked against the split
   hash in their manifests), so the evaluation analogies stay unseen.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Mapping, Sequence

import torch
from omegaconf import DictConfig

from fvtrain import runs
from fvtrain.composition.bank import BasisBank
from fvtrain.data.datamodules import AnalogyDataModule
from fvtrain.data.splits import Split, load_splits, split_hash, split_relation
from fvtrain.data.types import AnalogyItem, DataSet, Pair

log = logging.getLogger(__name__)


def find_splits_file(bank: BasisBank) -> Path | None:
    """``splits.json`` of the run that wrote the bank (next to ``bank/`` or ``vectors/``)."""
    folder = Path(bank.path)
    return runs.find_splits(folder, folder.parent)


def relation_train_pairs(
    bank: BasisBank,
    relations: DataSet | None = None,
    n_train: int = 20,
    n_val: int | None = None,
) -> dict[str, tuple[Pair, ...]]:
    """Train pairs of every basis relation that has them (see the module docstring)."""
    splits: dict[str, Split] = {}
    found = find_splits_file(bank)
    if found is not None:
        saved = load_splits(found)
        splits = {n: saved[n] for n in bank.names if n in saved}
        log.info("combiner training pairs: train splits of %d relation(s) from %s", len(splits), found)
    missing = [n for n in bank.names if n not in splits]
    if missing and relations is not None:
        for i, name in enumerate(bank.names):
            if name not in missing or name not in relations.relations:
                continue
            seed = int(bank.manifests[i].get("seed", 0) or 0)
            split = split_relation(relations.relations[name], n_train, n_val, seed)
            want = bank.manifests[i].get("split_hash")
            if want and split_hash(split) != want:
                log.warning(
                    "relation %s: the train split re-derived from the data (seed %d, n_train %d) does "
                    "not match the split hash in the vector's manifest; training analogies may overlap "
                    "the pairs the vector was tested on", name, seed, n_train)
            splits[name] = split
    return {n: tuple(s.train) for n, s in splits.items()}


def analogies_from_pairs(
    pairs: Mapping[str, Sequence[Pair]],
    per_relation: int,
    seed: int = 0,
    sources_per_relation: int | None = None,
) -> list[AnalogyItem]:
    """Up to ``per_relation`` analogies ``A:B :: C:D`` from each relation's pairs, ``A != C``.

    Pairs of pairs are drawn without replacement with a per-relation seeded stream, so the set
    depends only on the pairs, the relation name and the seed. ``sources_per_relation`` draws the
    A:B pairs from that many train pairs only (seeded): every distinct A:B costs a forward of the
    whole bank, the C:D side is cheap, so few sources buy many analogies on a large bank.
    """
    out: list[AnalogyItem] = []
    for name, ps in pairs.items():
        sources = range(len(ps))
        if sources_per_relation is not None and int(sources_per_relation) < len(ps):
            pick = random.Random(f"fvtrain-combiner-sources\0{seed}\0{name}")
            sources = sorted(pick.sample(range(len(ps)), int(sources_per_relation)))
        cands = [(i, j) for i in sources for j in range(len(ps))
                 if i != j and ps[i].x != ps[j].x and ps[i].y not in ps[j].answers]
        rng = random.Random(f"fvtrain-combiner\0{seed}\0{name}")
        for i, j in rng.sample(cands, min(per_relation, len(cands))):
            out.append(AnalogyItem(ps[i].x, ps[i].y, ps[j].x, ps[j].answers, relation=name,
                                   meta={"source": "train_pairs"}))
    return out


def fit_combiner(
    combiner,
    data: AnalogyDataModule,
    trainer_factory,
    out: Path | None = None,
) -> dict:
    """Train ``combiner`` with a Lightning Trainer; restores the best validation checkpoint.

    ``trainer_factory(**extra)`` builds the Trainer (e.g. a Hydra ``_partial_`` node); this adds the
    checkpoint callback and, with ``out``, a CSV logger under ``out/combiner``.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint
    from lightning.pytorch.loggers import CSVLogger

    has_val = bool(data.val_idx)
    extra: dict = {}
    ckpt = None
    if out is not None:
        ckpt = ModelCheckpoint(dirpath=str(Path(out) / runs.CHECKPOINTS), filename="combiner-best",
                               monitor="val/loss" if has_val else "train/loss", mode="min",
                               save_top_k=1, save_last=False, enable_version_counter=False)
        extra = {"callbacks": [ckpt], "logger": CSVLogger(str(out), name="combiner", version=""),
                 "default_root_dir": str(out), "enable_checkpointing": True}
    else:
        extra = {"logger": False, "enable_checkpointing": False}
    trainer = trainer_factory(**extra)
    if has_val:
        trainer.fit(combiner, train_dataloaders=data.train_dataloader(), val_dataloaders=data.val_dataloader())
    else:
        trainer.fit(combiner, train_dataloaders=data.train_dataloader())
    info = {"n_train": len(data.train_idx), "n_val": len(data.val_idx),
            "epochs": int(trainer.current_epoch), "steps": int(trainer.global_step)}
    if ckpt is not None and ckpt.best_model_path:
        state = torch.load(ckpt.best_model_path, map_location="cpu", weights_only=True)["state_dict"]
        combiner.load_state_dict(state)
        info.update(best_checkpoint=ckpt.best_model_path, best_score=float(ckpt.best_model_score),
                    monitor=ckpt.monitor)
    return info


def scheme_kwargs(c_cfg: DictConfig, n_basis: int) -> dict:
    """``n_basis``, plus the optimiser / scheduler of a trained scheme (``composition.optim``)."""
    from hydra.utils import instantiate

    kw: dict = {"n_basis": n_basis}
    o = c_cfg.get("optim")  # only trained schemes have one
    if o is not None:
        kw["optimizer"] = instantiate(o.optimizer)
        kw["scheduler"] = instantiate(o.scheduler) if o.scheduler is not None else None
        kw["interval"] = str(o.interval)
    return kw


def trainer_factory(train_cfg: DictConfig, lm):
    """The combiner's Trainer (a Hydra ``_partial_`` node), on the frozen LM's device by default."""
    from hydra.utils import instantiate

    acc, dev = train_cfg.trainer.accelerator, train_cfg.trainer.devices
    if acc is None:
        acc = "gpu" if lm.device.type == "cuda" else "cpu"
    if dev is None:
        dev = [lm.device.index or 0] if lm.device.type == "cuda" else 1
    return instantiate(train_cfg.trainer, accelerator=acc, devices=dev)
