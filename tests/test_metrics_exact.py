"""Metrics a tokenizer cannot game: exact match of the whole answer under greedy decoding, whole-word
relation-word decoding, and the warning when first tokens are shared.

The tiny models are random and their tokenizer is byte-level (~320 tokens): most words are several
tokens and many share the first one (" s" starts sofa, salt, star...). A vector trained on the first
token then looks perfect by first-token accuracy while it produces no answer; the metrics here must
stay near chance there.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

import pytest
import torch

from fvtrain.data.types import AnalogyItem
from fvtrain.evaluation.analogy import evaluate_methods, summarise
from fvtrain.evaluation.decoding import decode_sets, single_token_ids
from fvtrain.evaluation.relation import (
    answer_line,
    can_still_match,
    completion,
    exact_match,
    exact_match_methods,
    first_token_degeneracy,
    is_exact,
    warn_if_degenerate,
)
from fvtrain.prompts import PromptTemplate, encode_prompt, make_batch, zero_shot

T = PromptTemplate()
XS = ["hot", "big", "up", "left", "good", "fast", "light", "open", "begin", "happy", "road", "car",
      "fish", "bird", "tree", "house"]
# Every answer starts with the token " s" and has 2-5 tokens in the tiny tokenizer.
YS = ["sofa", "sun", "salt", "sand", "silk", "soap", "seed", "ship", "star", "stone", "slow", "sad",
      "small", "sea", "sock", "sing"]


@pytest.fixture(scope="module")
def lm():
    from fvtrain.models import load_model

    return load_model("tiny-llama")


@pytest.fixture(scope="module")
def first_token_vector(lm):
    """A vector fitted like an FFV with the default first-token loss on 8 train pairs."""
    layer = lm.default_layer()
    b = make_batch(lm.tokenizer, [zero_shot(T, x) for x in XS[:8]], [[y] for y in YS[:8]], T)
    v = torch.zeros(lm.d_model, requires_grad=True)
    opt = torch.optim.Adam([v], lr=0.2)
    for _ in range(12):
        loss = -lm.target_logprob(b, v.expand(len(b), -1), layer, tokens="first").mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return v.detach(), layer


# -- the definition -----------------------------------------------------------------------------------

def test_answer_line_and_is_exact():
    assert answer_line(" cold\n\nQ: big") == "cold"
    assert answer_line("\ncold") == ""  # a new line at once answers nothing
    assert is_exact(" cold\nQ:", ["warm", "cold"]) and is_exact(" cold ", [" cold"])
    assert not is_exact(" col", ["cold"]) and not is_exact(" colder", ["cold"]) and not is_exact("", [""])


def test_exact_match_counts_the_whole_line_not_a_prefix(lm):
    prompts = [zero_shot(T, x) for x in ("hot", "big", "up")]
    texts = exact_match(lm, prompts, [["x"]] * 3, max_new_tokens=3).raw
    line = answer_line(texts[0])
    assert len(line) >= 2, texts  # the random model's greedy line (no line break in 3 tokens)
    got = exact_match(lm, prompts[:1], [[line]], max_new_tokens=3)
    assert got.correct.tolist() == [1.0] and got.acc == 1.0 and got.texts == [line]
    assert exact_match(lm, prompts[:1], [["nope", line]], max_new_tokens=3).acc == 1.0  # any accepted
    assert exact_match(lm, prompts[:1], [[line[:-1]]], max_new_tokens=3).acc == 0.0  # a prefix only
    assert exact_match(lm, prompts[:1], [[line + "s"]], max_new_tokens=3).acc == 0.0
    # Batching and per-item budgets: each item's text is the same alone or in a batch.
    alone = [exact_match(lm, [p], [["x"]]).raw[0] for p in prompts]
    assert exact_match(lm, prompts, [["x"]] * 3, batch_size=2).raw == alone
    # outcomes are tensors the statistics module takes
    s = got.summary()
    assert s["acc"] == 1.0 and s["n"] == 1 and s["acc_ci"] is None


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_injection_edits_only_the_prompts_last_position(family):
    """Batched, left-padded, KV-cached generation equals a step-by-step loop over the full sequence
    (no cache, no padding) that adds the vector at the prompt's last position on every step."""
    from fvtrain.models import load_model

    lm = load_model(f"tiny-{family}")
    layer = 1
    prompts = [zero_shot(T, x) for x in ("hot", "a much longer word here", "up")]
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(len(prompts), lm.d_model, generator=g) * 4
    n_new = 5
    got = exact_match(lm, prompts, [["x"]] * 3, vecs, layer, max_new_tokens=n_new).raw

    def manual(prompt, vec, every_step_last: bool = False, n_new=n_new):
        ids = encode_prompt(lm.tokenizer, prompt)
        P, new = len(ids), []
        for _ in range(n_new):
            x = torch.tensor([ids + new])
            pos = x.shape[1] - 1 if every_step_last else P - 1
            with torch.no_grad(), lm.inject(vec, layer, positions=pos) if vec is not None else nullcontext():
                logits = lm.forward(x, torch.ones_like(x)).logits[0, -1]
            t = int(logits.argmax())
            if t == lm.tokenizer.eos_token_id:
                break
            new.append(t)
            if "\n" in lm.tokenizer.decode(new):
                break
        return lm.tokenizer.decode(new, skip_special_tokens=True)

    assert got == [manual(p, v) for p, v in zip(prompts, vecs)]
    # The check has teeth: editing the newest position on every step generates something else.
    assert got != [manual(p, v, every_step_last=True) for p, v in zip(prompts, vecs)]
    assert got != exact_match(lm, prompts, [["x"]] * 3, max_new_tokens=n_new).raw

    # Several methods in one pass (rows b * M + m off one prefix; rows leave the batch as they finish,
    # here at per-item budgets of 1 + 2, 4 + 2 and 2 + 2 tokens) equal each method decoded alone.
    answers = [["x"], ["x" * 4], ["x" * 2]]
    budgets = [len(lm.tokenizer(" " + a[0], add_special_tokens=False)["input_ids"]) + 2 for a in answers]
    assert len(set(budgets)) == 3
    many = exact_match_methods(lm, prompts, answers, {"none": None, "rows": vecs, "shared": vecs[1]}, layer,
                               batch_size=2)
    assert many["none"].raw == [manual(p, None, n_new=n) for p, n in zip(prompts, budgets)]
    assert many["rows"].raw == [manual(p, v, n_new=n) for p, v, n in zip(prompts, vecs, budgets)]
    assert many["shared"].raw == [manual(p, vecs[1], n_new=n) for p, n in zip(prompts, budgets)]
    assert many["rows"].raw != many["shared"].raw


# -- the random model: first-token metrics are gamed, exact match is not ---------------------------------

def test_random_model_exact_match_near_chance_where_first_token_is_not(lm, first_token_vector, caplog):
    v, layer = first_token_vector
    prompts, answers = [zero_shot(T, x) for x in XS[8:]], [[y] for y in YS[8:]]
    first = completion(lm, prompts, answers, v, layer)
    exact = exact_match(lm, prompts, answers, v, layer)
    print(f"relation completion, random tiny model: first-token acc {first['acc']:.3f}, "
          f"exact match {exact.acc:.3f} (n={exact.n}); no vector first-token "
          f"{completion(lm, prompts, answers)['acc']:.3f}")
    assert first["acc"] >= 0.75  # every answer starts with " s": one pushed token "solves" them
    assert exact.acc <= 0.125 and exact.correct.dtype == torch.float32
    rep = first_token_degeneracy(lm.tokenizer, answers)
    assert rep["degenerate"] and rep["shared_first"] == 1.0 and rep["median_tokens"] >= 2
    with caplog.at_level(logging.WARNING):
        assert warn_if_degenerate(rep, "test relation")
    assert "100% of 8 items" in caplog.text and "exact-match" in caplog.text


def test_random_model_open_analogies_exact_near_chance(lm, first_token_vector):
    v, layer = first_token_vector
    items = [AnalogyItem("hot", "sofa", x, (y,), distance="far" if i % 2 else "near", relation="r")
             for i, (x, y) in enumerate(zip(XS[8:], YS[8:]))]
    res = evaluate_methods(lm, items, {"none": None, "ffv": v.expand(len(items), -1)}, layer, T,
                           exact=True, batch_size=5)
    s = {n: summarise(items, r) for n, r in res.items()}
    ffv = s["ffv"]
    print(f"open analogies, random tiny model: first-token {ffv['open']['all']['acc']:.3f}, "
          f"exact {ffv['open_exact']['all']['acc']:.3f}")
    assert ffv["open"]["all"]["acc"] >= 0.75
    assert ffv["open_exact"]["all"]["acc"] <= 0.125 and len(ffv["open_exact"]["all"]["acc_ci"]) == 2
    assert ffv["open_exact"]["near"]["n"] == 4 and "by_relation" in ffv["open_exact"]
    assert res["ffv"].open_text is not None and len(res["ffv"].open_text) == len(items)
    sub = res["ffv"].subset([0, 2])
    assert sub.open_exact.tolist() == res["ffv"].open_exact[[0, 2]].tolist()
    # without exact=True nothing changes and nothing is generated
    plain = evaluate_methods(lm, items, {"ffv": v.expand(len(items), -1)}, layer, T)["ffv"]
    assert plain.open_exact is None and "open_exact" not in summarise(items, plain)
    assert torch.equal(plain.open_correct, res["ffv"].open_correct)


def test_can_still_match():
    assert can_still_match("", ["cold"]) and can_still_match("  ", ["cold"])
    assert can_still_match(" co", ["cold"]) and can_still_match(" cold", [" cold "])
    assert can_still_match(" cold  ", ["cold"])  # the answer followed by spaces
    assert not can_still_match(" cold w", ["cold"]) and can_still_match(" cold w", ["cold", "cold war"])
    assert not can_still_match(" Cold", ["cold"]) and not can_still_match(" x", ["cold"])
    assert can_still_match(" caf\ufffd", ["cafe"])  # a character cut between byte tokens


def test_stopping_on_mismatch_keeps_every_outcome(lm):
    """Rows that stop once they cannot match get the same outcome as full decoding, and their text
    is a prefix of the full one; on this random model most rows stop early."""
    prompts = [zero_shot(T, x) for x in XS[:12]]
    full = exact_match(lm, prompts, [["x"]] * 12, max_new_tokens=4)
    answers = [[answer_line(t)] if i % 3 == 0 else [answer_line(t)[:2] + "zz", "q"]
               for i, t in enumerate(full.raw)]
    a = exact_match_methods(lm, prompts, answers, {"_": None}, max_new_tokens=4)["_"]
    b = exact_match_methods(lm, prompts, answers, {"_": None}, max_new_tokens=4, stop_on_mismatch=True)["_"]
    assert a.raw == full.raw and a.correct.tolist() == b.correct.tolist()
    assert a.correct.tolist() == [1.0 if i % 3 == 0 else 0.0 for i in range(12)]
    assert all(t.startswith(s) for t, s in zip(a.raw, b.raw))
    assert sum(len(s) < len(t) for t, s in zip(a.raw, b.raw)) >= 6


def test_analogy_exact_match_from_the_shared_pass_equals_decoding_alone(lm):
    """Multiple-choice items decode greedily from the shared pass's last token and cache; open-ended
    items (no shared prompt) decode on their own. Either way the texts and outcomes must be those
    of exact_match_methods on the same prompts, for every method and per-item vectors."""
    g = torch.Generator().manual_seed(1)
    layer = 1
    items = []
    for i, (x, y) in enumerate(zip(XS[:10], YS[:10])):
        choices = None
        if i % 3:  # shared-prompt multiple choice, candidates of one and several tokens
            choices = ((x, y), (x, YS[10 + i % 4]), (x, y + "ness"))
        items.append(AnalogyItem("hot", "cold", x, (y, y + "s"), choices=choices, answer_index=0 if choices
                                 else None, distance="near", relation="r"))
    vecs = torch.randn(len(items), lm.d_model, generator=g) * 3
    methods = {"none": None, "rows": vecs, "shared": vecs[2].expand(len(items), -1)}
    res = evaluate_methods(lm, items, methods, layer, T, exact=True, batch_size=4)
    alone = exact_match_methods(lm, [zero_shot(T, it.c) for it in items], [list(it.d) for it in items],
                                methods, layer, batch_size=3, template=T)
    for n in methods:
        assert res[n].open_text == alone[n].texts, n
        assert res[n].open_exact.tolist() == alone[n].correct.tolist(), n
    assert res["rows"].open_text != res["none"].open_text  # the vectors reach the greedy steps


def test_random_model_whole_word_decoding_near_chance(lm, caplog):
    """Vectors whose logit lens tops a shared first token (what first-token training yields) rank
    every word starting with it first; ranked as whole words, the same relations are near chance."""
    tok = lm.tokenizer
    W = lm.model.get_output_embeddings().weight.detach().float()
    # (pushed first token, words): multi-token words starting with it, plus one single-token word.
    spec = {"r_s": (" s", ["sofa", "salt", "tree"]), "r_c": (" c", ["cat", "cold", "pen"]),
            "r_b": (" b", ["big", "brown", "use"]), "r_o": (" o", ["opposite", "orange", "old"]),
            "r_f": (" f", ["fast", "fish", "own"]), "r_h": (" ho", ["house", "hot", "low"])}
    vecs, words = {}, {}
    for rel, (first, ws) in spec.items():
        (t,) = tok(first, add_special_tokens=False)["input_ids"]
        vecs[rel] = W[t] * 50
        words[rel] = ws
        assert int(lm.lens_logits(vecs[rel]).argmax()) == t
    with caplog.at_level(logging.WARNING):
        out = decode_sets(lm, {"ffv": vecs}, words)
    first, whole = out["summary"]["ffv"], out["whole_word"]["summary"]["ffv"]
    print(f"decoding, random tiny model: first-token MRR {first['mrr']:.3f} (median rank "
          f"{first['median_rank']:g}), whole-word MRR {whole['mrr']:.3f} (median rank "
          f"{whole['median_rank']:g}) of {out['relations']['r_s']['ffv']['vocab_size']} tokens; "
          f"{out['whole_word']['n_skipped']} of {out['whole_word']['n_words']} words skipped")
    assert first["mrr"] == 1.0 and first["median_rank"] == 1
    assert whole["n"] == len(spec) and whole["mrr"] < 0.2 and whole["median_rank"] > 10
    assert out["whole_word"]["n_skipped"] == 12 and out["whole_word"]["n_words"] == 18
    d = out["relations"]["r_o"]["ffv"]
    assert d["words"]["opposite"]["whole_rank"] is None and d["n_skipped"] == 2
    assert d["best_whole_word"] == "old" and d["words"]["old"]["whole_spelling"] == "old"
    assert "relation-word decoding" in caplog.text and "whole-word" in caplog.text


def test_single_token_spellings(lm):
    assert single_token_ids(lm.tokenizer, "dog") == {" dog": lm.tokenizer(" dog", add_special_tokens=False)
                                                     ["input_ids"][0]}
    assert single_token_ids(lm.tokenizer, "opposite") == {}


# -- degeneracy ----------------------------------------------------------------------------------------

def test_degeneracy_counts_other_answers_only(lm):
    tok = lm.tokenizer
    # identical answers of two items are not a collision; " dog" is one token and unshared
    rep = first_token_degeneracy(tok, [["dog"], ["dog"], ["dog"], ["dog"], ["dog"]])
    assert rep["shared_first"] == 0.0 and rep["median_tokens"] == 1 and not rep["degenerate"]
    rep = first_token_degeneracy(tok, [["dog"], ["sofa"], ["sun"], ["dog"]])
    assert rep["shared_first"] == 0.5 and rep["degenerate"]
    assert not warn_if_degenerate({"degenerate": False}, "nothing")


# -- the stage tables ----------------------------------------------------------------------------------

class _Module:
    """What the training job's exact-match step reads from the FFV module."""

    def __init__(self, vectors: torch.Tensor, layer: int) -> None:
        self.relations, self.layer, self.vectors = ["r1", "r2"], layer, vectors

    def methods(self) -> list[str]:
        return ["none", "ffv"]

    def method_vectors(self, index: torch.Tensor):
        return self.methods(), torch.stack([torch.zeros_like(self.vectors[index[0]]), self.vectors[index[0]]])


def test_training_job_exact_entry_and_table(lm, first_token_vector, caplog):
    from fvtrain.data.splits import Split
    from fvtrain.data.types import Pair
    from fvtrain.training.job import zero_shot_exact
    from fvtrain.training.tables import exact_table, tables

    v, layer = first_token_vector
    pairs = [Pair(x, (y,)) for x, y in zip(XS[8:], YS[8:])]
    splits = {"r1": Split((), (), tuple(pairs[:5]), "r1"), "r2": Split((), (), tuple(pairs[5:]), "r2")}
    with caplog.at_level(logging.WARNING):
        ex = zero_shot_exact(_Module(torch.stack([v, v]), layer), lm, splits, T, 4, seed=0)
    assert ex["methods"] == ["none", "ffv"] and ex["n"] == 8
    assert set(ex["relations"]) == {"r1", "r2"} and ex["mean"]["ffv"] <= 0.125
    assert ex["mean"]["ffv"] == pytest.approx((ex["relations"]["r1"]["ffv"] + ex["relations"]["r2"]["ffv"]) / 2)
    assert all(len(ci) == 2 for ci in ex["acc_ci"].values()) and "ffv - none" in ex["differences"]
    assert ex["first_token_degeneracy"]["degenerate"] and "zero-shot relation completion" in caplog.text
    metrics = {"layer": layer, "mean": {}, "zero_shot_exact": ex,
               "zero_shot_acc": {"methods": ["none", "ffv"], "relations": {"r1": {}, "r2": {}},
                                 "mean": {"none": 0.0, "ffv": 1.0}}}
    t = exact_table(metrics)
    assert t.columns == ["relation", "none", "ffv"] and [r[0] for r in t.rows] == ["r1", "r2", "mean exact",
                                                                                  "mean first-token"]
    assert t.rows[-1][1:] == [0.0, 1.0] and "[" in t.rows[-2][2]
    assert t.title in [x.title for x in tables(metrics)]
    assert exact_table({"layer": 1}) is None


def test_composition_exact_table():
    from fvtrain.composition.tables import exact_table, tables

    m = {"methods": {"none": {"open": {"all": {"acc": 0.7}}, "mc": {},
                              "open_exact": {"all": {"acc": 0.1, "acc_ci": [0.0, 0.2]},
                                             "near": {"acc": 0.0}, "far": {"acc": None}}},
                     "oracle": {"open": {"all": {"acc": 0.5}}, "mc": {}}}}
    t = exact_table(m)
    assert [r[0] for r in t.rows] == ["none"] and t.rows[0][1:] == [0.7, "0.100 [0.000, 0.200]", 0.0, "-"]
    assert len(tables(m)) == 2 and exact_table({"methods": {"x": {"open": {}}}}) is None
