"""Fidelity to Todd et al.'s reference code: the BOS of prompts (``prompt.bos``) and the o_proj
bias of the FV (``extract.fv_bias``)."""

from __future__ import annotations

import pickle

import pytest
import torch

from fvtrain.extraction import function_vector
from fvtrain.models import load_model
from fvtrain.models.tiny import tiny_model, tiny_tokenizer
from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import bos_policy, encode_prompt, make_batch, set_bos_policy

PROMPTS = ["Q: hot\nA:", "Q: a longer prompt\nA:"]
ANSWERS = ["cold", "big dog"]


def _no_bos():
    """A tokenizer that adds no BOS of its own, like GPT-2's (its BOS token exists)."""
    tok = tiny_tokenizer(add_bos=False)
    assert tok("Q: hot", add_special_tokens=True)["input_ids"][0] != tok.bos_token_id
    return tok


def test_auto_prepends_bos_when_the_tokenizer_adds_none():
    tok = _no_bos()
    own = tok(PROMPTS[0], add_special_tokens=True)["input_ids"]
    assert encode_prompt(tok, PROMPTS[0]) == [tok.bos_token_id] + own  # auto is the default
    assert encode_prompt(tok, PROMPTS[0], bos="always") == [tok.bos_token_id] + own
    assert encode_prompt(tok, PROMPTS[0], bos="never") == own


def test_a_tokenizer_that_adds_bos_is_unchanged_and_never_doubled():
    tok = tiny_tokenizer()
    own = tok(PROMPTS[0], add_special_tokens=True)["input_ids"]
    assert own[0] == tok.bos_token_id and own[1] != tok.bos_token_id
    for policy in ("auto", "never", "always"):
        assert encode_prompt(tok, PROMPTS[0], bos=policy) == own
    # A prompt that already starts with the BOS text gets no second one either.
    no_bos = _no_bos()
    assert encode_prompt(no_bos, "<bos>" + PROMPTS[0]).count(no_bos.bos_token_id) == 1


def test_batch_follows_the_tokenizer_policy_in_prompt_columns_only():
    tok = _no_bos()
    b = make_batch(tok, PROMPTS, ANSWERS)
    P = b.prompt_len
    for i, p in enumerate(PROMPTS):
        n = int(b.prompt_mask[i].sum())
        assert b.prompt_ids[i, P - n] == tok.bos_token_id  # the first real token is the BOS
    assert tok.bos_token_id not in b.target_ids.tolist()[1]
    set_bos_policy(tok, "never")
    assert bos_policy(pickle.loads(pickle.dumps(tok))) == "never"  # survives ddp_spawn pickling
    b2 = make_batch(tok, PROMPTS, ANSWERS)
    assert b2.prompt_len == P - 1
    for i in range(2):
        assert b2.prompt_ids[i, b2.prompt_len - int(b2.prompt_mask[i].sum())] != tok.bos_token_id
    torch.testing.assert_close(b2.target_ids, b.target_ids)


def test_gpt2_without_tokenizer_bos_scores_like_the_reference_prompt():
    """A GPT-2 whose tokenizer adds no BOS reads, under ``auto``, exactly the ids of the tokenizer
    that adds it (what Todd et al. feed), for scoring and generation alike."""
    model, with_bos = tiny_model("gpt2")
    ref = FrozenLM(model, with_bos)
    lm = FrozenLM(model, _no_bos())
    a, b = ref.batch(PROMPTS, ANSWERS), lm.batch(PROMPTS, ANSWERS)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    torch.testing.assert_close(lm.score(b).target_logprob, ref.score(a).target_logprob)
    assert lm.generate(PROMPTS, max_new_tokens=3) == ref.generate(PROMPTS, max_new_tokens=3)
    set_bos_policy(lm.tokenizer, "never")
    assert lm.batch(PROMPTS, ANSWERS).prompt_len == a.prompt_len - 1


def test_bad_bos_policy():
    with pytest.raises(ValueError, match="prompt.bos='sometimes': it must be one of auto, never, always"):
        encode_prompt(tiny_tokenizer(), "Q: a", bos="sometimes")
    with pytest.raises(ValueError, match="prompt.bos='x'"):
        set_bos_policy(tiny_tokenizer(), "x")
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "Q": 1, ":": 2, "a": 3}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]")
    assert encode_prompt(tok, "Q: a") == [1, 2, 3]  # no BOS token at all: auto leaves it alone
    with pytest.raises(ValueError, match="this tokenizer has no BOS token"):
        encode_prompt(tok, "Q: a", bos="always")


def test_fv_bias_per_head_adds_k_biases():
    lm = load_model("tiny-gpt2")  # Conv1D c_proj with a (non-zero) bias
    mean = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=torch.Generator().manual_seed(0))
    heads = [(1, 2, 0.5), (1, 0, 0.4), (3, 0, 0.2)]
    plain = function_vector(lm, mean, heads)
    todd = function_vector(lm, mean, heads, bias="per_head")
    b1, b3 = lm.adapter.out_proj_bias(1), lm.adapter.out_proj_bias(3)
    assert b1.abs().max() > 0
    torch.testing.assert_close(todd, plain + 2 * b1 + b3, rtol=1e-5, atol=1e-6)
    # Todd et al.'s construction: the whole out_proj on each head's zero-padded mean.
    ref = torch.zeros(lm.d_model)
    for l, h, _ in heads:
        x = torch.zeros(lm.n_heads * lm.head_dim)
        x[h * lm.head_dim:(h + 1) * lm.head_dim] = mean[l, h]
        ref += lm.adapter.out_proj(l)(x.reshape(1, 1, -1))[0, 0].detach()
    torch.testing.assert_close(todd, ref, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="extract.fv_bias='twice'"):
        function_vector(lm, mean, heads, bias="twice")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_fv_bias_is_a_no_op_without_an_o_proj_bias(family):
    lm = load_model(f"tiny-{family}")
    assert lm.adapter.out_proj_bias(0) is None
    mean = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=torch.Generator().manual_seed(1))
    heads = [(0, 1, 0.3), (2, 3, 0.1)]
    assert torch.equal(function_vector(lm, mean, heads, bias="per_head"), function_vector(lm, mean, heads))


# -- extract.fv_variant: the FV centred against baseline head means ------------------------------------

@pytest.mark.parametrize("family", ["gpt2", "gemma3"])
def test_centred_fv_is_plain_minus_the_baseline_contribution(family):
    from fvtrain.extraction import centred_function_vector

    lm = load_model(f"tiny-{family}")
    g = torch.Generator().manual_seed(2)
    mean = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=g)
    base = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=g)
    heads = [(1, 2, 0.5), (3, 0, 0.2), (1, 0, 0.1)]
    for bias in ("none", "per_head"):
        cen = centred_function_vector(lm, mean, base, heads, bias=bias)
        assert torch.equal(cen, function_vector(lm, mean, heads, bias=bias) - function_vector(lm, base, heads))
    assert torch.equal(centred_function_vector(lm, mean, mean, heads), torch.zeros(lm.d_model))


@pytest.mark.parametrize("variant", ["centred", "centred_zero_shot"])
def test_extracted_centred_fv_against_plain(variant):
    """Same prompts, AIE and heads as the plain FV; the vector is plain minus the heads' writes at
    their means over the baseline twins (shuffled demonstration answers, or the query alone)."""
    import random

    from omegaconf import OmegaConf

    from fvtrain.data import load, split_relation
    from fvtrain.extraction import mean_head_activations
    from fvtrain.extraction.job import extract_relation
    from fvtrain.prompts import PromptTemplate, sample_demos, shuffled_icl, zero_shot

    lm = load_model("tiny-llama")
    split = split_relation(load("builtin", relations=["antonym"]).relations["antonym"], 20, None, 0)
    cfg = {"n_prompts": 5, "n_corrupt": 3, "n_shots": 3, "k": 3, "filter_correct": False,
           "aie_impl": "fast", "max_rows": 512, "layer_start": True, "batch_size": 4}
    T = PromptTemplate()
    plain = extract_relation(lm, split, OmegaConf.create(cfg), T, 0, 1)
    cen = extract_relation(lm, split, OmegaConf.create({**cfg, "fv_variant": variant}), T, 0, 1)
    assert plain.baseline is None
    assert torch.equal(plain.mean, cen.mean) and torch.equal(plain.aie, cen.aie) and plain.heads == cen.heads
    rng, train = random.Random("0-antonym"), list(split.train)
    queries = [rng.choice(train) for _ in range(5)]
    demos = [sample_demos(train, q.x, 3, rng) for q in queries]
    if variant == "centred":
        brng = random.Random("0-antonym-baseline")
        prompts = [shuffled_icl(T, d, q.x, brng) for d, q in zip(demos, queries)]
    else:
        prompts = [zero_shot(T, q.x) for q in queries]
    torch.testing.assert_close(cen.baseline, mean_head_activations(lm, prompts), rtol=1e-5, atol=1e-6)
    expected = plain.vector - function_vector(lm, cen.baseline, cen.heads)
    torch.testing.assert_close(cen.vector, expected, rtol=0, atol=0)
    assert not torch.allclose(cen.vector, plain.vector)
    with pytest.raises(ValueError, match="extract.fv_variant='other'"):
        extract_relation(lm, split, OmegaConf.create({**cfg, "fv_variant": "other"}), T, 0, 1)


@pytest.mark.parametrize("override,key", [("prompt.bos=sometimes", "prompt.bos"),
                                          ("extract.fv_bias=twice", "extract.fv_bias"),
                                          ("extract.fv_variant=other", "extract.fv_variant")])
def test_options_are_checked_before_model_work(override, key):
    from fvtrain import api
    from fvtrain.errors import ConfigError
    from fvtrain.extraction.job import check_options

    check_options(api.job_config("extract"))  # the defaults: auto, none, plain
    with pytest.raises(ConfigError, match=f"{key}="):
        check_options(api.job_config("extract", [override]))
