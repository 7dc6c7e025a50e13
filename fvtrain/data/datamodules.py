"""Lightning DataModules: relation pairs as prompts, analogies, and similarity judgments.

Relation prompts come in three modes (see ``fvtrain.prompts``): ``zero_shot`` (``Q: x\\nA:``),
``icl`` (n demonstrations, then the query) and ``shuffled_icl`` (the same with the
demonstrations' answers permuted). Demonstrations are drawn from the relation's train split only
and never contain the query. Every prompt is fixed by the seed, the relation, the split and the
example's position, so two runs with the same settings see the same prompts.

Without a tokenizer, the loaders yield lists of example dicts (handy for inspection and tests);
with one, they yield :class:`fvtrain.prompts.PromptBatch` objects (left padding, per-example
target positions).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset

from ..prompts import (
    DEFAULT_TEMPLATE,
    PromptBatch,
    PromptTemplate,
    icl,
    make_batch,
    shuffled_icl,
    zero_shot,
)
from .splits import (
    DEFAULT_N_TRAIN,
    Split,
    as_relation_list,
    save_splits,
    split_hash,
    split_relation,
    splits_from_json,
    splits_to_json,
)
from .types import AnalogyItem, DataSet, Judgment, Pair, Relation

MODES = ("zero_shot", "icl", "shuffled_icl")
STAGES = ("train", "val", "test")


class ListDataset(Dataset):
    """A map-style dataset over a list of ready examples."""

    def __init__(self, items: Sequence[Any]):
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Any:
        return self.items[i]


def _as_template(template: str | PromptTemplate) -> PromptTemplate:
    return template if isinstance(template, PromptTemplate) else PromptTemplate(template)


def _modes(mode: str | Sequence[str]) -> tuple[str, ...]:
    modes = (mode,) if isinstance(mode, str) else tuple(mode)
    bad = [m for m in modes if m not in MODES]
    if not modes or bad:
        raise ValueError(f"unknown prompt mode(s) {bad or modes!r}; use one or more of {', '.join(MODES)}")
    return modes


def _example_rng(*key: object) -> random.Random:
    # str seeds are hashed with SHA-512 by `random`: stable across runs and platforms.
    return random.Random("\0".join(map(str, key)))


def sample_demos(train: Sequence[Pair], query_x: str, n: int, rng: random.Random) -> list[tuple[str, str]]:
    """``n`` demonstrations from ``train``, never the query's own pair."""
    pool = [p for p in train if p.x != query_x]
    if len(pool) < n:
        raise ValueError(
            f"{n}-shot prompts need at least {n} train pairs besides the query, but only {len(pool)} "
            "are available; lower n_shots or raise n_train"
        )
    return [(p.x, p.y) for p in rng.sample(pool, n)]


def build_prompt(
    template: PromptTemplate, mode: str, x: str, train: Sequence[Pair], n_shots: int, rng: random.Random
) -> str:
    if mode == "zero_shot":
        return zero_shot(template, x)
    demos = sample_demos(train, x, n_shots, rng)
    return icl(template, demos, x) if mode == "icl" else shuffled_icl(template, demos, x, rng)


def make_examples(
    split: Split,
    stage: str,
    mode: str | Sequence[str] = "zero_shot",
    *,
    relation_index: int = 0,
    template: str | PromptTemplate = DEFAULT_TEMPLATE,
    n_shots: int = 10,
    seed: int = 0,
    n_prompts: int | None = None,
) -> list[dict]:
    """Prompt examples for one relation's ``stage`` split, one per pair and mode.

    ``n_prompts`` sets the number of examples per mode instead (queries are cycled, each time
    with fresh demonstrations): e.g. 100 clean ICL prompts from 20 train pairs.
    """
    template = _as_template(template)
    queries = list(split[stage])
    if n_prompts is not None and queries:
        queries = [queries[i % len(queries)] for i in range(n_prompts)]
    out = []
    for m in _modes(mode):
        for i, pair in enumerate(queries):
            rng = _example_rng(seed, split.relation, stage, m, i)
            out.append({
                "relation_index": relation_index,
                "relation": split.relation,
                "x": pair.x,
                "answers": list(pair.answers),
                "mode": m,
                "prompt": build_prompt(template, m, pair.x, split.train, n_shots, rng),
            })
    return out


class RelationDataModule(LightningDataModule):
    """Relation pairs as prompts, split per relation into train / val / test.

    ``mode`` (one mode or a list, mixed: one example per pair and mode) shapes the training
    prompts; ``eval_mode`` the validation and test prompts (default: the same as ``mode``).
    ``splits`` reuses saved splits (e.g. from :func:`fvtrain.data.splits.load_splits`).
    """

    def __init__(
        self,
        relations: DataSet | Mapping[str, Relation] | Iterable[Relation],
        tokenizer: Any = None,
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        n_train: int = DEFAULT_N_TRAIN,
        n_val: int | None = None,
        seed: int = 0,
        batch_size: int = 16,
        mode: str | Sequence[str] = "zero_shot",
        eval_mode: str | Sequence[str] | None = None,
        n_shots: int = 10,
        n_prompts: int | None = None,
        eval_batch_size: int | None = None,
        num_workers: int = 0,
        shuffle: bool = True,
        splits: Mapping[str, Split] | None = None,
    ):
        super().__init__()
        self.relations = as_relation_list(relations)
        if not self.relations:
            raise ValueError("RelationDataModule needs at least one relation")
        names = [r.name for r in self.relations]
        if len(set(names)) != len(names):
            raise ValueError(f"relation names must be unique, got {names}")
        self.tokenizer = tokenizer
        self.template = _as_template(template)
        self.n_train, self.n_val, self.seed = n_train, n_val, seed
        self.mode = _modes(mode)
        self.eval_mode = self.mode if eval_mode is None else _modes(eval_mode)
        self.n_shots, self.n_prompts = n_shots, n_prompts
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size or batch_size
        self.num_workers, self.shuffle = num_workers, shuffle
        self.splits: dict[str, Split] | None = dict(splits) if splits is not None else None
        self.examples: dict[str, list[dict]] = {}
        self.save_hyperparameters(ignore=["relations", "tokenizer", "splits"])

    @property
    def relation_names(self) -> list[str]:
        """``relation_index`` -> name."""
        return [r.name for r in self.relations]

    def make_splits(self) -> dict[str, Split]:
        if self.splits is None:
            self.splits = {r.name: split_relation(r, self.n_train, self.n_val, self.seed) for r in self.relations}
        missing = [n for n in self.relation_names if n not in self.splits]
        if missing:
            raise ValueError(f"no saved split for relation(s) {', '.join(missing)}")
        return self.splits

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        splits = self.make_splits()
        for st in STAGES:
            modes = self.mode if st == "train" else self.eval_mode
            self.examples[st] = [
                ex
                for i, name in enumerate(self.relation_names)
                for ex in make_examples(
                    splits[name], st, modes, relation_index=i, template=self.template,
                    n_shots=self.n_shots, seed=self.seed, n_prompts=self.n_prompts if st == "train" else None,
                )
            ]

    # -- batching -------------------------------------------------------------------------
    def collate(self, examples: list[dict]) -> PromptBatch | list[dict]:
        if self.tokenizer is None:
            return examples
        meta = {
            "relation_index": torch.tensor([e["relation_index"] for e in examples], dtype=torch.long),
            "relation": [e["relation"] for e in examples],
            "x": [e["x"] for e in examples],
            "answers": [e["answers"] for e in examples],
            "mode": [e["mode"] for e in examples],
        }
        return make_batch(self.tokenizer, [e["prompt"] for e in examples], [e["answers"] for e in examples],
                          self.template, meta)

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        self.setup()
        examples = self.examples[stage]
        if not examples:
            raise ValueError(f"the {stage} split is empty")
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            ListDataset(examples), batch_size=self.batch_size if stage == "train" else self.eval_batch_size,
            shuffle=shuffle, generator=gen, collate_fn=self.collate, num_workers=self.num_workers,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    # -- the splits travel with the run ---------------------------------------------------
    def split_hashes(self) -> dict[str, str]:
        return {n: split_hash(s) for n, s in self.make_splits().items()}

    def splits_json(self) -> dict:
        return splits_to_json(self.make_splits(), seed=self.seed, n_train=self.n_train, n_val=self.n_val)

    def save_splits(self, path: str | Path) -> Path:
        return save_splits(path, self.make_splits(), seed=self.seed, n_train=self.n_train, n_val=self.n_val)

    def state_dict(self) -> dict:
        # Saved in every Lightning checkpoint, so a resumed run keeps its splits.
        return {"splits": self.splits_json()}

    def load_state_dict(self, state_dict: dict) -> None:
        if "splits" in state_dict:
            self.splits = splits_from_json(state_dict["splits"])
            self.examples = {}


# ---------------------------------------------------------------------------------------------
# Analogies
# ---------------------------------------------------------------------------------------------


@dataclass
class AnalogyBatch:
    """Prompts for a batch of A:B::C:D items.

    * ``source``: zero-shot prompt of A with target B (scores basis vectors on A:B);
    * ``target``: zero-shot prompt of C with every accepted D (the gold candidate's C and D for
      multiple-choice items);
    * ``few_shot``: the A:B demonstration, then C (the few-shot baseline);
    * ``choices``: every candidate (C_k -> D_k) of the multiple-choice items, flattened;
      ``choice_item[k]`` is the batch row of candidate k; ``answer_index[b]`` the gold
      candidate of row b within its own candidates (-1 for open-ended items).
    """

    source: PromptBatch
    target: PromptBatch
    few_shot: PromptBatch
    choices: PromptBatch | None
    choice_item: torch.Tensor
    answer_index: torch.Tensor
    distance: list[str | None]
    relation: list[str | None]
    items: list[AnalogyItem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def to(self, device: torch.device | str) -> "AnalogyBatch":
        return AnalogyBatch(
            self.source.to(device), self.target.to(device), self.few_shot.to(device),
            None if self.choices is None else self.choices.to(device),
            self.choice_item.to(device), self.answer_index.to(device), self.distance, self.relation, self.items,
        )


def split_items(items: Sequence[Any], n_train: int | float, n_val: int | float, seed: int) -> dict[str, list]:
    """Seeded train/val/test split of items; ints are counts, floats below 1 fractions."""

    def count(v: int | float) -> int:
        return int(round(v * len(items))) if isinstance(v, float) and v < 1 else int(v)

    a, b = count(n_train), count(n_val)
    if a + b > len(items):
        raise ValueError(f"cannot take {a} train + {b} validation items from {len(items)}")
    order = list(range(len(items)))
    _example_rng("fvtrain-analogy-split", seed).shuffle(order)
    # Which items go where is random; within a split they keep the file's order.
    cuts = {"train": order[:a], "val": order[a : a + b], "test": order[a + b :]}
    return {st: [items[i] for i in sorted(idx)] for st, idx in cuts.items()}


class AnalogyDataModule(LightningDataModule):
    """Open-ended and multiple-choice analogies.

    Items whose ``meta["split"]`` is ``train``/``val``/``test`` (e.g. RelBERT's ``valid.jsonl``
    and ``test.jsonl``) keep it; otherwise ``n_train``/``n_val`` (counts or fractions) are drawn
    with the seed and the rest is the test set. Training items serve learned combiners.
    """

    def __init__(
        self,
        analogies: DataSet | Sequence[AnalogyItem],
        tokenizer: Any = None,
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        batch_size: int = 16,
        seed: int = 0,
        n_train: int | float = 0,
        n_val: int | float = 0,
        num_workers: int = 0,
        shuffle: bool = True,
    ):
        super().__init__()
        self.items = list(analogies.analogies if isinstance(analogies, DataSet) else analogies)
        if not self.items:
            raise ValueError("AnalogyDataModule needs at least one analogy item")
        self.tokenizer = tokenizer
        self.template = _as_template(template)
        self.batch_size, self.seed = batch_size, seed
        self.n_train, self.n_val = n_train, n_val
        self.num_workers, self.shuffle = num_workers, shuffle
        self.examples: dict[str, list[AnalogyItem]] = {}
        self.save_hyperparameters(ignore=["analogies", "tokenizer"])

    def setup(self, stage: str | None = None) -> None:
        if self.examples:
            return
        given = [it.meta.get("split") for it in self.items]
        if all(g in STAGES for g in given):
            self.examples = {st: [it for it, g in zip(self.items, given) if g == st] for st in STAGES}
        else:
            self.examples = split_items(self.items, self.n_train, self.n_val, self.seed)

    def collate(self, items: list[AnalogyItem]) -> AnalogyBatch | list[AnalogyItem]:
        if self.tokenizer is None:
            return items
        t, tok = self.template, self.tokenizer
        source = make_batch(tok, [zero_shot(t, it.a) for it in items], [it.b for it in items], t)
        target = make_batch(tok, [zero_shot(t, it.c) for it in items], [list(it.d) for it in items], t)
        few = make_batch(tok, [icl(t, [(it.a, it.b)], it.c) for it in items], [list(it.d) for it in items], t)
        prompts, answers, owner = [], [], []
        for row, it in enumerate(items):
            for c, d in it.choices or ():
                prompts.append(zero_shot(t, c))
                answers.append(d)
                owner.append(row)
        choices = make_batch(tok, prompts, answers, t) if prompts else None
        return AnalogyBatch(
            source, target, few, choices,
            torch.tensor(owner, dtype=torch.long),
            torch.tensor([-1 if it.answer_index is None else it.answer_index for it in items], dtype=torch.long),
            [it.distance for it in items], [it.relation for it in items], list(items),
        )

    def _loader(self, stage: str, shuffle: bool) -> DataLoader:
        self.setup()
        if not self.examples[stage]:
            raise ValueError(f"the analogy {stage} split is empty (set n_train/n_val to hold out items)")
        gen = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(ListDataset(self.examples[stage]), batch_size=self.batch_size, shuffle=shuffle,
                          generator=gen, collate_fn=self.collate, num_workers=self.num_workers)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", self.shuffle)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


# ---------------------------------------------------------------------------------------------
# Human similarity judgments
# ---------------------------------------------------------------------------------------------


def collate_judgments(items: list[Judgment]) -> dict:
    return {
        "first": [j.first for j in items],
        "second": [j.second for j in items],
        "rating": torch.tensor([j.rating for j in items], dtype=torch.float),
        "level": [j.level for j in items],
        "comparison_type": [j.comparison_type for j in items],
        "first_relation": [j.first_relation for j in items],
        "second_relation": [j.second_relation for j in items],
        "judgments": list(items),
    }


class JudgmentDataModule(LightningDataModule):
    """Similarity judgments for evaluation (``test``/``predict``); no tokenizer needed."""

    def __init__(
        self,
        judgments: DataSet | Sequence[Judgment],
        batch_size: int = 64,
        level: str | None = None,
        collate_fn: Callable[[list[Judgment]], Any] = collate_judgments,
    ):
        super().__init__()
        items = list(judgments.judgments if isinstance(judgments, DataSet) else judgments)
        if level is not None:
            items = [j for j in items if j.level == level]
        if not items:
            of_level = f" of level {level!r}" if level else ""
            raise ValueError(f"JudgmentDataModule needs at least one judgment{of_level}")
        self.items = items
        self.batch_size = batch_size
        self.collate_fn = collate_fn

    def test_dataloader(self) -> DataLoader:
        return DataLoader(ListDataset(self.items), batch_size=self.batch_size, collate_fn=self.collate_fn)

    def predict_dataloader(self) -> DataLoader:
        return self.test_dataloader()
