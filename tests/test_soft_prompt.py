"""The soft-prompt baseline on tiny random models: the soft prompt changes only the prompt's input
embeddings (a manual forward on the concatenated embeddings gives the same logits; no soft token
gives plain zero-shot), training lowers the training loss with the LM untouched, and the training
job reports it as a column of the test table with a bootstrap interval."""

from __future__ import annotations

import json

import lightning
import pytest
import torch

from fvtrain.data.splits import Split
from fvtrain.data.types import Pair
from fvtrain.prompts import PromptTemplate, encode_prompt, make_batch, zero_shot
from fvtrain.training.soft_prompt import (
    SoftPromptModule,
    initial_prompts,
    insert_soft_prompt,
)

T = PromptTemplate()
WORDS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "new"),
         ("wet", "dry"), ("dark", "light"), ("hard", "soft"), ("high", "low"), ("rich", "poor"),
         ("long", "short"), ("full", "empty")]


def _splits() -> dict[str, Split]:
    pairs = [Pair(x, (y,)) for x, y in WORDS]
    flip = [Pair(y, (x,)) for x, y in WORDS]
    return {"a": Split(tuple(pairs[:8]), tuple(pairs[8:10]), tuple(pairs[10:]), "a"),
            "b": Split(tuple(flip[:8]), tuple(flip[8:10]), tuple(flip[10:]), "b")}


def _tiny(family: str):
    from fvtrain.models import load_model

    return load_model(f"tiny-{family}")


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])  # own BOS; BOS added by fvtrain; scaled embeddings
def test_soft_prompt_logits_equal_a_manual_forward_on_concatenated_embeddings(family):
    lm = _tiny(family)
    k = 3
    soft = torch.randn(2, k, lm.d_model, generator=torch.Generator().manual_seed(0))
    m = SoftPromptModule(["a", "b"], soft).attach_lm(lm)
    prompts = [zero_shot(T, "hot"), zero_shot(T, "the quick brown fox")]  # different lengths: left padding
    b = make_batch(lm.tokenizer, prompts, ["cold", "dog"], T)
    ridx = torch.tensor([1, 0])
    with torch.no_grad():
        got = m.logits(b, m.vectors[ridx], 1)[:, -1]
    bos = lm.tokenizer.bos_token_id
    for row, (p, r) in enumerate(zip(prompts, ridx.tolist())):
        ids = torch.tensor([encode_prompt(lm.tokenizer, p)])
        assert bos is not None and int(ids[0, 0]) == bos  # every prompt starts with a BOS here
        e = lm.model.get_input_embeddings()(ids)
        manual = torch.cat([e[:, :1], soft[r][None].to(e.dtype), e[:, 1:]], 1)
        with torch.no_grad():
            want = lm.model(inputs_embeds=manual).logits[0, -1]
        torch.testing.assert_close(got[row], want, atol=1e-4, rtol=1e-4)
    # The soft prompt is the only difference from the plain prompt: it changes the logits.
    with torch.no_grad():
        plain = lm.forward(b.prompt_ids, b.prompt_mask).logits[:, -1]
    assert not torch.allclose(got, plain, atol=1e-3)


def test_zero_soft_tokens_is_plain_zero_shot(tiny_llama):
    lm = tiny_llama
    m = SoftPromptModule(["a"], torch.zeros(1, 0, lm.d_model)).attach_lm(lm)
    b = make_batch(lm.tokenizer, [zero_shot(T, "hot"), zero_shot(T, "the quick brown fox")], ["cold", "dog"], T)
    with torch.no_grad():
        got = m.logits(b, m.vectors[torch.tensor([0, 0])], 1)[:, -1]
        want = lm.forward(b.prompt_ids, b.prompt_mask).logits[:, -1]
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_insert_soft_prompt_keeps_left_padding_and_alignment():
    e = torch.arange(2 * 4, dtype=torch.float32).view(2, 4, 1)  # row 0: one pad column, row 1: none
    mask = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
    soft = torch.tensor([[[-1.0], [-2.0]], [[-3.0], [-4.0]]])
    out, m = insert_soft_prompt(e, mask, soft, torch.tensor([2, 1]))
    assert out[..., 0].tolist() == [[0, 1, -1, -2, 2, 3], [4, -3, -4, 5, 6, 7]]
    assert m.tolist() == [[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]]


def test_initial_prompts_text_and_random(tiny_llama):
    lm = tiny_llama
    text = initial_prompts(lm, ["a", "b"], 5, "text", "Answer the question.", 0, 1.0)
    ids = lm.tokenizer("Answer the question.", add_special_tokens=False)["input_ids"]
    want = lm.embed(torch.tensor([[ids[i % len(ids)] for i in range(5)]]))[0]
    assert text.shape == (2, 5, lm.d_model)
    torch.testing.assert_close(text[0], want)
    torch.testing.assert_close(text[1], want)
    r1 = initial_prompts(lm, ["a", "b"], 4, "random", "", 3, 0.5)
    r2 = initial_prompts(lm, ["a", "b"], 4, "random", "", 3, 0.5)
    assert torch.equal(r1, r2) and not torch.allclose(r1[0], r1[1])  # seeded, one draw per relation
    assert float(r1.pow(2).mean().sqrt()) == pytest.approx(0.5, rel=0.1)


def test_training_lowers_the_loss_and_leaves_the_lm_untouched(tiny_llama):
    from functools import partial

    from fvtrain.data.datamodules import RelationDataModule

    lm = tiny_llama
    splits = _splits()
    weights = {k: v.clone() for k, v in lm.model.state_dict().items()}
    init = initial_prompts(lm, list(splits), 4, "text", "Answer the question.", 0, 1.0)
    m = SoftPromptModule(list(splits), init, optimizer=partial(torch.optim.Adam, lr=0.05)).attach_lm(lm)
    dm = RelationDataModule(splits, T, test_icl=False, batch_size=4, eval_batch_size=8, seed=0)
    dm.setup("fit")

    def train_nll() -> float:
        total, n = 0.0, 0
        with torch.no_grad():
            for item in dm.train_dataloader():
                batch, ridx, _ = m.prepare(item)
                total += float(m.loss(batch, ridx)[1].sum())
                n += len(batch)
        return total / n

    before = train_nll()
    trainer = lightning.Trainer(accelerator="cpu", devices=1, max_epochs=2, logger=False, enable_progress_bar=False,
                                enable_checkpointing=False, use_distributed_sampler=False, enable_model_summary=False,
                                num_sanity_val_steps=0)
    trainer.fit(m, datamodule=dm)
    after = train_nll()
    assert after < before - 0.1, (before, after)
    assert trainer.global_step == 2 * len(dm.batches("train"))
    assert not torch.equal(m.vectors.detach(), m.v0)
    assert (m.best_epoch >= 0).all()  # per-relation selection on the validation split
    # The LM: same weights, no gradients, still in eval mode.
    for k, v in lm.model.state_dict().items():
        assert torch.equal(v, weights[k]), k
    assert not lm.model.training
    assert all(p.grad is None and not p.requires_grad for p in lm.model.parameters())
    assert set(m.state_dict()) == {"vectors", "v0", "best_vectors", "best_score", "best_epoch", "best_val_acc",
                                   "best_val_prob"}  # the soft prompts only, never the LM


def test_config_refuses_bad_soft_prompt_settings(tmp_path):
    from fvtrain.config import compose
    from fvtrain.errors import ConfigError
    from fvtrain.training.job import baselines_needed, check_ffv

    cfg = compose("train", output_dir=tmp_path)
    assert "soft_prompt" not in list(cfg.ffv.baselines)  # off by default
    cfg.ffv.baselines = ["soft_prompt", "mean_diff"]
    check_ffv(cfg)
    assert baselines_needed(cfg.ffv) == ["mean_diff"]  # trained, not built as a vector
    cfg.ffv.soft_prompt.n_tokens = 0
    with pytest.raises(ConfigError, match="n_tokens"):
        check_ffv(cfg)
    cfg.ffv.soft_prompt.n_tokens = 2
    cfg.ffv.soft_prompt.init = "vocab"
    with pytest.raises(ConfigError, match="init"):
        check_ffv(cfg)


def test_training_job_reports_the_soft_prompt_with_an_interval(tiny_llama, tmp_path):
    from fvtrain import api
    from fvtrain.artifacts import load_tensors
    from fvtrain.training.tables import completion_table, differences_table

    res = api.finetune(tiny_llama, ["antonym", "country_capital"], tmp_path / "run", max_epochs=1, overrides={
        "extract.n_prompts": 4, "extract.n_corrupt": 3, "extract.n_shots": 3, "extract.k": 3,
        "extract.layer_sweep": False, "ffv.n_shots": 3, "ffv.icl": False, "ffv.eval_exact": False,
        "ffv.baselines": ["soft_prompt"], "ffv.soft_prompt.n_tokens": 2, "logger": []})
    out = res.out
    m = json.loads((out / "metrics.json").read_text())
    table = m["zero_shot_acc"]
    assert table["methods"][-1] == "soft_prompt" and "ffv" in table["methods"]
    assert 0.0 <= table["mean"]["soft_prompt"] <= 1.0
    for r in ("antonym", "country_capital"):
        entry = m["relations"][r]["zero_shot"]["soft_prompt"]
        assert entry["n"] == m["relations"][r]["n_test"] == m["relations"][r]["zero_shot"]["ffv"]["n"]
        assert table["relations"][r]["soft_prompt"] == entry["acc"]
    lo, hi = table["intervals"]["mean"]["soft_prompt"]
    assert lo <= table["mean"]["soft_prompt"] <= hi
    assert "ffv - soft_prompt" in table["intervals"]["differences"]
    outcomes = json.loads((out / "test_outcomes.json").read_text())["outcomes"]
    assert sorted(outcomes["zero_shot/soft_prompt"]["key"]) == sorted(outcomes["zero_shot/ffv"]["key"])
    assert "soft_prompt" in completion_table(m).columns and differences_table(m) is not None
    # Same budget: as many optimisation steps as the FFV; k x d_model parameters per relation.
    sp = m["soft_prompt"]
    assert sp["params"]["per_relation"] == 2 * tiny_llama.d_model and sp["params"]["ffv_per_relation"] == tiny_llama.d_model
    ffv_ckpt = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    sp_ckpt = torch.load(out / "checkpoints" / "soft_prompt" / "last.ckpt", map_location="cpu", weights_only=True)
    assert sp["steps"] == sp_ckpt["global_step"] == ffv_ckpt["global_step"] > 0
    assert sp_ckpt["state_dict"]["vectors"].shape == (2, 2, tiny_llama.d_model)  # no LM weights in it
    assert all(not k.startswith(("model.", "_lm")) for k in sp_ckpt["state_dict"])
    saved = load_tensors(out / "soft_prompt" / "prompts.safetensors")["prompts"]
    assert saved.shape == (2, 2, tiny_llama.d_model)
