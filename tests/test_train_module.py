"""FFV trainer on tiny models: cached path equals the plain path, batching, metrics, checkpoints
and bad input. Fast: no subprocess, no embedded model."""

from __future__ import annotations

import math
import pickle
import random

import lightning
import pytest
import torch

from fvtrain.data.datamodules import (
    RelationDataModule,
    ShardSampler,
    eval_batches,
    eval_examples,
    train_batches,
    train_examples,
)
from fvtrain.data.splits import Split
from fvtrain.data.types import Pair
from fvtrain.models import load_model
from fvtrain.prompts import PromptTemplate, make_batch, shuffled_icl, zero_shot
from fvtrain.training.metrics import RelationScores, relation_scores
from fvtrain.training.module import FFVModule

T = PromptTemplate()
WORDS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("good", "bad"), ("fast", "slow"),
         ("open", "close"), ("light", "dark"), ("left", "right"), ("happy", "sad"), ("begin", "end"),
         ("quick", "lazy"), ("tree", "house"), ("cat", "dog"), ("car", "road")]


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny matrices: several BLAS threads only add contention on a shared machine.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _split(name: str, n_train=12, n_val=4, n_test=5, offset=0) -> Split:
    pairs = [Pair(f"{x}{i // len(WORDS) or ''}", (y,)) for i, (x, y) in
             enumerate((WORDS * 3)[offset: offset + n_train + n_val + n_test])]
    return Split(tuple(pairs[:n_train]), tuple(pairs[n_train:n_train + n_val]),
                 tuple(pairs[n_train + n_val:]), name)


def _module(lm, relations=("a", "b", "c"), lam=0.1, scale=None, **kw) -> FFVModule:
    g = torch.Generator().manual_seed(0)
    probe = make_batch(lm.tokenizer, [zero_shot(T, "hot")], ["cold"])
    s = float(lm.residual_norm(probe.prompt_ids, probe.prompt_mask, 1)) if scale is None else scale
    init = torch.randn(len(relations), lm.d_model, generator=g)
    init = init / init.norm(dim=-1, keepdim=True) * 3 * s
    m = FFVModule(list(relations), 1, init, init * 0.5, lam=lam, **kw)
    m.attach_lm(lm)
    with torch.no_grad():  # move away from v0 so that the penalty has a gradient as well
        m.vectors.add_(torch.randn(init.shape, generator=g) * s * 0.3)
    return m


def _prompt_batch(lm, shots: int, rng: random.Random):
    prompts, answers = [], []
    for i, (x, y) in enumerate(WORDS[:6]):
        if shots == 0:
            prompts.append(zero_shot(T, x))
        else:
            # Different shot counts in one batch: the prompts are left-padded.
            pool = [w for w in WORDS if w[0] != x]
            prompts.append(shuffled_icl(T, rng.sample(pool, shots - i % 2), x, rng))
        answers.append([y, "big dog"] if i == 0 else ("the lazy dog" if i == 1 else y))
    return make_batch(lm.tokenizer, prompts, answers, T,
                      {"relation_index": torch.tensor([0, 1, 2, 0, 1, 2])})


@pytest.mark.parametrize("family", ["llama", "gemma3", "gptj"])
@pytest.mark.parametrize("shots", [0, 10])
@pytest.mark.parametrize("target", ["first", "full"])
def test_cached_loss_and_gradient_equal_plain(family, shots, target):
    """Llama (GQA), Gemma 3 (sliding window, attention-output norm), GPT-J (tuple blocks)."""
    lm = load_model(f"tiny-{family}")
    m = _module(lm, loss_target=target)
    batch = _prompt_batch(lm, shots, random.Random(1))
    assert batch.prompt_mask.sum(1).unique().numel() > 1 or shots == 0
    out = {}
    for impl in ("plain", "cached"):
        prep = m.prepare(batch, impl=impl)
        loss, nll, reg = m.loss(prep, impl=impl)
        grad, = torch.autograd.grad(loss, m.vectors)
        out[impl] = (loss.detach(), grad)
    (lp, gp), (lc, gc) = out["plain"], out["cached"]
    assert float((lp - lc).abs() / lp.abs()) <= 1e-5
    assert float((gp - gc).norm() / gp.norm()) <= 1e-5
    assert float(gp.norm()) > 0 and bool((gp.abs().sum(1) > 0).all())  # every row got a gradient
    # The vector really enters the loss (the injection is not a silent no-op).
    with torch.no_grad():
        none = m.target_nll(m.logits(m.prepare(batch, impl="plain"), None, m.n_new(m.prepare(batch, impl="plain")),
                                     impl="plain"), batch, m.n_new(m.prepare(batch, impl="plain")))
    assert (none.mean() - (lp - m.lam * m.loss(m.prepare(batch, impl="plain"), "plain")[2].mean())).abs() > 1e-4


def test_test_rows_equal_separate_passes(tiny_llama):
    """All methods as rows after one shared prefix = one pass per method."""
    m = _module(tiny_llama)
    m.set_random_baseline(m.vectors.detach() * -1)
    batch = _prompt_batch(tiny_llama, 3, random.Random(2))
    prep = m.prepare(batch, impl="cached")
    names, vecs = m.method_vectors(prep.relation_index)
    assert names == ["none", "fv", "ffv", "ffv_random"]
    with torch.no_grad():
        rows = m.logits(prep, vecs, 1, repeat=len(names))[:, -1].view(len(batch), len(names), -1)
        for j, name in enumerate(names):
            one = m.logits(prep, vecs.view(len(batch), len(names), -1)[:, j], 1, impl="plain")[:, -1]
            torch.testing.assert_close(rows[:, j], one, rtol=1e-5, atol=1e-5)
        plain = tiny_llama.forward(batch.prompt_ids, batch.prompt_mask).logits[:, -1]
    torch.testing.assert_close(rows[:, 0], plain, rtol=1e-5, atol=1e-5)  # "none" = no vector


def test_zero_shot_exact_decodes_every_relation_and_method_in_one_pass(tiny_llama):
    """The training stage's exact match runs all relations and methods through one
    exact_match_methods pass (equal to each method alone: tests/test_metrics_exact.py); every
    prompt's row carries its own relation's vector of each method."""
    from fvtrain.training.job import exact_rows, zero_shot_exact

    m = _module(tiny_llama)
    m.set_random_baseline(m.vectors.detach() * -1)
    splits = {r: _split(r, n_test=3 + i, offset=3 * i) for i, r in enumerate(m.relations)}
    prompts, answers, groups, vectors = exact_rows(m, splits, T)
    assert groups == ["a"] * 3 + ["b"] * 4 + ["c"] * 5 and vectors["none"] is None
    assert prompts == [zero_shot(T, p.x) for r in m.relations for p in splits[r].test]
    assert answers == [list(p.answers) for r in m.relations for p in splits[r].test]
    for k, r in enumerate(groups):
        i = m.relations.index(r)
        names, vecs = m.method_vectors(torch.tensor([i]))
        for j, name in enumerate(names[1:], 1):
            assert torch.equal(vectors[name][k], vecs[j].detach()), (k, name)
    got = zero_shot_exact(m, tiny_llama, splits, T, batch_size=4, seed=0)
    assert got["methods"] == names and got["n"] == 12 and set(got["relations"]) == set(m.relations)


def test_state_dict_and_pickle_hold_no_frozen_model(tiny_llama):
    m = _module(tiny_llama)
    keys = set(m.state_dict())
    assert keys == {"vectors", "v0", "fv", "has_fv", "random_vectors", "has_random", "best_vectors",
                    "best_score", "best_epoch", "best_val_acc", "best_val_prob"}
    assert [n for n, _ in m.named_parameters()] == ["vectors"]
    assert sum(p.numel() for p in m.parameters()) == 3 * tiny_llama.d_model
    m.prepare(_prompt_batch(tiny_llama, 0, random.Random(0)))
    clone = pickle.loads(pickle.dumps(m))
    assert clone._lm is None and clone._store == {}
    torch.testing.assert_close(clone.vectors, m.vectors)


def test_train_batches_hold_every_relation_and_split_evenly():
    splits = {n: _split(n, n_train=10 + i, offset=i) for i, n in enumerate("abc")}
    ex = [e for i, s in enumerate(splits.values()) for e in train_examples(s, i, T, ["zero_shot"])]
    for world in (1, 2, 3):
        b = train_batches(ex, 4, world, seed=0)
        assert len(b) % world == 0
        flat = sorted(i for batch in b for i in batch)
        assert flat == list(range(len(ex)))  # every prompt once
        for batch in b:
            assert {ex[i].relation_index for i in batch} == {0, 1, 2}
        assert b == train_batches(ex, 4, world, seed=0)
    assert train_batches(ex, 4, 1, seed=0) != train_batches(ex, 4, 1, seed=1)


def test_shard_sampler_no_padding_and_epoch_order():
    n = 7
    shards = [list(ShardSampler(n, r, 2)) for r in range(2)]
    real = [i for i in shards[0] + shards[1] if i >= 0]
    assert sorted(real) == list(range(n))  # nothing repeated, nothing dropped
    assert len(shards[0]) == len(shards[1])  # -1 fillers keep DDP processes in step
    s = ShardSampler(n, 0, 1, shuffle=True, seed=3)
    s.set_epoch(0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    s.set_epoch(0)
    assert list(s) == e0 and e1 != e0 and sorted(e1) == list(range(n))
    assert len(eval_batches([train_examples(_split("a"), 0, T)[0]] * 3, 8, world=2)) == 2


def test_eval_prompts_follow_the_extraction_recipe():
    """Test prompts are exactly those fvtrain.extraction.job.evaluate_relation scores."""
    from fvtrain.prompts import icl, sample_demos

    s = _split("antonym")
    ex = eval_examples(s, "test", 0, T, ["zero_shot", "shuffled_icl"], n_shots=3, seed=5, clean_icl=True)
    rng = random.Random("5-antonym-eval")
    test = list(s.test)
    demos = [sample_demos(list(s.train), p.x, 3, rng) for p in test]
    shuf = [shuffled_icl(T, d, p.x, rng) for d, p in zip(demos, test)]
    clean = [icl(T, d, p.x) for d, p in zip(demos, test)]
    by_mode = {m: [e.prompt for e in ex if e.mode == m] for m in ("zero_shot", "shuffled_icl", "icl")}
    assert by_mode == {"zero_shot": [zero_shot(T, p.x) for p in test], "shuffled_icl": shuf, "icl": clean}


def test_relation_scores_micro_average_per_relation():
    m = RelationScores(3)
    m.update(torch.tensor([0, 0, 1]), torch.tensor([True, False, True]), torch.tensor([0.5, 0.1, 0.9]))
    m.update(torch.tensor([0, 1]), torch.tensor([True, False]), torch.tensor([0.3, 0.1]))
    res = relation_scores(m)
    torch.testing.assert_close(res["acc"][:2].float(), torch.tensor([2 / 3, 1 / 2]))
    torch.testing.assert_close(res["prob"][:2].float(), torch.tensor([0.3, 0.5]))
    assert math.isnan(float(res["acc"][2])) and res["count"].tolist() == [3, 2, 0]
    one = RelationScores(1)
    one.update(torch.tensor([0]), torch.tensor([True]), torch.tensor([0.2]))
    assert relation_scores(one)["acc"].shape == (1,)


def _fit(module, dm, tmp_path, epochs=1, **kw):
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False,
                                enable_checkpointing=False, enable_progress_bar=False,
                                enable_model_summary=False, use_distributed_sampler=False,
                                num_sanity_val_steps=0, default_root_dir=tmp_path, **kw)
    trainer.fit(module, datamodule=dm)
    return trainer


def _dm(splits, **kw):
    return RelationDataModule(splits, T, ["zero_shot"], ["zero_shot"], ["zero_shot"], False, n_shots=3,
                         batch_size=kw.pop("batch_size", 4), eval_batch_size=8, **kw)


def test_training_lowers_the_loss_and_keeps_each_relations_best_epoch(tiny_llama, tmp_path):
    splits = {n: _split(n, offset=2 * i) for i, n in enumerate("ab")}
    m = _module(tiny_llama, relations=("a", "b"), lam=0.0, optimizer=lambda p: torch.optim.Adam(p, lr=0.05),
                lr_scale=1.0)
    dm = _dm(splits)
    dm.setup()
    before = m.vectors.detach().clone()
    prep = m.prepare({"stage": "x", "index": 0, "mode": "zero_shot", "examples": dm.examples["train"]},
                     store=False)
    with torch.no_grad():
        l0 = float(m.loss(prep)[0])
    _fit(m, dm, tmp_path, epochs=3)
    with torch.no_grad():
        l1 = float(m.loss(prep)[0])
    assert l1 < l0
    assert not torch.equal(before, m.vectors.detach())
    assert (m.best_epoch >= 0).all() and torch.isfinite(m.best_val_acc).all()
    sel = m.selected_vectors("per_relation")
    for r in range(2):
        assert torch.equal(sel[r], m.best_vectors[r])


def test_testing_without_icl_prompts_warns_nothing(tiny_llama, tmp_path):
    """With the ICL rows reused from extraction the test loop runs no ICL batch: its metric is
    read (every rank reads it, so distributed runs stay in step) without torchmetrics' warning
    about a compute before any update, and no ICL row is reported."""
    import warnings

    splits = {n: _split(n, offset=2 * i) for i, n in enumerate("ab")}
    m = _module(tiny_llama, relations=("a", "b"))
    dm = _dm(splits)
    trainer = _fit(m, dm, tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.test(m, datamodule=dm, verbose=False)
    assert not [w for w in caught if "before the ``update``" in str(w.message)]
    assert "icl" not in m.test_results and "zero_shot/ffv" in m.test_results


def test_nan_loss_stops_naming_relation_and_step(tiny_llama, tmp_path):
    splits = {n: _split(n, offset=2 * i) for i, n in enumerate(["antonym", "capital"])}
    m = _module(tiny_llama, relations=("antonym", "capital"), lam=0.0)
    with torch.no_grad():
        m.vectors[1, 3] = float("inf")
    with pytest.raises(FloatingPointError, match=r"step 0 \(epoch 0\) for relation\(s\) capital"):
        _fit(m, _dm(splits), tmp_path)


def test_bad_initial_vectors_are_refused(tiny_llama):
    init = torch.zeros(2, tiny_llama.d_model)
    init[0, 0] = float("nan")
    with pytest.raises(ValueError, match="initial vector of relation\\(s\\) a has NaN"):
        FFVModule(["a", "b"], 1, init)
    m = FFVModule(["a", "b"], 1, torch.zeros(2, tiny_llama.d_model + 1))
    with pytest.raises(ValueError, match="d_model"):
        m.attach_lm(tiny_llama)


def test_residual_norm_is_the_block_output_norm(tiny_lm):
    """FrozenLM.residual_norm (the unit of ffv.lr_scale=rms) reads block `layer`'s output."""
    b = make_batch(tiny_lm.tokenizer, [zero_shot(T, "hot"), zero_shot(T, "the quick fox")], ["cold", "dog"])
    with torch.no_grad():
        hs = tiny_lm.model(input_ids=b.prompt_ids, attention_mask=b.prompt_mask,
                           position_ids=(b.prompt_mask.cumsum(-1) - 1).clamp(min=0),
                           output_hidden_states=True).hidden_states
    torch.testing.assert_close(tiny_lm.residual_norm(b.prompt_ids, b.prompt_mask, 1),
                               hs[2][:, -1].float().norm(dim=-1), rtol=1e-5, atol=1e-5)
