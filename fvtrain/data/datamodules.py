"""The DataModules: relations (fixed prompt batches for FFV training and evaluation) and
analogies (the affine combiner's training data, below).

Training a vector with the LM frozen allows one big saving: every prompt column before the last
one never sees the vector, so its keys/values can be computed once and reused in every epoch.
That works best when a training batch is the same set of prompts in every epoch, so batches here
are *fixed*: the training prompts are split once (seeded) into batches that each hold a few
prompts of every relation, and each epoch visits those batches in a seeded, epoch-dependent
order. The LightningModule keeps each batch's prefix cache under the batch's key.

The data module yields plain ``{"stage", "index", "mode", "examples"}`` dicts; the module that
owns the frozen LM tokenises them. Under DDP every process gets the batches ``rank::world`` of
the (epoch-shuffled) list and no batch is repeated: the number of training batches is a multiple
of the world size, and a process with fewer evaluation batches steps through empty fillers, so
every process takes the same number of (collective) steps while metrics, summed across
processes, count each example exactly once.

Evaluation prompts follow :func:`fvtrain.extraction.job.evaluate_relation` exactly (same seeded
demonstrations per query), so test numbers line up with an extraction run on the same split.
"""

from __future__ import annotations

import math
import random
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, Sampler

from fvtrain.data.splits import Split, split_hash, splits_from_json, splits_to_json
from fvtrain.data.types import AnalogyItem
from fvtrain.prompts import (
    PromptTemplate,
    icl,
    make_batch,
    sample_demos,
    shuffled_icl,
    zero_shot,
)

TRAIN_MODES = ("zero_shot", "shuffled_icl")
EVAL_MODES = ("zero_shot", "shuffled_icl")


class Example(NamedTuple):
    relation_index: int
    relation: str
    x: str
    answers: tuple[str, ...]
    mode: str
    prompt: str
    pair: int = -1  # the pair's position in its split's stage list: pairs methods and modes item by item


def _check_modes(modes: Sequence[str], allowed: Sequence[str], what: str) -> tuple[str, ...]:
    modes = (modes,) if isinstance(modes, str) else tuple(modes)
    bad = [m for m in modes if m not in allowed]
    if bad:
        raise ValueError(f"unknown {what} mode(s) {bad}; use {', '.join(allowed)}")
    return modes


def needs_demos(train_modes: Sequence[str], eval_modes: Sequence[str], icl_test: bool) -> bool:
    return "shuffled_icl" in train_modes or "shuffled_icl" in eval_modes or icl_test


def check_demos(split: Split, n_shots: int) -> None:
    """A train split must supply ``n_shots`` demonstrations besides any query."""
    if len(split.train) < n_shots + 1:
        from fvtrain.errors import ConfigError

        raise ConfigError(
            f"relation {split.relation!r}: {n_shots}-shot prompts need at least {n_shots + 1} train "
            f"pairs (demonstrations plus a query), but the train split has {len(split.train)}; lower "
            "ffv.n_shots or raise data.n_train"
        )


def train_examples(
    split: Split,
    relation_index: int,
    template: PromptTemplate,
    modes: Sequence[str] = ("zero_shot",),
    n_shots: int = 10,
    n_shuffled: int = 1,
    seed: int = 0,
) -> list[Example]:
    """One zero-shot prompt per train pair and/or ``n_shuffled`` shuffled-ICL prompts per pair.

    Shuffled prompts draw their demonstrations from the other train pairs, seeded per relation,
    pair and copy, so they are the same in every epoch and every run with this seed.
    """
    modes = _check_modes(modes, TRAIN_MODES, "training prompt")
    out = []
    pairs = list(split.train)
    for mode in modes:
        for i, p in enumerate(pairs):
            if mode == "zero_shot":
                out.append(Example(relation_index, split.relation, p.x, tuple(p.answers), mode,
                                   zero_shot(template, p.x)))
                continue
            for k in range(int(n_shuffled)):
                rng = random.Random(f"{seed}-{split.relation}-train-shuffled-{i}-{k}")
                demos = sample_demos(pairs, p.x, n_shots, rng)
                out.append(Example(relation_index, split.relation, p.x, tuple(p.answers), mode,
                                   shuffled_icl(template, demos, p.x, rng)))
    return out


def eval_examples(
    split: Split,
    stage: str,
    relation_index: int,
    template: PromptTemplate,
    modes: Sequence[str] = ("zero_shot",),
    n_shots: int = 10,
    seed: int = 0,
    clean_icl: bool = False,
) -> list[Example]:
    """Zero-shot, shuffled-ICL and (``clean_icl``) ICL prompts of the ``stage`` pairs.

    The recipe is :func:`fvtrain.extraction.job.evaluate_relation`'s: one seeded stream per
    relation draws every query's demonstrations first, then the shuffles.
    """
    modes = _check_modes(modes, EVAL_MODES, "evaluation prompt")
    pairs = list(split[stage])
    train = list(split.train)
    out = []
    if "zero_shot" in modes:
        out += [Example(relation_index, split.relation, p.x, tuple(p.answers), "zero_shot",
                        zero_shot(template, p.x), j) for j, p in enumerate(pairs)]
    if "shuffled_icl" in modes or clean_icl:
        rng = random.Random(f"{seed}-{split.relation}-eval")
        demos = [sample_demos(train, p.x, n_shots, rng) for p in pairs]
        shuf = [shuffled_icl(template, d, p.x, rng) for d, p in zip(demos, pairs)]
        if "shuffled_icl" in modes:
            out += [Example(relation_index, split.relation, p.x, tuple(p.answers), "shuffled_icl", s, j)
                    for j, (p, s) in enumerate(zip(pairs, shuf))]
        if clean_icl:
            out += [Example(relation_index, split.relation, p.x, tuple(p.answers), "icl",
                            icl(template, d, p.x), j) for j, (d, p) in enumerate(zip(demos, pairs))]
    return out


def train_batches(examples: Sequence[Example], per_relation: int, world: int, seed: int) -> list[list[int]]:
    """Fixed training batches holding about ``per_relation`` prompts of *every* relation.

    Each relation's prompts are shuffled (seeded by relation) and cut into the same number of
    near-equal parts; batch j is the union of every relation's part j. Each row of the vector
    parameter then sees the same number of steps and examples per step whatever the number of
    relations trained alongside. The number of batches is a multiple of ``world``, so every
    process runs the same number of steps.
    """
    by_rel: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_rel.setdefault(e.relation_index, []).append(i)
    longest = max((len(v) for v in by_rel.values()), default=0)
    if longest < world:
        raise ValueError(f"{longest} training prompts per relation cannot feed {world} processes")
    k = math.ceil(math.ceil(longest / max(1, int(per_relation))) / world) * world
    k = min(k, longest // world * world)
    batches: list[list[int]] = [[] for _ in range(k)]
    for r, idx in sorted(by_rel.items()):
        idx = list(idx)
        random.Random(f"{seed}-ffv-train-batches-{examples[idx[0]].relation}").shuffle(idx)
        n = len(idx)
        for j in range(k):
            batches[j] += idx[round(j * n / k): round((j + 1) * n / k)]
    return batches


def eval_batches(examples: Sequence[Example], batch_size: int, world: int = 1) -> list[list[int]]:
    """Batches of one prompt mode each, similar lengths together; at least ``world`` of them."""
    out: list[list[int]] = []
    for mode in dict.fromkeys(e.mode for e in examples):
        idx = sorted((i for i, e in enumerate(examples) if e.mode == mode),
                     key=lambda i: (len(examples[i].prompt), i))
        out += [idx[j: j + batch_size] for j in range(0, len(idx), batch_size)]
    while 0 < len(out) < world:
        big = max(range(len(out)), key=lambda j: len(out[j]))
        if len(out[big]) < 2:
            break
        b = out.pop(big)
        out += [b[: len(b) // 2], b[len(b) // 2:]]
    return out


class ShardSampler(Sampler[int]):
    """Batch indices of this process: ``rank::world`` of a (per-epoch seeded) order.

    No batch is repeated. So that every process takes the same number of steps (a DDP step is a
    collective operation), shorter shards are filled up with ``-1``: an empty batch that is
    stepped through but evaluates nothing.
    """

    def __init__(self, n: int, rank: int = 0, world: int = 1, shuffle: bool = False, seed: int = 0):
        self.n, self.rank, self.world, self.shuffle, self.seed = n, rank, world, shuffle, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def order(self) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(f"{self.seed}-ffv-epoch-{self.epoch}").shuffle(order)
        mine = order[self.rank:: self.world]
        return mine + [-1] * (len(self) - len(mine))

    def __iter__(self) -> Iterator[int]:
        return iter(self.order())

    def __len__(self) -> int:
        return math.ceil(self.n / self.world)


class BatchList(Dataset):
    def __init__(self, stage: str, examples: Sequence[Example], batches: Sequence[Sequence[int]]):
        self.stage, self.examples, self.batches = stage, list(examples), [list(b) for b in batches]

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, i: int) -> dict:
        if i < 0:  # filler that keeps DDP processes in step
            return {"stage": self.stage, "index": i, "mode": None, "examples": []}
        ex = [self.examples[j] for j in self.batches[i]]
        return {"stage": self.stage, "index": i, "mode": ex[0].mode, "examples": ex}


def _identity(x):
    return x


class RelationDataModule(LightningDataModule):
    """Train / validation / test prompts of several relations for one FFV run.

    ``relation_index`` of an example is the relation's position in ``splits`` (the row of the
    vector parameter). ``batch_size`` counts training prompts *per relation* in a step (a step
    holds about ``relations x batch_size`` prompts). ``test_icl`` adds clean ICL test prompts (the 10-shot baseline) for the
    relations listed (all when ``True``).
    """

    def __init__(
        self,
        splits: dict[str, Split],
        template: PromptTemplate | str,
        train_modes: Sequence[str] = ("zero_shot",),
        val_modes: Sequence[str] = ("zero_shot",),
        test_modes: Sequence[str] = ("zero_shot",),
        test_icl: bool | Sequence[str] = True,
        n_shots: int = 10,
        n_shuffled: int = 1,
        batch_size: int = 32,
        eval_batch_size: int = 32,
        seed: int = 0,
    ):
        super().__init__()
        if not splits:
            raise ValueError("RelationDataModule needs at least one relation")
        self.splits = dict(splits)
        self.template = template if isinstance(template, PromptTemplate) else PromptTemplate(template)
        self.train_modes = _check_modes(train_modes, TRAIN_MODES, "training prompt")
        self.val_modes = _check_modes(val_modes, EVAL_MODES, "validation prompt")
        self.test_modes = _check_modes(test_modes, EVAL_MODES, "test prompt")
        if isinstance(test_icl, bool):
            test_icl = list(self.splits) if test_icl else []
        self.test_icl = set(test_icl)
        self.n_shots, self.n_shuffled = int(n_shots), int(n_shuffled)
        self.batch_size, self.eval_batch_size, self.seed = int(batch_size), int(eval_batch_size), int(seed)
        if needs_demos(self.train_modes, self.val_modes + self.test_modes, bool(self.test_icl)):
            for s in self.splits.values():
                check_demos(s, self.n_shots)
        self.examples: dict[str, list[Example]] = {}

    @property
    def relations(self) -> list[str]:
        return list(self.splits)

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        t, n, seed = self.template, self.n_shots, self.seed
        ex: dict[str, list[Example]] = {"train": [], "val": [], "test": []}
        for i, (name, s) in enumerate(self.splits.items()):
            ex["train"] += train_examples(s, i, t, self.train_modes, n, self.n_shuffled, seed)
            ex["val"] += eval_examples(s, "val", i, t, self.val_modes, n, seed)
            ex["test"] += eval_examples(s, "test", i, t, self.test_modes, n, seed,
                                        clean_icl=name in self.test_icl)
        self.examples = ex

    def _rank_world(self) -> tuple[int, int]:
        tr = getattr(self, "trainer", None)
        return (tr.global_rank, tr.world_size) if tr is not None else (0, 1)

    def batches(self, stage: str, world: int = 1) -> list[list[int]]:
        self.setup()
        ex = self.examples[stage]
        if not ex:
            raise ValueError(f"no {stage} prompts: is the {stage} split empty?")
        if stage == "train":
            return train_batches(ex, self.batch_size, world, self.seed)
        return eval_batches(ex, self.eval_batch_size, world)

    def _loader(self, stage: str) -> DataLoader:
        rank, world = self._rank_world()
        batches = self.batches(stage, world)
        sampler = ShardSampler(len(batches), rank, world, shuffle=stage == "train", seed=self.seed)
        return DataLoader(BatchList(stage, self.examples[stage], batches), batch_size=None,
                          sampler=sampler, collate_fn=_identity)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    # -- the splits travel with every checkpoint -------------------------------------------
    def state_dict(self) -> dict:
        return {"splits": splits_to_json(self.splits, seed=self.seed)}

    def load_state_dict(self, state_dict: dict) -> None:
        if "splits" not in state_dict:
            return
        saved = splits_from_json(state_dict["splits"])
        mine = {n: split_hash(s) for n, s in self.splits.items()}
        theirs = {n: split_hash(s) for n, s in saved.items()}
        if mine != theirs:
            raise ValueError(
                "the checkpoint was trained on other relations or splits than this run "
                f"(checkpoint: {sorted(theirs)}, run: {sorted(mine)}); resume with the same data, "
                "data.n_train, data.n_val and seed"
            )


def _as_is(batch: dict) -> dict:
    return batch


class AnalogyDataModule(LightningDataModule):
    """Analogies A:B :: C:D with precomputed source scores (the affine combiner's training data);
    a seeded share is held out for validation.

    Batches are fixed once (a seeded shuffle cut into ``batch_size`` chunks; their order is
    reshuffled every epoch). Given ``prefix_cache`` (:meth:`FrozenLM.prefix_cache`), each batch's
    prompt prefix (every column of prompt(C) but the last) is run once here and its keys/values are
    reused at every step: the CFV only enters at the last prompt token, so nothing before it changes.
    """

    def __init__(
        self,
        items: Sequence[AnalogyItem],
        scores: torch.Tensor,
        tokenizer: Any,
        template: PromptTemplate | str | None = None,
        batch_size: int = 16,
        val_fraction: float = 0.2,
        seed: int = 0,
        prefix_cache: Callable | None = None,
    ) -> None:
        super().__init__()
        if len(items) != len(scores):
            raise ValueError(f"{len(items)} training analogies but {len(scores)} score rows")
        if not items:
            raise ValueError("the affine combiner needs at least one training analogy")
        if not 0 <= val_fraction < 1:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.items, self.scores = list(items), scores.float()
        self.tokenizer, self.prefix_cache = tokenizer, prefix_cache
        self.template = template if isinstance(template, PromptTemplate) else PromptTemplate(
            *(() if template is None else (template,)))
        self.batch_size, self.seed = batch_size, seed
        order = list(range(len(self.items)))
        random.Random(f"fvtrain-combiner-val\0{seed}").shuffle(order)
        n_val = int(round(val_fraction * len(order))) if len(order) > 1 else 0
        self.val_idx = sorted(order[:n_val])
        self.train_idx = sorted(order[n_val:])
        self._batches: dict[str, list[dict]] = {}

    def collate(self, idx: list[int]) -> dict:
        t = self.template
        its = [self.items[i] for i in idx]
        batch = {
            "scores": self.scores[idx],
            "target": make_batch(self.tokenizer, [zero_shot(t, it.c) for it in its],
                                 [list(it.d) for it in its], t),
            "index": torch.tensor(idx, dtype=torch.long),
        }
        if self.prefix_cache is not None:
            b = batch["target"]
            batch["cache"] = self.prefix_cache(b.prompt_ids, b.prompt_mask)
        return batch

    def batches(self, stage: str) -> list[dict]:
        if stage not in self._batches:
            idx = list(self.train_idx if stage == "train" else self.val_idx)
            if stage == "train":
                random.Random(f"fvtrain-combiner-batches\0{self.seed}").shuffle(idx)
            self._batches[stage] = [self.collate(idx[i : i + self.batch_size])
                                    for i in range(0, len(idx), self.batch_size)]
        return self._batches[stage]

    def train_dataloader(self) -> DataLoader:
        gen = torch.Generator().manual_seed(self.seed)
        return DataLoader(self.batches("train"), batch_size=None, shuffle=True, generator=gen,
                          collate_fn=_as_is)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.batches("val"), batch_size=None, shuffle=False, collate_fn=_as_is)
