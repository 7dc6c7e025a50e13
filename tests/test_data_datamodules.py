"""DataModules: prompts per mode, demonstrations from train only, batching with a tiny
in-memory tokenizer (no network)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from fvtrain.data import AnalogyItem, Judgment, Pair, Relation, read
from fvtrain.data.datamodules import (
    AnalogyBatch,
    AnalogyDataModule,
    JudgmentDataModule,
    RelationDataModule,
    make_examples,
)
from fvtrain.data.splits import split_relation, splits_from_json
from fvtrain.prompts import PromptBatch

FIX = Path(__file__).resolve().parent / "fixtures" / "data"


def words_relation(name: str, n: int) -> Relation:
    return Relation(name, tuple(Pair(f"{name}{i}", (f"{name}ans{i}", f"{name}alt{i}")) for i in range(n)))


@pytest.fixture(scope="module")
def relations() -> list[Relation]:
    return [words_relation("ant", 30), words_relation("cap", 26)]


@pytest.fixture(scope="module")
def tokenizer(relations: list[Relation]):
    """A word-level tokenizer over every word the tests use, with a BOS post-processor."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["Q", ":", "A", "->"]
    for r in relations:
        for p in r.pairs:
            words += [p.x, *p.answers]
    words += "hot cold up down puppy dog kitten cat mouse tree feline France Paris Japan Tokyo Kyoto Osaka".split()
    vocab = {w: i for i, w in enumerate(dict.fromkeys(["[PAD]", "[UNK]", "[BOS]", *words]))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="[BOS] $A", special_tokens=[("[BOS]", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", bos_token="[BOS]")


DEMO = re.compile(r"Q: (\S+)\nA: (\S+)\n\n")


def demos_of(prompt: str) -> list[tuple[str, str]]:
    return DEMO.findall(prompt)


def test_zero_shot_examples(relations: list[Relation]) -> None:
    dm = RelationDataModule(relations, seed=0)
    dm.setup()
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [40, 5 + 3, 5 + 3]
    ex = dm.examples["train"][0]
    assert set(ex) == {"relation_index", "relation", "x", "answers", "mode", "prompt"}
    assert ex["prompt"] == f"Q: {ex['x']}\nA:" and ex["mode"] == "zero_shot"
    assert ex["answers"] == [ex["x"].replace("ant", "antans"), ex["x"].replace("ant", "antalt")]
    assert {e["relation_index"] for e in dm.examples["test"] if e["relation"] == "cap"} == {1}
    assert dm.relation_names == ["ant", "cap"]


def test_icl_demonstrations_come_from_train_and_never_hold_the_query(relations: list[Relation]) -> None:
    dm = RelationDataModule(relations, mode="icl", n_shots=10, seed=1)
    dm.setup()
    for stage in ("train", "val", "test"):
        for ex in dm.examples[stage]:
            split = dm.splits[ex["relation"]]
            train = {(p.x, p.y) for p in split.train}
            demos = demos_of(ex["prompt"])
            assert len(demos) == 10 and set(demos) <= train
            assert ex["x"] not in {x for x, _ in demos}
            assert ex["prompt"].endswith(f"Q: {ex['x']}\nA:")


def test_shuffled_icl_permutes_the_answers_of_train_demos(relations: list[Relation]) -> None:
    dm = RelationDataModule(relations, mode="shuffled_icl", n_shots=10, seed=0)
    dm.setup()
    mismatched = 0
    for ex in dm.examples["val"]:
        split = dm.splits[ex["relation"]]
        answer_of = {p.x: p.y for p in split.train}
        demos = demos_of(ex["prompt"])
        assert {x for x, _ in demos} <= set(answer_of) and ex["x"] not in {x for x, _ in demos}
        assert sorted(y for _, y in demos) == sorted(answer_of[x] for x, _ in demos)  # same answers ...
        mismatched += sum(answer_of[x] != y for x, y in demos)  # ... in another order
    assert mismatched > 0


def test_mixed_modes_give_one_example_per_pair_and_mode(relations: list[Relation]) -> None:
    dm = RelationDataModule(relations, mode=["zero_shot", "shuffled_icl"], eval_mode="zero_shot")
    dm.setup()
    assert len(dm.examples["train"]) == 2 * 40
    assert {e["mode"] for e in dm.examples["train"]} == {"zero_shot", "shuffled_icl"}
    assert {e["mode"] for e in dm.examples["val"]} == {"zero_shot"}
    with pytest.raises(ValueError, match="unknown prompt mode"):
        RelationDataModule(relations, mode="few_shot")


def test_prompts_are_reproducible(relations: list[Relation]) -> None:
    def prompts(seed: int) -> list[str]:
        dm = RelationDataModule(relations, mode="icl", seed=seed)
        dm.setup()
        return [e["prompt"] for e in dm.examples["train"]]

    assert prompts(0) == prompts(0) and prompts(0) != prompts(1)


def test_too_few_train_pairs_for_the_shots_is_an_error(relations: list[Relation]) -> None:
    dm = RelationDataModule(relations, mode="icl", n_train=10, n_shots=10)
    with pytest.raises(ValueError, match="10-shot prompts need at least 10 train pairs besides the query, but only 9"):
        dm.setup()


def test_n_prompts_cycles_train_queries_with_fresh_demos(relations: list[Relation]) -> None:
    split = split_relation(relations[0], seed=0)
    exs = make_examples(split, "train", "icl", n_prompts=100, n_shots=5, seed=0)
    assert len(exs) == 100 and exs[0]["x"] == exs[20]["x"]
    assert exs[0]["prompt"] != exs[20]["prompt"]


def test_collate_makes_left_padded_prompt_batches(relations: list[Relation], tokenizer) -> None:
    dm = RelationDataModule(relations, tokenizer=tokenizer, mode=["zero_shot", "icl"], n_shots=3, batch_size=8)
    batch = next(iter(dm.train_dataloader()))
    assert isinstance(batch, PromptBatch) and len(batch) == 8
    P = batch.prompt_len
    assert bool(batch.prompt_mask[:, P - 1].all())  # the last prompt token of every row is in column P-1
    assert batch.prompt_mask.sum(1).tolist() != [P] * 8  # zero-shot rows are padded on the left
    assert batch.meta["relation_index"].dtype == torch.long and batch.meta["relation_index"].shape == (8,)
    for i in range(8):
        ids = tokenizer(" " + batch.meta["answers"][i][0], add_special_tokens=False)["input_ids"]
        assert batch.target_ids[i, : len(ids)].tolist() == ids
        assert batch.input_ids[i, P - batch.prompt_mask[i].sum()].item() == tokenizer.bos_token_id
        # every accepted answer's first token counts
        alt = tokenizer(" " + batch.meta["answers"][i][1], add_special_tokens=False)["input_ids"][0]
        assert batch.first_ids[i] == [ids[0], alt]
    # validation batches are not shuffled and cover the split exactly once
    seen = [x for b in dm.val_dataloader() for x in b.meta["x"]]
    assert seen == [e["x"] for e in dm.examples["val"]]


def test_without_a_tokenizer_loaders_yield_examples(relations: list[Relation]) -> None:
    dm = RelationDataModule(relations, batch_size=4)
    batch = next(iter(dm.test_dataloader()))
    assert isinstance(batch, list) and len(batch) == 4 and "prompt" in batch[0]


def test_splits_travel_with_the_run(relations: list[Relation], tmp_path: Path) -> None:
    dm = RelationDataModule(relations, seed=5)
    state = dm.state_dict()
    assert set(state["splits"]["relations"]) == {"ant", "cap"}
    assert dm.split_hashes()["ant"] == state["splits"]["relations"]["ant"]["hash"]
    path = dm.save_splits(tmp_path / "splits.json")
    assert splits_from_json(__import__("json").loads(path.read_text())) == dm.splits
    # a fresh module restored from the checkpoint state uses the saved splits, not its own seed
    other = RelationDataModule(relations, seed=99)
    other.load_state_dict(state)
    other.setup()
    assert other.splits == dm.splits


def test_relation_datamodule_accepts_a_dataset_and_reports_small_relations() -> None:
    ds = read(FIX / "todd")
    with pytest.raises(ValueError, match=r"relation 'country-capital' has 3 distinct pairs"):
        RelationDataModule(ds).setup()
    dm = RelationDataModule(ds.select(["antonym"]), n_train=10)
    dm.setup()
    # 25 pairs, "hot" repeated: 24 distinct inputs, the repeated one with both answers
    assert sum(len(dm.examples[s]) for s in ("train", "val", "test")) == 24
    assert any(e["answers"] == ["cold", "freezing"] for s in ("train", "val", "test") for e in dm.examples[s])


def analogy_items() -> list[AnalogyItem]:
    return read(FIX / "analogies" / "analogies.jsonl").analogies


def test_analogy_batches(tokenizer) -> None:
    dm = AnalogyDataModule(analogy_items(), tokenizer=tokenizer, batch_size=3)
    batch = next(iter(dm.test_dataloader()))
    assert isinstance(batch, AnalogyBatch) and len(batch) == 3
    assert batch.answer_index.tolist() == [-1, 1, 0]
    assert batch.choice_item.tolist() == [1, 1, 1, 2, 2, 2]  # the open item has no candidates
    assert len(batch.choices) == 6 and batch.distance == ["near", "far", None]
    # the source batch scores B after A, the target batch every accepted D after C
    b_ids = tokenizer(" cold", add_special_tokens=False)["input_ids"]
    assert batch.source.target_ids[0, : len(b_ids)].tolist() == b_ids
    cat, feline = (tokenizer(" " + w, add_special_tokens=False)["input_ids"][0] for w in ("cat", "feline"))
    assert batch.target.first_ids[1] == [cat, feline]
    assert batch.few_shot.prompt_len > batch.target.prompt_len  # "Q: A\nA: B\n\n" then the query
    moved = batch.to("cpu")
    assert moved.choices is not None and torch.equal(moved.answer_index, batch.answer_index)


def test_analogy_splits() -> None:
    items = analogy_items() * 10
    dm = AnalogyDataModule(items, n_train=0.2, n_val=3, seed=0)
    dm.setup()
    assert [len(dm.examples[s]) for s in ("train", "val", "test")] == [6, 3, 21]
    mc = read(FIX / "multiple_choice")  # items say which split they come from
    dm2 = AnalogyDataModule(mc)
    dm2.setup()
    assert [len(dm2.examples[s]) for s in ("train", "val", "test")] == [0, 1, 2]
    with pytest.raises(ValueError, match="the analogy train split is empty"):
        dm2.train_dataloader()


def test_judgment_datamodule() -> None:
    js = [Judgment(("a", "b"), ("c", "d"), 3.5, "pair", "within-subtype", "1a", "1a"),
          Judgment((), (), 2.0, "relation", None, "1a", "3a")]
    dm = JudgmentDataModule(js, batch_size=8)
    batch = next(iter(dm.test_dataloader()))
    assert batch["rating"].tolist() == [3.5, 2.0] and batch["first"] == [("a", "b"), ()]
    assert batch["level"] == ["pair", "relation"]
    only_pairs = JudgmentDataModule(read(FIX / "relsim"), level="pair")
    assert len(only_pairs.items) == 8
    with pytest.raises(ValueError, match="needs at least one judgment of level 'relation'"):
        JudgmentDataModule(js[:1], level="relation")


def test_lightning_fit_and_checkpoint_carry_the_splits(relations: list[Relation], tokenizer, tmp_path: Path) -> None:
    """A real (tiny) Trainer run: batches reach the module, the splits land in the checkpoint."""
    import lightning as L

    class Tiny(L.LightningModule):
        def __init__(self, vocab: int):
            super().__init__()
            self.emb = torch.nn.Embedding(vocab, 4)
            self.head = torch.nn.Linear(4, vocab)
            self.seen: list[int] = []

        def training_step(self, batch: PromptBatch, _: int) -> torch.Tensor:
            self.seen += batch.meta["relation_index"].tolist()
            h = self.emb(batch.input_ids[:, batch.prompt_len - 1])
            return torch.nn.functional.cross_entropy(self.head(h), batch.target_ids[:, 0])

        def configure_optimizers(self):
            return torch.optim.Adam(self.parameters())

    dm = RelationDataModule(relations, tokenizer, mode=["zero_shot", "icl"], n_shots=3, batch_size=8, seed=3)
    model = Tiny(len(tokenizer))
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, dm)
    assert len(model.seen) == 24 and set(model.seen) == {0, 1}
    trainer.save_checkpoint(tmp_path / "last.ckpt")
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=False)
    assert ckpt["datamodule_hyper_parameters"]["seed"] == 3
    restored = RelationDataModule(relations, tokenizer, seed=99)
    restored.load_state_dict(ckpt["RelationDataModule"])
    assert restored.make_splits() == dm.splits
