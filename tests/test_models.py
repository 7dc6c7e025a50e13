"""Model wrapper, architecture adapters and hooks on tiny random models of several families."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fvtrain.models import ModelNotFoundError, UnsupportedArchitectureError, load_model
from fvtrain.models.wrapper import FrozenLM, _fresh_view

PROMPTS = ["Q: hot\nA:", "Q: the quick brown fox\nA:", "Q: up\nA:", "Q: a b c d e f g\nA:"]
ANSWERS = ["cold", "dog", ["down", "under"], "house"]


def _hooks_left(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_geometry_matches_projection(tiny_lm):
    a = tiny_lm.adapter
    w = a.out_proj_weight(0)
    assert w.shape == (a.d_model, a.n_heads * a.head_dim)
    assert a.n_kv_heads <= a.n_heads


def test_head_dim_differs_from_hidden_over_heads():
    lm = load_model("tiny-qwen3")
    assert lm.head_dim * lm.n_heads != lm.d_model
    assert lm.head_dim == lm.model.config.head_dim


def test_recorded_heads_reproduce_out_proj(tiny_lm):
    """Per-head inputs through each head's slice of W_O, summed, plus bias once = real output."""
    lm = tiny_lm
    batch = lm.batch(PROMPTS, ANSWERS)
    outputs = {}
    handles = [
        lm.adapter.out_proj(l).register_forward_hook(
            lambda m, a, o, l=l: outputs.__setitem__(l, o[:, -1].detach()))
        for l in range(lm.n_layers)
    ]
    try:
        with torch.no_grad(), lm.record_heads() as rec:
            lm.forward(batch.prompt_ids, batch.prompt_mask)
    finally:
        for h in handles:
            h.remove()
    for l in range(lm.n_layers):
        heads = rec[l]
        assert heads.shape == (len(PROMPTS), lm.n_heads, lm.head_dim)
        total = sum(lm.adapter.head_contribution(l, h, heads[:, h]) for h in range(lm.n_heads))
        bias = lm.adapter.out_proj_bias(l)
        if bias is not None:
            total = total + bias
        torch.testing.assert_close(total, outputs[l], rtol=1e-5, atol=1e-5)


class _AddAfter(nn.Module):
    """The block, then + v at the last column, without any hook: injection 'by hand'."""

    def __init__(self, block: nn.Module, v: torch.Tensor):
        super().__init__()
        self.block, self.v = block, v

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        h = out[0] if isinstance(out, tuple) else out
        h = h.clone()
        h[:, -1] += self.v
        return (h,) + tuple(out[1:]) if isinstance(out, tuple) else h


@pytest.mark.parametrize("layer", [0, 2])
def test_injection_equals_adding_by_hand(tiny_lm, layer):
    lm = tiny_lm
    batch = lm.batch(PROMPTS, ANSWERS)
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        with lm.inject(v, layer):
            hooked = lm.forward(batch.prompt_ids, batch.prompt_mask).logits
        blocks = lm.adapter.blocks
        original = blocks[layer]
        blocks[layer] = _AddAfter(original, v)
        try:
            by_hand = lm.forward(batch.prompt_ids, batch.prompt_mask).logits
        finally:
            blocks[layer] = original
        plain = lm.forward(batch.prompt_ids, batch.prompt_mask).logits
    torch.testing.assert_close(hooked, by_hand, rtol=1e-5, atol=1e-5)
    assert (hooked - plain).abs().max() > 1e-4


def test_per_row_vectors_and_rows(tiny_llama):
    lm = tiny_llama
    batch = lm.batch(PROMPTS, ANSWERS)
    vs = torch.randn(2, lm.d_model, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with lm.inject(vs, 1, rows=torch.tensor([1, 3])):
            both = lm.forward(batch.prompt_ids, batch.prompt_mask).logits
        with lm.inject(vs[0], 1):
            only1 = lm.forward(batch.prompt_ids[1:2], batch.prompt_mask[1:2]).logits
        plain = lm.forward(batch.prompt_ids, batch.prompt_mask).logits
    torch.testing.assert_close(both[0], plain[0])
    torch.testing.assert_close(both[2], plain[2])
    torch.testing.assert_close(both[1], only1[0], rtol=1e-5, atol=1e-5)


def test_batched_left_padded_equals_single(tiny_lm):
    lm = tiny_lm
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(3))
    batch = lm.batch(PROMPTS, ANSWERS)
    full = lm.score(batch, vector=v, layer=1)
    with torch.no_grad(), lm.record_heads(layers=[0, 2]) as rec:
        lm.forward(batch.prompt_ids, batch.prompt_mask)
        rec_batched = {k: t.clone() for k, t in rec.items()}
    for i in range(len(PROMPTS)):
        one = lm.batch([PROMPTS[i]], [ANSWERS[i]])
        s = lm.score(one, vector=v, layer=1)
        torch.testing.assert_close(full.first_prob[i], s.first_prob[0], rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(full.target_logprob[i], s.target_logprob[0], rtol=1e-4, atol=1e-4)
        assert bool(full.correct[i]) == bool(s.correct[0])
        with torch.no_grad(), lm.record_heads(layers=[0, 2]) as rec:
            lm.forward(one.prompt_ids, one.prompt_mask)
            for l in (0, 2):
                torch.testing.assert_close(rec_batched[l][i], rec[l][0], rtol=1e-4, atol=1e-5)


def test_target_logprob_matches_full_vocabulary_forward(tiny_llama):
    """Scoring with logits only at the target columns equals a plain full-logits computation."""
    lm = tiny_llama
    batch = lm.batch(["Q: hot\nA:"], ["big dog"])
    s = lm.score(batch)
    ids = batch.input_ids
    with torch.no_grad():
        logits = lm.model(input_ids=ids).logits[0].log_softmax(-1)
    P = batch.prompt_len
    tgt = batch.target_ids[0]
    expected = sum(logits[P - 1 + j, tgt[j]] for j in range(len(tgt)))
    torch.testing.assert_close(s.target_logprob[0], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s.first_logprob[0], logits[P - 1, tgt[0]], rtol=1e-5, atol=1e-5)


def test_forward_logits_equal_the_models_own(tiny_lm):
    """FrozenLM.forward unembeds the kept columns itself (one contiguous GEMM, not transformers'
    strided head); its logits must be the causal-LM's own, for every way of choosing columns,
    on a padded batch, with a cache, and from embeddings."""
    from fvtrain.models.wrapper import position_ids_for

    lm = tiny_lm
    b = lm.batch(PROMPTS, ANSWERS)
    ids, mask = b.input_ids, b.attention_mask
    with torch.no_grad():
        want = lm.model(input_ids=ids, attention_mask=mask, position_ids=position_ids_for(mask, ids.shape[1]),
                        logits_to_keep=0).logits
        for keep, cols in ((1, slice(-1, None)), (0, slice(None)), (3, slice(-3, None)),
                           (torch.tensor([0, 2, 5]), [0, 2, 5])):
            got = lm.forward(ids, mask, logits_to_keep=keep).logits
            torch.testing.assert_close(got, want[:, cols], rtol=1e-5, atol=1e-5)
        cache = lm.prefix_cache(ids, mask)
        got = lm.continue_from(cache, ids[:, -1:], mask).logits[:, -1]
        torch.testing.assert_close(got, want[:, -1], rtol=1e-5, atol=1e-5)
        got = lm.forward_embeds(lm.embed(ids), mask, logits_to_keep=0).logits
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_repeated_continuation_equals_a_repeated_cache(tiny_lm):
    """continue_from(repeat=r) writes each prefix row r times inside its first cache update
    instead of repeating the cache first; its logits, and the cache it leaves (a second step
    from it), equal those from a cache repeated beforehand, on sliding-window layers too (the
    tiny Gemmas' window of 8 is shorter than these prompts). Each repeated row gets its own
    vector, so rows in the wrong order would show; the prefix cache is left as it was."""
    lm, r = tiny_lm, 3
    b = lm.batch(PROMPTS, ANSWERS)
    ids, mask = b.input_ids, b.attention_mask
    B, P = ids.shape[0], b.prompt_ids.shape[1]  # P - 1 prefix columns, then two steps
    assert P - 1 > 8
    cache = lm.prefix_cache(ids[:, :P], mask[:, :P])
    before = [t.clone() for layer in cache.layers for t in (layer.keys, layer.values)]
    vs = torch.randn(B * r, lm.d_model, generator=torch.Generator().manual_seed(0))
    rep = lambda t: t.repeat_interleave(r, 0)  # noqa: E731

    def two_steps(cache, repeat, widen):
        with torch.no_grad(), lm.inject(vs, 0):
            one = lm.continue_from(cache, widen(ids[:, P - 1 : P]), widen(mask[:, :P]), repeat=repeat)
            two = lm.continue_from(one.cache, rep(ids[:, P : P + 1]), rep(mask[:, : P + 1]))
        return one.logits, two.logits

    got = two_steps(cache, r, lambda t: t)
    want = two_steps(lm.repeat_cache(lm.cache_rows(cache, torch.arange(B)), r), 1, rep)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got[0][0], got[0][1])  # the rows really differ
    after = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    assert all(torch.equal(x, y) for x, y in zip(before, after))


@pytest.mark.parametrize("n_new", [1, 2])
def test_shared_prefix_attention_equals_the_repeated_cache(tiny_sdpa_lm, n_new):
    """Without keep_cache, repeated rows attend to their prompt's prefix once
    (fvtrain.models.shared_prefix) instead of to a repeated copy: outputs and the gradient of
    per-row injected vectors equal the repeated cache's, with left padding, one or two new
    tokens and sliding-window layers (the tiny Gemmas' window of 8 is shorter than the
    prompts); the output has no cache to continue from and the prefix cache is untouched."""
    from fvtrain.models import shared_prefix

    lm, r = tiny_sdpa_lm, 3
    b = lm.batch(PROMPTS, ANSWERS)
    ids, mask = b.input_ids, b.attention_mask
    B, P = ids.shape[0], b.prompt_ids.shape[1]
    assert P - 1 > 8 and not bool(mask.all())
    cache = lm.prefix_cache(ids[:, :P], mask[:, :P])
    assert shared_prefix.supported(lm.model, cache.layers)
    before = [t.clone() for layer in cache.layers for t in (layer.keys, layer.values)]

    def run(keep_cache):
        vs = torch.randn(B * r, lm.d_model, generator=torch.Generator().manual_seed(0)).requires_grad_()
        with lm.inject(vs, 1, positions=0):
            out = lm.continue_from(cache, ids[:, P - 1 : P - 1 + n_new], mask[:, : P - 1 + n_new],
                                   repeat=r, logits_to_keep=n_new, keep_cache=keep_cache)
        out.logits.float().logsumexp(-1).sum().backward()
        return out, vs.grad

    (want, want_grad), (got, got_grad) = run(True), run(False)
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got.logits[0], got.logits[1])  # the rows really differ
    assert got.cache is None and want.cache is not None
    assert all(torch.equal(x, y) for x, y in zip(before, [t for layer in cache.layers
                                                          for t in (layer.keys, layer.values)]))


def test_shared_prefix_attention_in_bfloat16_accumulates_in_float32():
    """On bfloat16 inputs the shared-prefix attention keeps scores, softmax and sums in float32,
    as sdpa's kernels do, and rounds only its output: with scores of tens (where a bfloat16 score
    is off by a tenth) it is as close to a float64 reference as sdpa on the repeated prefix."""
    from types import SimpleNamespace

    import torch.nn.functional as F

    from fvtrain.models import shared_prefix

    g = torch.Generator().manual_seed(0)
    B, r, KV, grp, T, d = 2, 3, 2, 2, 11, 16
    q = (torch.randn(B * r, KV * grp, 1, d, generator=g) * 2).bfloat16()
    k, v = (torch.randn(B * r, KV, 1, d, generator=g).bfloat16() for _ in range(2))
    pk = (torch.randn(B, KV, T, d, generator=g) * 2).bfloat16()
    pv = torch.randn(B, KV, T, d, generator=g).bfloat16()
    keys = torch.cat([pk.repeat_interleave(r, 0), k], 2)
    values = torch.cat([pv.repeat_interleave(r, 0), v], 2)
    token = shared_prefix._PREFIX.set({0: (pk, pv)})
    try:
        got, _ = shared_prefix.shared_prefix_attention(SimpleNamespace(layer_idx=0), q, k, v, None, scaling=1.0)
    finally:
        shared_prefix._PREFIX.reset(token)
    exact = F.scaled_dot_product_attention(q.double(), keys.double().repeat_interleave(grp, 1),
                                           values.double().repeat_interleave(grp, 1), scale=1.0)
    sdpa = F.scaled_dot_product_attention(q, keys.repeat_interleave(grp, 1), values.repeat_interleave(grp, 1),
                                          scale=1.0)
    assert got.dtype == torch.bfloat16
    err_shared = (got.double() - exact.transpose(1, 2)).abs().max()
    err_sdpa = (sdpa.double() - exact).abs().max()
    assert err_shared <= err_sdpa * 1.05 + 1e-3, (err_shared, err_sdpa)


def test_shared_prefix_attention_runs_only_where_it_can(tiny_llama):
    """Eager models keep the repeated cache; a layer whose attention bypasses the attention
    interface would have seen only the new tokens, and the forward says so instead."""
    from fvtrain.models import shared_prefix

    b = tiny_llama.batch(PROMPTS, ANSWERS)
    cache = tiny_llama.prefix_cache(b.prompt_ids, b.prompt_mask)
    assert not shared_prefix.supported(tiny_llama.model, cache.layers)
    lm = load_model("tiny-llama", attn_implementation="sdpa")
    c = _fresh_view(lm.prefix_cache(b.prompt_ids, b.prompt_mask))
    with pytest.raises(RuntimeError, match=r"shared-prefix attention: layers \[0\] stored new keys "
                                           r"but never attended through the attention interface"):
        with shared_prefix.shared_prefix(lm.model, c):
            c.layers[0].update(c.layers[0].keys, c.layers[0].values)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_rows_joining_at_later_blocks_continue_from_the_recorded_residual(attn):
    """join_at: unedited rows that join at blocks 0, 1, 1 and the last take the residual recorded
    there, so every row ends as the plain last token does (rows that were never overwritten would
    carry the embedding into their first block); starts that are not ascending are refused."""
    from fvtrain.models import hooks

    lm = load_model("tiny-gemma3", attn_implementation=attn)  # sliding window and one KV head
    b = lm.batch(PROMPTS, ANSWERS)
    ids, mask = b.prompt_ids, b.prompt_mask
    cache = lm.prefix_cache(ids, mask)
    starts = torch.tensor([0, 1, 1, lm.n_layers - 1])
    with torch.no_grad():
        plain, resid = lm.last_token_inputs(ids, mask, cache)
        joined = lm.last_token(ids, mask, cache, repeat=4, hidden_only=True, join=(starts, resid))
    torch.testing.assert_close(joined, plain.repeat_interleave(4, 0), rtol=1e-5, atol=1e-5)
    assert hooks.joined_rows(starts, lm.n_layers) == [1] + [3] * (lm.n_layers - 2) + [4]
    with pytest.raises(ValueError, match="join_at: starts must be one ascending start layer per row of a prompt"):
        lm.last_token(ids, mask, cache, repeat=2, hidden_only=True, join=(torch.tensor([1, 0]), resid))


@pytest.mark.parametrize("chunk", [7, 64, 100_000])
def test_vocab_stats_equal_the_full_logits(tiny_lm, chunk):
    """Chunked log-normaliser, picked logits and argmax equal those of the full logits (with the
    model's soft-cap and unembedding bias), for chunks that do and do not divide the vocabulary;
    ties go to the lowest id, as argmax does."""
    from fvtrain.models.wrapper import VocabStats

    lm = tiny_lm
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(9, lm.d_model, generator=g)
    hidden[3] = 0  # every logit equal (up to a bias): a tie across every chunk
    V = lm.logits_of(hidden[:1]).shape[-1]
    ids = torch.randint(0, V, (9, 3), generator=g)
    ids[0] = torch.tensor([0, V - 1, chunk % V])
    with torch.no_grad():
        full = lm.logits_of(hidden).float()
        st = lm.vocab_stats(hidden, ids, chunk=chunk)
    assert isinstance(st, VocabStats)
    torch.testing.assert_close(st.lse, full.logsumexp(-1), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(st.picked, full.gather(1, ids), rtol=0, atol=1e-5)
    torch.testing.assert_close(st.logprob(), full.log_softmax(-1).gather(1, ids), rtol=1e-5, atol=1e-5)
    assert st.argmax.tolist() == full.argmax(-1).tolist()
    assert lm.vocab_stats(hidden, chunk=chunk).picked is None
    # Without the argmax (a plain max per block): the same normaliser and picks, bit for bit.
    with torch.no_grad():
        lean = lm.vocab_stats(hidden, ids, chunk=chunk, argmax=False)
    assert lean.argmax is None
    assert torch.equal(lean.lse, st.lse) and torch.equal(lean.picked, st.picked)
    # With autograd on, the blocks are not shifted in place: gradients reach the hidden states.
    h, h_ref = hidden.clone().requires_grad_(), hidden.clone().requires_grad_()
    lm.vocab_stats(h, ids, chunk=chunk).logprob().sum().backward()
    lm.logits_of(h_ref).float().log_softmax(-1).gather(1, ids).sum().backward()
    torch.testing.assert_close(h.grad, h_ref.grad, rtol=1e-4, atol=1e-5)


def test_hidden_logprobs_unembed_only_target_columns(tiny_lm, monkeypatch):
    """Target log-probabilities from hidden states equal those of the full logits, and padding
    columns (a shorter target, a row with no target at all) never reach the unembedding."""
    from fvtrain.models.scoring import hidden_logprobs, token_logprobs

    lm = tiny_lm
    g = torch.Generator().manual_seed(1)
    hidden = torch.randn(4, 3, lm.d_model, generator=g)
    V = lm.logits_of(hidden[0, :1]).shape[-1]
    ids = torch.randint(0, V, (4, 3), generator=g)
    mask = torch.tensor([[1, 1, 1], [1, 0, 0], [0, 0, 0], [1, 1, 0]])
    seen = []
    real = type(lm).vocab_stats
    monkeypatch.setattr(type(lm), "vocab_stats", lambda self, h, *a, **k: seen.append(len(h)) or real(self, h, *a, **k))
    with torch.no_grad():
        got = hidden_logprobs(lm, hidden, ids, mask)
        full = lm.logits_of(hidden.reshape(12, -1)).view(4, 3, -1)
    torch.testing.assert_close(got, token_logprobs(full, ids, mask), rtol=1e-5, atol=1e-5)
    assert got[2].item() == 0.0
    assert seen == [6]
    torch.testing.assert_close(hidden_logprobs(lm, hidden, ids, mask, tokens="first"),
                               token_logprobs(full, ids, mask, tokens="first") * mask[:, 0], rtol=1e-5, atol=1e-5)
    assert seen == [6, 3]


def test_patch_heads_with_own_values_is_identity_and_others_change(tiny_lm):
    lm = tiny_lm
    batch = lm.batch(PROMPTS, ANSWERS)
    ids, mask = batch.prompt_ids, batch.prompt_mask
    with torch.no_grad():
        with lm.record_heads(layers=[1]) as rec:
            plain = lm.forward(ids, mask).logits
        own = rec[1][:, 2]  # head 2 of layer 1, every row
        n = len(PROMPTS)
        with lm.patch_heads([1] * n, [2] * n, own):
            same = lm.forward(ids, mask).logits
        with lm.patch_heads([1] * n, [2] * n, torch.zeros_like(own) + 3.0):
            changed = lm.forward(ids, mask).logits
    torch.testing.assert_close(same, plain, rtol=1e-5, atol=1e-5)
    assert (changed - plain).abs().max() > 1e-4


def test_patch_different_head_per_row(tiny_llama):
    """Row r patches its own (layer, head): equal to patching that head alone in a 1-row batch."""
    lm = tiny_llama
    one = lm.batch([PROMPTS[0]], [ANSWERS[0]])
    ids, mask = one.prompt_ids.repeat(3, 1), one.prompt_mask.repeat(3, 1)
    layers, heads = [0, 1, 3], [1, 0, 3]
    vals = torch.randn(3, lm.head_dim, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        with lm.patch_heads(layers, heads, vals):
            batched = lm.forward(ids, mask).logits
        for r in range(3):
            with lm.patch_heads([layers[r]], [heads[r]], vals[r:r + 1]):
                single = lm.forward(one.prompt_ids, one.prompt_mask).logits
            torch.testing.assert_close(batched[r], single[0], rtol=1e-5, atol=1e-5)


def test_hooks_removed_after_exit_and_exception(tiny_lm):
    lm = tiny_lm
    before = _hooks_left(lm.model)
    v = torch.ones(lm.d_model)
    with lm.inject(v, 0), lm.record_heads(), lm.patch_heads([0], [0], torch.zeros(1, lm.head_dim)):
        assert _hooks_left(lm.model) > before
    assert _hooks_left(lm.model) == before
    with pytest.raises(RuntimeError, match="boom"):
        with lm.inject(v, 0), lm.record_heads(layers=[1]):
            raise RuntimeError("boom")
    assert _hooks_left(lm.model) == before


def test_generate_edits_only_prompt_last_position(tiny_llama):
    lm = tiny_llama
    v = torch.randn(lm.d_model, generator=torch.Generator().manual_seed(5)) * 5
    prompt = "Q: hot\nA:"
    got = lm.generate([prompt], max_new_tokens=2, vector=v, layer=1)
    # By hand: step 1 with the vector at the prompt's last token; step 2 re-reads the prompt
    # plus token 1, with the vector still only at the prompt's last token (column P-1).
    ids = lm.tokenizer(prompt)["input_ids"]
    P = len(ids)
    with torch.no_grad():
        x = torch.tensor([ids])
        with lm.inject(v, 1, positions=P - 1):
            t1 = int(lm.forward(x, torch.ones_like(x)).logits[0, -1].argmax())
            x2 = torch.tensor([ids + [t1]])
            t2 = int(lm.forward(x2, torch.ones_like(x2)).logits[0, -1].argmax())
    assert got[0] == lm.tokenizer.decode([t1, t2], skip_special_tokens=True)
    assert _hooks_left(lm.model) == 0


def test_self_check_passes_on_every_family(tiny_lm):
    assert tiny_lm.self_check() > 1e-4


def test_self_check_detects_a_dead_hook(tiny_llama):
    """A block whose output is recomputed after the hook (as in old transformers) is caught."""
    from fvtrain.models.wrapper import SelfCheckError

    lm = tiny_llama
    # Simulate an architecture whose hooked module is not on the residual path.
    dummy = nn.Linear(1, 1)
    real_block = lm.adapter.block
    lm.adapter.block = lambda l: dummy
    try:
        with pytest.raises(SelfCheckError, match="did not change the logits"):
            lm.self_check()
    finally:
        lm.adapter.block = real_block


# -- bad input ----------------------------------------------------------------------------------


def test_layer_out_of_range_names_value(tiny_llama):
    with pytest.raises(ValueError, match=r"layer 7 is out of range .* 4 layers \(valid: 0\.\.3\)"):
        with tiny_llama.inject(torch.zeros(tiny_llama.d_model), 7):
            pass
    with pytest.raises(ValueError, match="layer -1 is out of range"):
        tiny_llama.record_heads(layers=[-1]).__enter__()


def test_vector_of_wrong_size(tiny_llama):
    with pytest.raises(ValueError, match="vector has size 7 but this model's d_model is 48"):
        tiny_llama.inject(torch.zeros(7), 0)


def test_unknown_model_name():
    with pytest.raises(ModelNotFoundError, match="could not load model 'no-such-org/no-such-model'"):
        load_model("no-such-org/no-such-model")
    with pytest.raises(ModelNotFoundError, match="unknown tiny model 'tiny-bert'"):
        load_model("tiny-bert")
    with pytest.raises(ModelNotFoundError, match=r"GGUF file '/nonexistent/x\.gguf' does not exist"):
        load_model("/nonexistent/x.gguf")


def test_local_folder_without_config(tmp_path):
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        load_model(str(tmp_path))


def test_local_folder_roundtrip(tmp_path, tiny_llama):
    tiny_llama.model.save_pretrained(tmp_path)
    tiny_llama.tokenizer.save_pretrained(tmp_path)
    lm = load_model(str(tmp_path))
    b = lm.batch(PROMPTS, ANSWERS)
    torch.testing.assert_close(lm.score(b).target_logprob, tiny_llama.score(b).target_logprob)
    assert lm.source.kind == "dir"
    assert not any(p.requires_grad for p in lm.model.parameters())
    assert not lm.model.training


def test_unknown_architecture_lists_supported():
    import transformers as tf

    from fvtrain.models.tiny import tiny_tokenizer

    cfg = tf.OPTConfig(vocab_size=320, hidden_size=16, num_hidden_layers=1, ffn_dim=16,
                       num_attention_heads=2, word_embed_proj_dim=16)
    model = tf.AutoModelForCausalLM.from_config(cfg)
    with pytest.raises(UnsupportedArchitectureError) as err:
        FrozenLM(model, tiny_tokenizer())
    msg = str(err.value)
    assert "model_type='opt'" in msg and "gemma3_text" in msg and "llama" in msg
    assert "ARCHITECTURES" in msg


def test_remote_code_never_runs_by_default(tmp_path):
    marker = tmp_path / "remote_code_ran"
    (tmp_path / "config.json").write_text(
        '{"model_type": "evil", "auto_map": {"AutoConfig": "configuration_evil.EvilConfig", '
        '"AutoModelForCausalLM": "modeling_evil.EvilModel"}}'
    )
    code = f"open({str(marker)!r}, 'w').write('ran')\n"
    (tmp_path / "configuration_evil.py").write_text(code)
    (tmp_path / "modeling_evil.py").write_text(code)
    with pytest.raises(Exception):
        load_model(str(tmp_path))
    assert not marker.exists()


def test_freed_memory_is_kept_on_glibc_unless_switched_off():
    """Loading a model raises glibc's mmap/trim thresholds once (allocator.py: freed tensor blocks
    are reused instead of faulted in afresh); FVTRAIN_KEEP_FREED_MEMORY=0 leaves malloc alone."""
    import os
    import platform
    import subprocess
    import sys

    code = ("from fvtrain.models import load_model; from fvtrain.models import allocator; "
            "load_model('tiny-llama'); print(allocator._done)")
    for value, want in (("1", platform.libc_ver()[0] == "glibc"), ("0", False)):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             env={**os.environ, "FVTRAIN_KEEP_FREED_MEMORY": value})
        assert out.stdout.strip() == str(want), (value, out.stdout, out.stderr[-2000:])
