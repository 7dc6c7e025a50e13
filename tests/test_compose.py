"""Composition: basis bank, batched scoring (= the reference loop), weight schemes, the affine
combiner, analogy evaluation and bad input. Tiny random models only; fast."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fvtrain.artifacts import save_vector
from fvtrain.composition import (
    BankError,
    Softmax,
    Top1,
    Uniform,
    affine_weights,
    compose,
    load_bank,
    make_scheme,
    score_pairs,
    source_scores,
    source_scores_loop,
    target_logprob,
)
from fvtrain.composition.combiner import AffineCombiner
from fvtrain.composition.training import (
    analogies_from_pairs,
    fit_combiner,
    relation_train_pairs,
)
from fvtrain.data import load as load_data
from fvtrain.data.datamodules import AnalogyDataModule
from fvtrain.data.splits import save_splits, split_hash, split_relation
from fvtrain.data.types import AnalogyItem, Pair
from fvtrain.evaluation.analogy import (
    AnalogyEncodingError,
    check_encodable,
    evaluate_items,
    summarise,
)
from fvtrain.models import load_model
from fvtrain.prompts import PromptTemplate, icl, make_batch, zero_shot

T = PromptTemplate()
RELS = ["antonym", "country_capital", "plural"]


def manifest(rel: str, layer: int = 1, model: str = "tiny-llama", revision: str | None = "seed:0",
             **extra) -> dict:
    return {"kind": "ffv", "relation": rel, "model_id": model, "model_revision": revision,
            "model_type": "llama", "layer": layer, "seed": 0, **extra}


def make_bank(folder: Path, lm, rels=RELS, layer: int = 1, scale: float = 3.0, seed: int = 0) -> Path:
    g = torch.Generator().manual_seed(seed)
    for r in rels:
        save_vector(folder, r, torch.randn(lm.d_model, generator=g) * scale,
                    manifest(r, layer, lm.model_id, lm.source.revision))
    return folder


def bank_tensor(lm, n: int, scale: float = 3.0, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, lm.d_model, generator=torch.Generator().manual_seed(seed)) * scale


PAIRS = [("hot", "cold"), ("big", "small and tiny"), ("France", "Paris"), ("up", "down"), ("quick", "slow")]


# -- scoring --------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3", "gpt2", "gpt_neox", "gptj"])
@pytest.mark.parametrize("max_rows", [64, 5, "auto"])
def test_batched_scoring_equals_loop(family, max_rows):
    lm = load_model(f"tiny-{family}")
    b = make_batch(lm.tokenizer, [zero_shot(T, a) for a, _ in PAIRS], [y for _, y in PAIRS], T)
    assert b.prompt_mask.sum(1).unique().numel() > 1  # left padding really happens
    assert b.target_mask.sum(1).unique().numel() > 1  # and targets of different lengths
    bank = bank_tensor(lm, 7)
    fast = source_scores(lm, b, bank, 1, max_rows=max_rows)  # 5 rows: vectors split over forwards
    # auto: sized from this machine's free memory (FrozenLM.rows_that_fit)
    ref = source_scores_loop(lm, b, bank, 1)
    assert fast.shape == ref.shape == (len(PAIRS), 7)
    assert (fast - ref).abs().max() <= 1e-5
    assert ref.std(1).min() > 1e-3  # the vectors really change the scores


def test_one_prompt_scores_all_vectors_in_one_forward(tiny_llama):
    """Shared prompt, one row per vector: a prefix forward and one forward of N rows."""
    lm = tiny_llama
    calls = []
    # The body (decoder stack) runs for the prefix and for the rows; count its calls.
    h = lm.model.base_model.register_forward_pre_hook(lambda m, a, kw: calls.append(kw["input_ids"].shape),
                                                      with_kwargs=True)
    try:
        b = make_batch(lm.tokenizer, [zero_shot(T, "hot")], ["cold"], T)
        s = source_scores(lm, b, bank_tensor(lm, 30), 1, max_rows=64)
    finally:
        h.remove()
    assert s.shape == (1, 30)
    assert len(calls) == 2 and calls[1][0] == 30


def test_score_pairs_matches_direct_batch(tiny_llama):
    lm = tiny_llama
    bank = bank_tensor(lm, 4)
    s = score_pairs(lm, PAIRS, bank, 2, T, batch_size=2)
    b = make_batch(lm.tokenizer, [zero_shot(T, a) for a, _ in PAIRS], [y for _, y in PAIRS], T)
    torch.testing.assert_close(s, source_scores_loop(lm, b, bank, 2), rtol=0, atol=1e-5)


def test_target_logprob_equals_score_and_gradients_reach_only_the_vector(tiny_llama, monkeypatch):
    lm = tiny_llama
    b = make_batch(lm.tokenizer, [zero_shot(T, a) for a, _ in PAIRS], [y for _, y in PAIRS], T)
    v = bank_tensor(lm, len(PAIRS)).requires_grad_(True)
    lp = target_logprob(lm, b, v, 1)
    ref = lm.score(b, vector=v.detach(), layer=1).target_logprob
    torch.testing.assert_close(lp.detach(), ref, rtol=0, atol=1e-5)
    lp.sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    assert all(p.grad is None for p in lm.model.parameters())
    torch.testing.assert_close(target_logprob(lm, b, None, None).detach(), lm.score(b).target_logprob,
                               rtol=0, atol=1e-5)
    # Against every column's logits of a plain forward: padding columns (targets of unequal
    # length) are left out of the unembedding, the first-token score runs one column only, and
    # the gradient is the same.
    from fvtrain.models.scoring import token_logprobs

    assert (b.target_mask == 0).any() and (b.target_mask.sum(1) > 1).any()
    P, M = b.prompt_len, b.target_ids.shape[1]
    ref_v = v.detach().clone().requires_grad_(True)
    with lm.inject(ref_v, 1, positions=P - 1):
        logits = lm.forward(b.input_ids, b.attention_mask, logits_to_keep=M).logits
    token_logprobs(logits, b.target_ids, b.target_mask).sum().backward()
    torch.testing.assert_close(v.grad, ref_v.grad, rtol=1e-4, atol=1e-5)
    first = target_logprob(lm, b, v.detach(), 1, tokens="first")
    torch.testing.assert_close(first, token_logprobs(logits, b.target_ids, b.target_mask, "first").detach(),
                               rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="tokens must be 'all' or 'first', got 'last'"):
        target_logprob(lm, b, v, 1, tokens="last")
    seen = []
    real = type(lm).logits_of
    monkeypatch.setattr(type(lm), "logits_of", lambda self, h: seen.append(len(h)) or real(self, h))
    target_logprob(lm, b, v.detach(), 1)
    target_logprob(lm, b, v.detach(), 1, tokens="first")
    assert seen == [int(b.target_mask.sum()), len(PAIRS)]


def test_scoring_rejects_a_vector_of_another_size(tiny_llama):
    b = make_batch(tiny_llama.tokenizer, ["Q: hot\nA:"], ["cold"], T)
    with pytest.raises(ValueError, match="was it made for another model"):
        source_scores(tiny_llama, b, torch.zeros(3, tiny_llama.d_model + 1), 1)
    with pytest.raises(ValueError, match="non-empty"):
        source_scores(tiny_llama, b, torch.zeros(0, tiny_llama.d_model), 1)


# -- weight schemes -------------------------------------------------------------------------------


def test_weight_schemes():
    s = torch.tensor([[-1.0, -3.0, -2.0], [-5.0, -4.0, -6.0]])
    torch.testing.assert_close(Uniform()(s), torch.full((2, 3), 1 / 3))
    torch.testing.assert_close(Softmax(2.0)(s), torch.softmax(s / 2, -1))
    assert Softmax(0.01)(s).argmax(-1).tolist() == [0, 1]
    torch.testing.assert_close(Top1()(s), torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]))
    W, b = torch.eye(3), torch.zeros(3)
    torch.testing.assert_close(affine_weights(s, W, b, 1.0), torch.softmax(s, -1))
    W2 = torch.tensor([[0.0, 1, 0], [1, 0, 0], [0, 0, 1]])
    torch.testing.assert_close(affine_weights(s, W2, torch.ones(3), 1.0),
                               torch.softmax(s, -1)[:, [1, 0, 2]] + 1)
    bank = torch.randn(3, 5)
    torch.testing.assert_close(compose(Top1()(s), bank), bank[[0, 1]])
    assert make_scheme("softmax", 0.5).temperature == 0.5
    with pytest.raises(ValueError, match="affine is trained"):
        make_scheme("affine")
    with pytest.raises(ValueError, match="temperature must be > 0"):
        Softmax(0.0)


# -- the bank -------------------------------------------------------------------------------------


def test_bank_from_run_folder_prefers_bank_over_vectors(tmp_path, tiny_llama):
    make_bank(tmp_path / "run" / "vectors", tiny_llama, ["antonym", "plural"])
    assert load_bank(tmp_path / "run").names == ["antonym", "plural"]
    make_bank(tmp_path / "run" / "bank", tiny_llama, RELS)
    bank = load_bank(tmp_path / "run")
    assert bank.names == RELS and bank.path.endswith("bank") and bank.kind == "ffv"
    assert bank.vectors.shape == (3, tiny_llama.d_model) and bank.layer == 1
    assert load_bank(tmp_path / "run" / "vectors").names == ["antonym", "plural"]
    sub = load_bank(tmp_path / "run", relations=["plural", "antonym"])
    assert sub.names == ["plural", "antonym"]
    torch.testing.assert_close(sub.vectors[0], bank.vectors[2])
    bank.check_compatible(tiny_llama)
    with pytest.raises(BankError, match="'synonym', not in the bank"):
        load_bank(tmp_path / "run", relations=["synonym"])


def test_empty_or_missing_bank_is_a_clear_error(tmp_path):
    with pytest.raises(BankError, match="no basis bank given"):
        load_bank(None)
    with pytest.raises(BankError, match="does not exist"):
        load_bank(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BankError, match="is empty: no vectors"):
        load_bank(tmp_path / "empty")
    (tmp_path / "empty" / "x.safetensors").write_bytes(b"")
    with pytest.raises(BankError, match=r"1 \.safetensors file\(s\) without a \.json manifest"):
        load_bank(tmp_path / "empty")


def test_bank_mixing_models_or_layers_is_a_clear_error(tmp_path):
    v = torch.ones(8)
    save_vector(tmp_path / "a", "antonym", v, manifest("antonym", 1))
    save_vector(tmp_path / "a", "plural", v, manifest("plural", 1))
    save_vector(tmp_path / "a", "synonym", v, manifest("synonym", 2))
    with pytest.raises(BankError, match=r"mixes layers: most vectors have layer=1, but synonym \(layer=2\)"):
        load_bank(tmp_path / "a")
    save_vector(tmp_path / "b", "antonym", v, manifest("antonym"))
    save_vector(tmp_path / "b", "plural", v, manifest("plural", model="tiny-qwen3"))
    with pytest.raises(BankError, match="mixes model_ids"):
        load_bank(tmp_path / "b")
    save_vector(tmp_path / "c", "antonym", v, manifest("antonym"))
    save_vector(tmp_path / "c", "plural", v, manifest("plural", revision="other"))
    with pytest.raises(BankError, match="mixes model_revisions"):
        load_bank(tmp_path / "c")
    save_vector(tmp_path / "d", "antonym", v, manifest("antonym"))
    save_vector(tmp_path / "d", "plural", torch.ones(9), manifest("plural"))
    with pytest.raises(BankError, match="mixes d_models"):
        load_bank(tmp_path / "d")
    save_vector(tmp_path / "e", "one", v, manifest("antonym"))
    save_vector(tmp_path / "e", "two", v, manifest("antonym"))
    with pytest.raises(BankError, match="several vectors for relation"):
        load_bank(tmp_path / "e")
    save_vector(tmp_path / "f", "antonym", v, {"model_id": "tiny-llama"})
    with pytest.raises(BankError, match="has no 'layer'"):
        load_bank(tmp_path / "f")


def test_bank_incompatible_with_the_model(tmp_path, tiny_llama):
    lm = tiny_llama
    save_vector(tmp_path / "a", "antonym", torch.ones(lm.d_model), manifest("antonym", model="tiny-qwen2"))
    with pytest.raises(BankError, match="made with model 'tiny-qwen2'.*loads 'tiny-llama'"):
        load_bank(tmp_path / "a").check_compatible(lm)
    load_bank(tmp_path / "a").check_compatible(lm, check_model=False)
    save_vector(tmp_path / "b", "antonym", torch.ones(lm.d_model + 2), manifest("antonym"))
    with pytest.raises(BankError, match="vectors of size 50, but tiny-llama has d_model 48"):
        load_bank(tmp_path / "b").check_compatible(lm)
    save_vector(tmp_path / "c", "antonym", torch.ones(lm.d_model), manifest("antonym", layer=9))
    with pytest.raises(BankError, match="layer 9, but tiny-llama has 4 layers"):
        load_bank(tmp_path / "c").check_compatible(lm)


# -- analogy evaluation ---------------------------------------------------------------------------


ITEMS = [
    AnalogyItem("hot", "cold", "big", ("small", "little"), (("big", "large"), ("big", "small"), ("big", "huge")),
                1, "near", "antonym"),
    AnalogyItem("France", "Paris", "Italy", ("Rome",), None, None, "far", "country_capital"),
    AnalogyItem("dog", "dogs", "cat", ("cats",), (("cat", "kitten"), ("cat", "cats")), 1, "far", "plural"),
]
# SAT-style: every candidate has its own C (no shared prompt).
SAT = AnalogyItem("hot", "cold", "big", ("small",), (("tall", "short"), ("big", "small"), ("fast", "quick")),
                  1, None, "antonym")


@pytest.mark.parametrize("prompt", ["zero_shot", "one_shot"])
def test_evaluate_items_matches_direct_scoring(tiny_llama, prompt):
    lm = tiny_llama
    items = ITEMS + [SAT, ITEMS[0]]
    vecs = bank_tensor(lm, len(items))

    def p(it, c):
        return zero_shot(T, c) if prompt == "zero_shot" else icl(T, [(it.a, it.b)], c)

    for vectors, layer in [(None, None), (vecs, 1)]:
        res = evaluate_items(lm, items, T, vectors, layer, prompt=prompt, batch_size=2)
        for i, it in enumerate(items):
            v = None if vectors is None else vectors[i]
            b = make_batch(lm.tokenizer, [p(it, it.c)], [list(it.d)], T)
            sc = lm.score(b, v, layer)
            assert bool(res.open_correct[i]) == bool(sc.correct[0])
            assert res.open_pred[i] == lm.tokenizer.decode([int(sc.argmax[0])])
            if it.choices is None:
                assert torch.isnan(res.mc_correct[i]) and res.mc_pred[i] == -1
                continue
            cb = make_batch(lm.tokenizer, [p(it, c) for c, _ in it.choices], [d for _, d in it.choices], T)
            lp = lm.score(cb, v, layer).target_logprob.float()
            k = int(lp.argmax())
            assert int(res.mc_pred[i]) == k and float(res.mc_correct[i]) == float(k == it.answer_index)
            # every candidate's log-probability, multi-token ones continued from the shared prompt
            torch.testing.assert_close(torch.tensor(res.mc_logprobs[i]), lp, rtol=1e-4, atol=1e-4)


def test_evaluate_methods_equals_one_method_at_a_time(tiny_llama):
    from fvtrain.evaluation.analogy import evaluate_methods

    lm = tiny_llama
    items = ITEMS + [SAT]
    vecs = bank_tensor(lm, len(items), scale=6.0)
    zero_row = vecs.clone()
    zero_row[1] = 0
    methods = {"none": None, "a": vecs, "b": vecs.flip(0), "z": zero_row}
    together = evaluate_methods(lm, items, methods, 1, T, batch_size=3)
    for name, v in methods.items():
        alone = evaluate_items(lm, items, T, v, 1 if v is not None else None, batch_size=2)
        got = together[name]
        assert torch.equal(got.open_correct, alone.open_correct) and torch.equal(got.mc_pred, alone.mc_pred)
        assert got.open_pred == alone.open_pred
        for i in range(len(items)):
            torch.testing.assert_close(torch.tensor(got.mc_logprobs[i]), torch.tensor(alone.mc_logprobs[i]),
                                       rtol=1e-4, atol=1e-4)
    none, z = together["none"], together["z"]
    assert z.open_pred[1] == none.open_pred[1]  # a zero row leaves its item unedited


def test_one_shot_prompt_shows_the_source_pair():
    assert icl(T, [("hot", "cold")], "big") == "Q: hot\nA: cold\n\nQ: big\nA:"


def test_summarise_groups_by_distance_and_relation():
    from fvtrain.evaluation.analogy import ItemResults

    res = ItemResults(torch.tensor([True, False, True]), torch.tensor([1.0, float("nan"), 0.0]),
                      torch.tensor([1, -1, 0]), ["a", "b", "c"])
    m = summarise(ITEMS, res)
    assert m["open"]["all"] == {"acc": pytest.approx(2 / 3), "n": 3, "acc_ci": [0.0, 1.0]}
    assert m["open"]["near"] == {"acc": 1.0, "n": 1, "acc_ci": None}
    assert m["open"]["far"] == {"acc": 0.5, "n": 2, "acc_ci": [0.0, 1.0]}
    assert m["mc"]["all"] == {"acc": 0.5, "n": 2, "acc_ci": [0.0, 1.0]} and m["mc"]["far"]["acc"] == 0.0
    assert m["open"]["by_relation"]["country_capital"] == {"acc": 0.0, "n": 1}
    assert m["mc"]["by_relation"]["country_capital"] == {"acc": None, "n": 0}


class DropWords:
    """A tokenizer that encodes some words to nothing (as a vocabulary without them would)."""

    def __init__(self, tok, bad):
        self.tok, self.bad = tok, bad

    def __call__(self, text, add_special_tokens=True):
        if any(w in text for w in self.bad):
            return {"input_ids": []}
        return self.tok(text, add_special_tokens=add_special_tokens)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_analogy_whose_words_do_not_encode_is_a_clear_error(tiny_llama):
    tok = DropWords(tiny_llama.tokenizer, ["Rome"])
    with pytest.raises(AnalogyEncodingError,
                       match=r"analogy 1 'France : Paris :: Italy : Rome': D 'Rome' encodes to no token"):
        check_encodable(tok, ITEMS, T)
    kept, skipped = check_encodable(tok, ITEMS, T, on_bad="skip")
    assert kept == [ITEMS[0], ITEMS[2]] and len(skipped) == 1
    tok = DropWords(tiny_llama.tokenizer, ["kitten"])
    with pytest.raises(AnalogyEncodingError, match="choice 0 D 'kitten'"):
        check_encodable(tok, ITEMS, T)
    assert check_encodable(tiny_llama.tokenizer, ITEMS, T)[0] == ITEMS


# -- the affine combiner --------------------------------------------------------------------------


def test_combiner_starts_as_softmax_and_only_W_b_are_state(tiny_llama):
    c = AffineCombiner(4, temperature=0.5, lm=tiny_llama, basis=bank_tensor(tiny_llama, 4), layer=1)
    torch.testing.assert_close(c.W.detach(), torch.eye(4))
    torch.testing.assert_close(c.b.detach(), torch.zeros(4))
    s = torch.randn(3, 4)
    torch.testing.assert_close(c.weights(s), Softmax(0.5)(s))
    assert {n for n, p in c.named_parameters() if p.requires_grad} == {"W", "b"}
    assert set(c.state_dict()) == {"W", "b"}
    with pytest.raises(ValueError, match="basis must be"):
        c.attach(tiny_llama, torch.zeros(3, tiny_llama.d_model), 1)


def test_combiner_training_lowers_the_loss_and_leaves_the_lm_alone(tmp_path, tiny_llama):
    from functools import partial

    import lightning

    lm = tiny_llama
    before = {k: v.clone() for k, v in lm.model.state_dict().items()}
    basis = bank_tensor(lm, 3)
    pairs = {"antonym": [Pair(x, (y,)) for x, y in [("hot", "cold"), ("big", "small"), ("up", "down"),
                                                      ("good", "bad"), ("fast", "slow")]]}
    items = analogies_from_pairs(pairs, 12, seed=0)
    scores = score_pairs(lm, [(it.a, it.b) for it in items], basis, 1, T)
    c = AffineCombiner(3, optimizer=partial(torch.optim.Adam, lr=0.05), lm=lm, basis=basis, layer=1)
    data = AnalogyDataModule(items, scores, lm.tokenizer, T, batch_size=4, val_fraction=0.25, seed=0,
                             prefix_cache=lm.prefix_cache)
    plain = AnalogyDataModule(items, scores, lm.tokenizer, T, batch_size=4, val_fraction=0.25, seed=0)

    def loss(d=data):
        with torch.no_grad():
            return float(c._loss(d.collate(d.train_idx)))

    start = loss()
    assert "cache" in data.batches("train")[0] and "cache" not in plain.collate([0])
    assert abs(start - loss(plain)) < 1e-4  # the precomputed prefix changes nothing
    factory = partial(lightning.Trainer, max_epochs=6, accelerator="cpu", devices=1,
                      enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    info = fit_combiner(c, data, factory, tmp_path)
    assert info["n_train"] == 9 and info["n_val"] == 3 and info["monitor"] == "val/loss"
    assert loss() < start
    assert not torch.equal(c.W.detach(), torch.eye(3))
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, before[k]), k
    ckpt = torch.load(tmp_path / "checkpoints" / "combiner-best.ckpt", map_location="cpu", weights_only=False)
    assert set(ckpt["state_dict"]) == {"W", "b"}
    assert (tmp_path / "combiner" / "metrics.csv").is_file()


def test_training_analogies_from_pairs():
    pairs = {"antonym": [Pair(x, (y,)) for x, y in [("hot", "cold"), ("cold", "hot"), ("up", "down")]],
             "plural": [Pair("cat", ("cats",)), Pair("dog", ("dogs",))]}
    items = analogies_from_pairs(pairs, 50, seed=0)
    # hot:cold :: cold:hot has B equal to D... no: D=hot, B=cold; it is kept; a pair with itself is not.
    assert all(it.a != it.c for it in items)
    assert sum(it.relation == "plural" for it in items) == 2
    assert analogies_from_pairs(pairs, 2, seed=0) == analogies_from_pairs(pairs, 2, seed=0)
    assert len(analogies_from_pairs(pairs, 2, seed=0)) == 4


def test_relation_train_pairs_from_splits_file_or_data(tmp_path, tiny_llama):
    ds = load_data("builtin", relations=RELS)
    splits = {r: split_relation(ds.relations[r], 20, None, 0) for r in RELS}
    folder = tmp_path / "run" / "vectors"
    for r in RELS:
        save_vector(folder, r, torch.ones(tiny_llama.d_model), manifest(r, split_hash=split_hash(splits[r])))
    bank = load_bank(tmp_path / "run")
    from_data = relation_train_pairs(bank, ds, 20)
    assert {r: list(p) for r, p in from_data.items()} == {r: list(splits[r].train) for r in RELS}
    save_splits(tmp_path / "run" / "splits.json", {"antonym": split_relation(ds.relations["antonym"], 5, None, 1)})
    mixed = relation_train_pairs(bank, ds, 20)
    assert len(mixed["antonym"]) == 5 and len(mixed["plural"]) == 20


# -- configs --------------------------------------------------------------------------------------


def _cfg(*overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir

    from fvtrain.cli import config_dir

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        return hcompose(config_name="compose", overrides=list(overrides))


@pytest.mark.parametrize("name", ["uniform", "softmax", "top1", "affine"])
def test_composition_group_instantiates(name):
    from hydra.utils import instantiate

    cfg = _cfg(f"composition={name}")
    assert cfg.composition.name == name
    from fvtrain.composition.training import scheme_kwargs

    scheme = instantiate(cfg.composition.scheme, **scheme_kwargs(cfg.composition, 5))
    assert scheme.name == name
    w = scheme.weights(torch.randn(2, 5))
    assert w.shape == (2, 5)
    if name == "affine":
        assert cfg.composition.train.trainer._partial_
        opt = scheme.configure_optimizers()
        assert isinstance(opt, torch.optim.Adam) and opt.param_groups[0]["lr"] == 0.01
        assert {id(p) for p in opt.param_groups[0]["params"]} == {id(scheme.W), id(scheme.b)}


# -- the job, in process --------------------------------------------------------------------------


def run_compose(tmp_path: Path, *overrides: str):
    from hydra import compose as hcompose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from fvtrain.cli import config_dir
    from fvtrain.compose import compose as compose_job

    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = hcompose(config_name="compose", return_hydra_config=True,
                       overrides=[f"paths.output_root={tmp_path}", f"hydra.run.dir={tmp_path / 'run'}",
                                  "model=tiny-llama", *overrides])
        with open_dict(cfg):
            cfg.hydra.runtime.output_dir = str(tmp_path / "run")
        HydraConfig.instance().set_config(cfg)
        (tmp_path / "run").mkdir(parents=True, exist_ok=True)
        with open_dict(cfg):
            del cfg["hydra"]
        return compose_job(cfg)


def test_compose_job_writes_metrics_predictions_and_figure(tmp_path, tiny_llama):
    make_bank(tmp_path / "ext" / "vectors", tiny_llama)
    m = run_compose(tmp_path, f"basis.path={tmp_path / 'ext'}", "analogies.max_items=16",
                    "analogies.relations=[antonym,country_capital,plural,synonym]", "compose.oracle_search=true",
                    "composition.train.analogies_per_relation=4", "composition.train.trainer.max_epochs=1")
    run = tmp_path / "run"
    assert list(m["methods"]) == ["none", "one_shot", "uniform", "softmax", "top1", "affine", "oracle",
                                  "best_single", "best_per_item"]
    assert m["methods"]["oracle"]["open"]["all"]["n"] < 16  # synonym has no basis vector
    assert set(m["oracle_search"]["per_vector_mc"]) == set(RELS)
    for mode in ("open", "mc"):
        best = max(m["oracle_search"][f"per_vector_{mode}"].values())
        assert m["methods"]["best_single"][mode]["all"]["acc"] == pytest.approx(best)
        assert m["methods"]["best_per_item"][mode]["all"]["acc"] >= best
    for name, r in m["methods"].items():
        for mode in ("open", "mc"):
            assert r[mode]["all"]["acc"] is not None and 0 <= r[mode]["all"]["acc"] <= 1
            assert r[mode]["near"]["n"] + r[mode]["far"]["n"] == r[mode]["all"]["n"]
    assert m["methods"]["none"]["open"]["all"]["n"] == 16
    # Intervals on every group; paired differences on the items both methods saw.
    for name, r in m["methods"].items():
        lo, hi = r["mc"]["all"]["acc_ci"]
        assert lo - 1e-9 <= r["mc"]["all"]["acc"] <= hi + 1e-9
    d = m["differences"]["affine - softmax"]["mc"]["all"]
    assert d["diff"] == pytest.approx(m["methods"]["affine"]["mc"]["all"]["acc"] - m["methods"]["softmax"]["mc"]["all"]["acc"])
    assert d["n"] == 16 and d["ci"][0] <= d["diff"] <= d["ci"][1]
    assert m["differences"]["oracle - affine"]["open"]["all"]["n"] == m["methods"]["oracle"]["open"]["all"]["n"]
    assert m["combiner"]["n_items"] == 12 and m["combiner"]["source"].startswith("train pairs of 3")
    saved = json.loads((run / "metrics.json").read_text())
    assert saved["methods"]["affine"] == m["methods"]["affine"]
    preds = [json.loads(line) for line in (run / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 16 and all({"none", "affine", "one_shot"} <= set(p) for p in preds)
    assert sum("oracle" in p for p in preds) == m["methods"]["oracle"]["open"]["all"]["n"]
    assert (run / "figures" / "analogy_accuracy.png").stat().st_size > 1000
    assert (run / "combiner.safetensors").is_file() and (run / "checkpoints" / "combiner-best.ckpt").is_file()
    from fvtrain.artifacts import load_tensors

    t = load_tensors(run / "scores.safetensors")
    assert t["scores"].shape == (16, 3) and t["weights.top1"].sum(1).eq(1).all()


def test_compose_job_bad_input_fails_before_the_model_loads(tmp_path, monkeypatch):
    import fvtrain.cli as cli
    from fvtrain.runtime import LazyModel

    monkeypatch.setattr(LazyModel, "__call__", lambda self: pytest.fail("model loaded"))
    with pytest.raises(BankError, match="no basis bank given"):
        run_compose(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BankError, match="is empty"):
        run_compose(tmp_path, f"basis.path={tmp_path / 'empty'}")
    save_vector(tmp_path / "mixed", "antonym", torch.ones(48), manifest("antonym", 1))
    save_vector(tmp_path / "mixed", "plural", torch.ones(48), manifest("plural", 2))
    with pytest.raises(BankError, match="mixes layers"):
        run_compose(tmp_path, f"basis.path={tmp_path / 'mixed'}")
    save_vector(tmp_path / "ok", "antonym", torch.ones(48), manifest("antonym", 1))
    with pytest.raises(cli.ConfigError, match="holds no analogy items"):
        run_compose(tmp_path, f"basis.path={tmp_path / 'ok'}",
                    f"analogies.path={Path(__file__).parent / 'fixtures' / 'data' / 'pairs' / 'antonym.tsv'}")
    with pytest.raises(cli.ConfigError, match="compose.also may list"):
        run_compose(tmp_path, f"basis.path={tmp_path / 'ok'}", "compose.also=[affine]")


def test_training_analogies_sources(tmp_path, tiny_llama):
    from fvtrain.composition.job import training_analogies

    make_bank(tmp_path / "run" / "vectors", tiny_llama)
    bank = load_bank(tmp_path / "run")
    cfg = _cfg("composition=affine", "composition.train.analogies_per_relation=5")
    items, source = training_analogies(cfg, bank, ITEMS, T, 0)
    assert source == "train pairs of 3 basis relation(s)" and len(items) == 15
    assert {it.relation for it in items} == set(RELS) and all(it.a != it.c for it in items)
    ds = load_data("builtin", relations=RELS)
    train_x = {r: {p.x for p in split_relation(ds.relations[r], 20, None, 0).train} for r in RELS}
    assert all(it.a in train_x[it.relation] and it.c in train_x[it.relation] for it in items)
    f = tmp_path / "train.jsonl"
    f.write_text('{"a": "hot", "b": "cold", "c": "up", "d": "down"}\n{"a": "cat", "b": "cats", "c": "dog", "d": "dogs"}\n')
    cfg = _cfg("composition=affine", f"analogies.train_path={f}")
    items, source = training_analogies(cfg, bank, ITEMS, T, 0)
    assert source == f"file {f}" and [it.c for it in items] == ["up", "dog"]
    marked = [AnalogyItem("a", "b", "c", ("d",), meta={"split": "train"}), ITEMS[0]]
    assert training_analogies(_cfg(), bank, marked, T, 0)[0] == marked[:1]


def test_compose_job_takes_the_bank_folder_and_leaves_the_config_alone(tmp_path, tiny_llama):
    from omegaconf import OmegaConf

    from fvtrain.cli import compose as compose_config
    from fvtrain.composition import job
    from fvtrain.composition.tables import analogy_table

    make_bank(tmp_path / "train" / "bank", tiny_llama)
    cfg = compose_config("compose", ["model=tiny-llama", "composition=softmax", "analogies.max_items=4",
                                     "compose.also=[]", "compose.baselines=[none]"], output_dir=tmp_path)
    before = OmegaConf.to_yaml(cfg)
    OmegaConf.set_readonly(cfg, True)
    result = job.run(cfg, tmp_path / "compose", tiny_llama, basis=tmp_path / "train")
    assert OmegaConf.to_yaml(cfg) == before and cfg.basis.path is None
    assert isinstance(result, job.ComposeResult) and result.stage == "compose"
    assert result.bank == tmp_path / "train" / "bank" and result.scheme == "softmax"
    saved = json.loads((tmp_path / "compose" / "metrics.json").read_text())
    assert list(saved)[:2] == ["stage", "schema_version"] and saved["stage"] == "compose"
    assert list(saved["methods"]) == ["none", "softmax"]
    table = analogy_table(saved)
    assert [r[0] for r in table.rows] == ["none", "softmax"] and "4 items" in table.title
    mc = saved["methods"]["softmax"]["mc"]["all"]
    assert table.rows[1][4] == f"{mc['acc']:.2f} [{mc['acc_ci'][0]:.2f},{mc['acc_ci'][1]:.2f}]"
    assert analogy_table(saved, ci="none").rows[1][4] == pytest.approx(mc["acc"])


# -- ablation options: score type, the map's form ---------------------------------------------------


def test_first_token_source_scores_are_the_first_target_token_logprob(tiny_llama):
    from fvtrain.composition.scoring import source_scores

    lm = tiny_llama
    b = make_batch(lm.tokenizer, [zero_shot(T, "hot"), zero_shot(T, "big")], ["cold air", "small"], T)
    bank = bank_tensor(lm, 3)
    first = source_scores(lm, b, bank, 1, max_rows=4, tokens="first")
    full = source_scores(lm, b, bank, 1, max_rows=4)
    for i in range(3):
        want = lm.score(b, vector=bank[i], layer=1).first_prob.float().log().cpu()
        torch.testing.assert_close(first[:, i], want, atol=1e-4, rtol=1e-4)
    assert bool((full[0] < first[0]).all())  # a multi-token target costs more than its first token
    with pytest.raises(ValueError, match="tokens must be 'all' or 'first'"):
        source_scores(lm, b, bank, 1, tokens="last")


def test_combiner_forms_start_as_softmax_and_train_what_they_say(tiny_llama):
    s = torch.randn(3, 4)
    basis = bank_tensor(tiny_llama, 4)
    diag = AffineCombiner(4, temperature=0.5, form="diagonal", lm=tiny_llama, basis=basis, layer=1)
    torch.testing.assert_close(diag.weights(s), Softmax(0.5)(s))
    assert {n for n, _ in diag.named_parameters()} == {"W_diag", "b"}
    temp = AffineCombiner(4, temperature=0.5, learn_temperature=True, lm=tiny_llama, basis=basis, layer=1)
    assert {n for n, _ in temp.named_parameters()} == {"W", "b", "log_tau"}
    assert temp.temperature == pytest.approx(0.5)
    with torch.no_grad():
        temp.log_tau.fill_(0.0)
    torch.testing.assert_close(temp.weights(s), Softmax(1.0)(s))
    batch = {"scores": s[:2], "target": make_batch(tiny_llama.tokenizer, [zero_shot(T, "hot"), zero_shot(T, "up")],
                                                    ["cold", "down"], T)}
    plain = AffineCombiner(4, lm=tiny_llama, basis=basis, layer=1)
    reg = AffineCombiner(4, identity_reg=2.0, lm=tiny_llama, basis=basis, layer=1)
    with torch.no_grad():
        plain.W.add_(0.1)
        reg.W.add_(0.1)
        assert float(reg._loss(batch) - plain._loss(batch)) == pytest.approx(2.0 * 16 * 0.01, rel=1e-4)
    with pytest.raises(ValueError, match="form must be one of full, diagonal"):
        AffineCombiner(4, form="lowrank")


def test_compose_job_evaluates_several_sets_with_seeded_distractors(tmp_path, tiny_llama):
    make_bank(tmp_path / "ext" / "vectors", tiny_llama)
    g = tmp_path / "google.txt"
    g.write_text(": capital-common-countries\nAthens Greece Baghdad Iraq\nBerlin Germany Cairo Egypt\n"
                 "Kabul Afghanistan Oslo Norway\nParis France Rome Italy\nLima Peru Tokyo Japan\n")
    sets = ("analogies.sets=[{name: builtin, path: builtin, max_items: 6},"
            f"{{name: google, path: '{g}', mc_distractors: 3, same_as: {{capital-common-countries: country_capital}}}}]")
    m = run_compose(tmp_path, f"basis.path={tmp_path / 'ext'}", sets, "composition=softmax", "compose.baselines=[none,oracle]")
    assert [s["name"] for s in m["analogies"]["sets"]] == ["builtin", "google"]
    assert m["analogies"]["n"] == 11 and m["analogies"]["sets"][1]["n_multiple_choice"] == 5
    for name, r in m["methods"].items():
        if name == "oracle":
            continue
        assert r["mc"]["set:builtin"]["n"] + r["mc"]["set:google"]["n"] == r["mc"]["all"]["n"]
    assert m["methods"]["oracle"]["mc"]["set:google"]["n"] == 5  # country_capital is in the bank
    from fvtrain.composition.tables import sets_table

    assert sets_table(m).columns == ["method", "builtin open", "builtin MC", "google open", "google MC"]


def test_ablations_train_each_variant_and_pair_it_with_the_reference(tmp_path, tiny_llama):
    from fvtrain.composition.ablation import nested_subset

    make_bank(tmp_path / "ext" / "vectors", tiny_llama)
    abl = ("compose.ablations=[{name: two_basis, basis: [antonym, plural]}, {name: fewer, analogies_per_relation: 2},"
           "{name: diag, form: diagonal}, {name: first, score_tokens: first}]")
    m = run_compose(tmp_path, f"basis.path={tmp_path / 'ext'}", "analogies.max_items=12",
                    "analogies.relations=[antonym,country_capital,plural]", "composition.train.analogies_per_relation=4",
                    "composition.train.trainer.max_epochs=1", "compose.eval_exact=false", abl)
    a = m["ablations"]
    assert list(a["variants"]) == ["reference", "two_basis", "fewer", "diag", "first"]
    assert a["variants"]["two_basis"]["n_basis"] == 2 and a["variants"]["reference"]["n_basis"] == 3
    assert a["variants"]["fewer"]["n_train_analogies"] == 6 and a["variants"]["reference"]["n_train_analogies"] == 12
    assert a["variants"]["diag"]["form"] == "diagonal" and a["variants"]["first"]["score_tokens"] == "first"
    # The reference is the configured scheme's own result, item for item.
    assert a["methods"]["reference"]["mc"]["all"] == m["methods"]["affine"]["mc"]["all"]
    d = a["differences"]["diag - reference"]["mc"]["all"]
    assert d["n"] == 12 and d["diff"] == pytest.approx(a["methods"]["diag"]["mc"]["all"]["acc"]
                                                      - a["methods"]["reference"]["mc"]["all"]["acc"])
    items = [AnalogyItem("a", "b", "c", ("d",), relation=r) for r in ["x", "x", "y", "x", "y", "y"]]
    assert nested_subset(items, 2) == [0, 1, 2, 4] and nested_subset(items, None) == list(range(6))
    from fvtrain.composition.tables import ablation_table

    assert [r[0] for r in ablation_table(m).rows] == ["reference", "two_basis", "fewer", "diag", "first"]


def test_ablations_are_written_as_they_finish_and_a_resumed_run_keeps_them(tmp_path, tiny_llama, monkeypatch):
    """Each variant's outcomes reach metrics.json as soon as it is evaluated; when the run stops
    during the next one, ckpt_path=last trains only what is missing and gives the same block."""
    import fvtrain.composition.training as training

    make_bank(tmp_path / "ext" / "vectors", tiny_llama)
    args = (f"basis.path={tmp_path / 'ext'}", "analogies.max_items=12", "analogies.relations=[antonym,country_capital,plural]",
            "composition.train.analogies_per_relation=4", "composition.train.trainer.max_epochs=1",
            "compose.eval_exact=false", "compose.ablations=[{name: diag, form: diagonal}, {name: two, basis: [antonym, plural]}]")
    full = run_compose(tmp_path / "full", *args)["ablations"]
    real, fits = training.fit_combiner, []

    def fit(*a, **k):
        fits.append(a[-1] if a else k.get("out"))
        if len(fits) == 3 and stop:
            raise KeyboardInterrupt("stopped during the second variant")
        return real(*a, **k)

    monkeypatch.setattr(training, "fit_combiner", fit)
    stop = True
    with pytest.raises(KeyboardInterrupt):
        run_compose(tmp_path / "cut", *args)
    on_disk = json.loads((tmp_path / "cut" / "run" / "metrics.json").read_text())["ablations"]
    assert list(on_disk["variants"]) == ["reference", "diag"]
    assert on_disk["methods"]["diag"] == full["methods"]["diag"]
    stop, fits[:] = False, []
    resumed = run_compose(tmp_path / "cut", *args, "ckpt_path=last")["ablations"]
    assert [Path(str(f)).name for f in fits[1:]] == ["two"]  # the main map, then the missing variant only
    assert resumed["methods"] == full["methods"] and resumed["differences"] == full["differences"]
    assert list(resumed["variants"]) == ["reference", "diag", "two"]


def test_repeated_source_pairs_are_scored_once_and_sources_can_be_few(tiny_llama):
    calls = []
    import fvtrain.composition.scoring as sc

    real = sc.source_scores

    def counting(lm, batch, *a, **k):
        calls.append(len(batch))
        return real(lm, batch, *a, **k)

    bank = bank_tensor(tiny_llama, 3)
    pairs = [("hot", "cold"), ("big", "small"), ("hot", "cold"), ("hot", "cold")]
    sc.source_scores = counting
    try:
        got = score_pairs(tiny_llama, pairs, bank, 1, T)
    finally:
        sc.source_scores = real
    assert sum(calls) == 2  # two distinct source pairs
    torch.testing.assert_close(got[0], got[2])
    torch.testing.assert_close(got, torch.stack([score_pairs(tiny_llama, [p], bank, 1, T)[0] for p in pairs]),
                               atol=1e-4, rtol=1e-4)
    ps = {"r": [Pair(f"x{i}", (f"y{i}",)) for i in range(10)]}
    items = analogies_from_pairs(ps, 12, seed=0, sources_per_relation=2)
    assert len(items) == 12 and len({it.a for it in items}) == 2
    assert analogies_from_pairs(ps, 12, seed=0) == analogies_from_pairs(ps, 12, seed=0, sources_per_relation=None)
