"""AIE fast path equals the reference; FV construction; bad input."""

from __future__ import annotations

import random

import pytest
import torch

from fvtrain.extraction import aie_fast, aie_reference, function_vector, mean_head_activations, top_heads
from fvtrain.models import load_model
from fvtrain.prompts import PromptTemplate, make_batch, sample_icl_prompts


class P:
    def __init__(self, x, y):
        self.x, self.answers = x, (y,)


PAIRS = [P(a, b) for a, b in [("hot", "cold"), ("big", "small"), ("up", "down"), ("good", "bad"),
                              ("fast", "slow"), ("open", "close"), ("light", "dark"), ("left", "right"),
                              ("happy", "sad"), ("begin", "end"), ("quick", "lazy"), ("tree", "house")]]


def _prompts(lm, n, shots, seed=0, shuffled=True):
    rng = random.Random(seed)
    # Different shot counts give prompts of different lengths, so the batch is left-padded.
    out = []
    for i in range(n):
        out += sample_icl_prompts(PromptTemplate(), PAIRS, [PAIRS[i % len(PAIRS)]],
                                  shots - (i % 3), rng, shuffled=shuffled)
    return make_batch(lm.tokenizer, [p for p, _ in out], [a for _, a in out])


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen3", "gpt2", "gpt_neox", "gptj"])
@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_fast_aie_equals_reference(family, attn):
    lm = load_model(f"tiny-{family}", attn_implementation=attn)
    clean = _prompts(lm, 8, 4, shuffled=False)
    mean = mean_head_activations(lm, [lm.tokenizer.decode(r[m.bool()], skip_special_tokens=True)
                                      for r, m in zip(clean.prompt_ids, clean.prompt_mask)], batch_size=3)
    # Scale up so the patches move probabilities visibly on a random model.
    mean = mean * 5
    corrupt = _prompts(lm, 5, 4, seed=1)
    assert corrupt.prompt_mask.sum(1).unique().numel() > 1  # really left-padded
    ref, ref_base = aie_reference(lm, corrupt, mean)
    assert ref.abs().max() > 1e-4  # the patches did something
    # Odd chunking on purpose: heads across layers (7 rows), one layer's heads split (3 rows);
    # then every head of a prompt in one forward, rows joining at their layers (one and two
    # prompts per forward).
    n_heads = lm.n_layers * lm.n_heads
    for layer_start, max_rows in [(False, 7), (True, 7), (True, 3), (True, n_heads), (True, 2 * n_heads + 1)]:
        fast, fast_base = aie_fast(lm, corrupt, mean, max_rows=max_rows, layer_start=layer_start)
        torch.testing.assert_close(fast_base, ref_base, rtol=0, atol=1e-5)
        assert (fast - ref).abs().max() <= 1e-5, (layer_start, max_rows)
        assert [h[:2] for h in top_heads(fast.mean(0), 3)] == [h[:2] for h in top_heads(ref.mean(0), 3)]


def test_mean_activations_batched_equals_single():
    lm = load_model("tiny-qwen3")
    prompts = [p for p, _ in sample_icl_prompts(PromptTemplate(), PAIRS, PAIRS[:5], 3, random.Random(0))]
    a = mean_head_activations(lm, prompts, batch_size=5)
    b = mean_head_activations(lm, prompts, batch_size=1)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert a.shape == (lm.n_layers, lm.n_heads, lm.head_dim)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2", "gptj", "gpt_neox"])
def test_mean_activations_equal_the_heads_of_the_full_forward(family):
    """Mean activations leave out the last block's MLP (nothing they read comes after it): they
    equal the head inputs recorded during the model's whole forward, parallel blocks included."""
    lm = load_model(f"tiny-{family}")
    prompts = [p for p, _ in sample_icl_prompts(PromptTemplate(), PAIRS, PAIRS[:5], 3, random.Random(0))]
    b = make_batch(lm.tokenizer, prompts, ["x"] * len(prompts))
    with torch.no_grad(), lm.record_heads() as rec:
        lm.forward(b.prompt_ids, b.prompt_mask)
    want = torch.stack([rec[l].mean(0) for l in range(lm.n_layers)])
    torch.testing.assert_close(mean_head_activations(lm, prompts, batch_size=5), want, rtol=1e-5, atol=1e-6)
    owner, name = lm.adapter.mlp_slot(lm.n_layers - 1)
    assert type(getattr(owner, name)).__name__ != "_NoMLP"  # the MLP is back after the pass


@pytest.mark.parametrize("pattern", ["all", "none", "every_third", "late"])
def test_icl_filter_keeps_the_first_solved_and_runs_no_candidate_it_cannot_keep(pattern):
    """The AIE's candidate filter keeps the first n solved candidates in order, judges each at
    most once, in chunks no larger than the batch size, and stops before any candidate that could
    no longer be kept (beyond the smallest chunk)."""
    from fvtrain.extraction.job import MIN_FILTER_CHUNK, first_solved

    cands = list(range(75))
    good = {"all": lambda i: True, "none": lambda i: False, "every_third": lambda i: i % 3 == 0,
            "late": lambda i: i >= 40}[pattern]
    judged: list[list[int]] = []

    def judge(chunk):
        judged.append(list(chunk))
        return [good(i) for i in chunk]

    n = 25
    kept = first_solved(cands, n, 16, judge)
    assert kept == [i for i in cands if good(i)][:n]
    flat = [i for chunk in judged for i in chunk]
    assert flat == cands[: len(flat)]  # in order, each once
    assert all(len(chunk) <= 16 for chunk in judged)
    if len(kept) == n:
        last_needed = cands.index(kept[-1])
        assert len(flat) <= last_needed + MIN_FILTER_CHUNK
    else:
        assert flat == cands  # too few solved: every candidate was judged


def test_function_vector_is_sum_of_head_outputs():
    """On an architecture without an attention-output norm the FV is the plain W_O sum."""
    lm = load_model("tiny-gpt2")
    mean = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=torch.Generator().manual_seed(0))
    heads = [(1, 2, 0.5), (3, 0, 0.2)]
    fv = function_vector(lm, mean, heads)
    w1 = lm.adapter.out_proj_weight(1)[:, 2 * lm.head_dim: 3 * lm.head_dim]
    w3 = lm.adapter.out_proj_weight(3)[:, 0: lm.head_dim]
    torch.testing.assert_close(fv, w1 @ mean[1, 2] + w3 @ mean[3, 0], rtol=1e-5, atol=1e-6)


def test_top_heads_order_and_k_errors():
    aie = torch.tensor([[0.1, 0.5], [0.3, -0.2]])
    assert [h[:2] for h in top_heads(aie, 2)] == [(0, 1), (1, 0)]
    with pytest.raises(ValueError, match=r"k=5 heads requested, but the model has 4 heads \(2 layers x 2\)"):
        top_heads(aie, 5)


def test_too_few_pairs_for_shots():
    with pytest.raises(ValueError, match="10-shot prompts need at least 10 demonstration pairs"):
        sample_icl_prompts(PromptTemplate(), PAIRS[:5], PAIRS[:1], 10, random.Random(0))


@pytest.mark.parametrize("family", ["gemma3", "gemma2", "llama", "gpt2"])
def test_residual_contributions_sum_to_what_the_residual_receives(family):
    """All heads' contributions (plus the bias share) equal the attention block's residual write."""
    lm = load_model(f"tiny-{family}")
    v = torch.randn(lm.n_heads, lm.head_dim, generator=torch.Generator().manual_seed(0))
    a = lm.adapter
    with torch.no_grad():
        contrib = a.residual_contributions(2, v).sum(0)
        out = a.out_proj(2)(v.reshape(1, -1))[0] if not a.spec.conv1d else a.out_proj(2)(v.reshape(1, 1, -1))[0, 0]
        if a.spec.attn_out_norm:
            from fvtrain.models.adapters import _get
            norm = _get(a.blocks[2], a.spec.attn_out_norm)
            expected = norm(out)
        else:
            bias = a.out_proj_bias(2)
            expected = out - (bias if bias is not None else 0)
    if a.spec.attn_out_norm:
        assert lm.adapter.model_type in ("gemma2", "gemma3_text")
    torch.testing.assert_close(contrib, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("family", ["llama", "gemma3", "gpt2"])
def test_completion_of_several_methods_in_one_pass_equals_full_forwards(family):
    """completion_methods (one prefix, the last token once per method, one unembedded column) gives
    what a full forward per method gives (lm.score: prompt and target, logits at every target
    column), on left-padded 3-shot and zero-shot prompts."""
    from fvtrain.evaluation.relation import completion, completion_methods
    from fvtrain.prompts import icl, zero_shot

    lm = load_model(f"tiny-{family}")
    T = PromptTemplate()
    words = [("hot", "cold"), ("big", "small"), ("up", "down"), ("good", "bad"), ("fast", "slow"),
             ("open", "close"), ("light", "dark")]
    rng = random.Random(0)
    prompts = [zero_shot(T, x) if i % 2 else icl(T, rng.sample(words, 3), x)
               for i, (x, _) in enumerate(words)]
    answers = [[y, "dog"] if i == 0 else [y] for i, (_, y) in enumerate(words)]
    g = torch.Generator().manual_seed(0)
    rows = torch.randn(len(prompts), lm.d_model, generator=g) * 3
    methods = {"none": None, "shared": rows[0], "rows": rows}
    got = completion_methods(lm, prompts, answers, methods, layer=1, batch_size=3)
    for name, v in methods.items():
        correct, probs = [], []
        for i in range(0, len(prompts), 3):
            b = make_batch(lm.tokenizer, prompts[i:i + 3], answers[i:i + 3])
            vec = v if v is None or v.dim() == 1 else v[i:i + 3]
            s = lm.score(b, vector=vec, layer=1 if v is not None else None)
            correct += s.correct.int().tolist()
            probs += s.first_prob.tolist()
        assert got[name]["correct"] == correct, name
        assert got[name]["acc"] == pytest.approx(sum(correct) / len(correct))
        assert got[name]["prob"] == pytest.approx(sum(probs) / len(probs), rel=1e-5)
        assert got[name]["n"] == len(prompts)
    assert got["rows"]["prob"] != pytest.approx(got["shared"]["prob"], rel=1e-3)
    assert completion(lm, prompts, answers, rows, 1, batch_size=2)["correct"] == got["rows"]["correct"]
    # The AIE's candidate filter reads the same outcome from the prompt columns alone.
    from fvtrain.extraction.job import solved

    b = make_batch(lm.tokenizer, prompts, answers)
    assert solved(lm, b).tolist() == lm.score(b).correct.tolist()
    assert got["none"]["correct"] == solved(lm, b).int().tolist()


@pytest.mark.parametrize("family, attn", [("llama", "eager"), ("gemma3", "sdpa"), ("gpt2", "eager"),
                                          ("gptj", "sdpa"), ("qwen3", "sdpa")])
def test_layer_sweep_equals_completion_at_each_layer(family, attn):
    """The layer sweep (every layer's injection as rows of one forward per batch) gives, layer by
    layer, what completion with the vector at that layer gives, on left-padded zero-shot and ICL
    prompts, with batches that do not divide the prompts."""
    from fvtrain.evaluation.relation import completion, layer_sweep
    from fvtrain.prompts import icl, zero_shot

    lm = load_model(f"tiny-{family}", attn_implementation=attn)
    T = PromptTemplate()
    words = [("hot", "cold"), ("big", "small"), ("up", "down"), ("good", "bad"), ("fast", "slow"),
             ("open", "close"), ("light", "dark")]
    rng = random.Random(1)
    prompts = [zero_shot(T, x) if i % 2 else icl(T, rng.sample(words, 2), x) for i, (x, _) in enumerate(words)]
    answers = [[y] for _, y in words]
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(2)) * 4
    got = layer_sweep(lm, prompts, answers, v, batch_size=3)
    assert len(got["acc"]) == len(got["prob"]) == lm.n_layers
    for layer in range(lm.n_layers):
        want = completion(lm, prompts, answers, v, layer, batch_size=3)
        assert got["acc"][layer] == pytest.approx(want["acc"]), layer
        assert got["prob"][layer] == pytest.approx(want["prob"], rel=1e-5), layer
    assert len(set(got["prob"])) == lm.n_layers  # each layer's own injection


def test_auto_max_rows_fits_free_memory_and_gives_the_same_aie():
    """extract.max_rows=auto: the rows' keys/values copies, one block's activations and a vocabulary
    block fit in a quarter of free memory, in multiples of 16, at most 2,048 on a CPU; the AIE is
    the one a fixed max_rows gives; a value that is neither an integer nor auto is refused."""
    from omegaconf import OmegaConf

    from fvtrain.errors import ConfigError
    from fvtrain.extraction.job import aie_rows
    from fvtrain.models.wrapper import CPU_MAX_ROWS, MIN_ROWS
    from fvtrain.preflight import check_extract

    lm = load_model("tiny-llama")
    a = lm.adapter
    per_row = (a.n_layers * 2 * a.n_kv_heads * 21 * a.head_dim * 4
               + (a.n_heads * a.head_dim + 3 * a.d_intermediate + 4 * a.d_model) * 4 + 2 * 1024 * 4)
    assert lm.rows_that_fit(20, free_bytes=4 * per_row * 100) == 96  # 100 rows fit: 96, a multiple of 16
    assert lm.rows_that_fit(20, free_bytes=4 * per_row * 10**6) == CPU_MAX_ROWS
    assert lm.rows_that_fit(20, free_bytes=0) == MIN_ROWS
    assert MIN_ROWS <= lm.rows_that_fit(20) <= CPU_MAX_ROWS  # this machine's free memory
    corrupt = _prompts(lm, 5, 4, seed=1)
    mean = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=torch.Generator().manual_seed(0))
    auto = aie_rows(lm, "auto", corrupt)
    torch.testing.assert_close(aie_fast(lm, corrupt, mean, max_rows=auto)[0],
                               aie_fast(lm, corrupt, mean, max_rows=512)[0], rtol=0, atol=1e-6)
    check_extract(OmegaConf.create({"max_rows": "auto"}))
    with pytest.raises(ConfigError, match=r"extract.max_rows='lots': it must be an integer >= 1, or auto"):
        check_extract(OmegaConf.create({"max_rows": "lots"}))
    from fvtrain.config import compose
    from fvtrain.preflight import check_config

    check_config(compose("compose", ["compose.max_rows=auto"]))
    with pytest.raises(ConfigError, match=r"compose.max_rows=0: it must be an integer >= 1, or auto"):
        check_config(compose("compose", ["compose.max_rows=0"]))
