"""Logit-lens decoding of vectors: top tokens, relation-word ranks, relation-word sources."""

from __future__ import annotations

import json

import pytest
import torch

from fvtrain.evaluation import decoding as dec


def _unembedding_row(lm, token_id: int) -> torch.Tensor:
    return lm.adapter.unembedding.weight[token_id].detach().float().clone()


def test_a_tokens_unembedding_direction_decodes_to_that_token_first(tiny_llama):
    lm = tiny_llama
    for t in (5, 77, 200):
        d = dec.decode_vector(lm, _unembedding_row(lm, t), k=5)
        assert d["top"][0]["id"] == t
        assert d["top"][0]["token"] == lm.tokenizer.decode([t])
        assert len(d["top"]) == 5 and d["top"][0]["logit"] >= d["top"][1]["logit"]
        # the wrapper's own logit lens agrees
        assert lm.logit_lens(_unembedding_row(lm, t), 1)[0][0] == lm.tokenizer.decode([t])


def test_relation_word_rank_is_one_for_the_decoded_word_and_best_over_words(tiny_llama):
    lm = tiny_llama
    word = "opposite"
    tid = dec.word_token_ids(lm.tokenizer, word)[" " + word]
    v = _unembedding_row(lm, tid)
    d = dec.decode_vector(lm, v, ["zebra", word], k=3)
    assert d["words"][word]["rank"] == 1 and d["best_word"] == word and d["best_rank"] == 1
    assert d["words"]["zebra"]["rank"] >= 1
    logits = dec.lens_logits(lm, v)
    other = dec.word_token_ids(lm.tokenizer, "zebra")
    assert d["words"]["zebra"]["rank"] == min(dec.rank_of(logits, i) for i in other.values())
    assert d["words"][word]["multi_token"] is True  # the tiny tokenizer is byte-level


def test_rank_counts_strictly_higher_logits():
    logits = torch.tensor([0.5, 2.0, 1.0, 2.0])
    assert dec.rank_of(logits, 1) == 1 and dec.rank_of(logits, 3) == 1
    assert dec.rank_of(logits, 2) == 3 and dec.rank_of(logits, 0) == 4


def test_decode_sets_compares_kinds_on_the_same_relations(tiny_llama):
    lm = tiny_llama
    g = torch.Generator().manual_seed(0)
    vecs = {"fv": {"antonym": torch.randn(lm.d_model, generator=g), "plural": torch.randn(lm.d_model, generator=g),
                   "1a": torch.randn(lm.d_model, generator=g)},
            "ffv": {"antonym": torch.randn(lm.d_model, generator=g)}}
    words = {"antonym": ["opposite"], "plural": ["plural"]}
    out = dec.decode_sets(lm, vecs, words, k=4)
    assert out["compared_on"] == ["antonym"]
    assert out["no_words"] == ["1a"]
    assert out["summary"]["fv"]["n"] == 1 and out["summary"]["ffv"]["n"] == 1
    assert "ffv" not in out["relations"]["plural"]
    rows = dec.table_rows(out, ["fv", "ffv"])
    assert rows[0][0] == "antonym" and len(rows[0]) == 5 and rows[1][3:] == ["-", "-"]


def test_summarise_ranks():
    s = dec.summarise_ranks([1, 10, 1000, None], 2000)
    assert s["n"] == 3 and s["median_rank"] == 10 and s["top10"] == pytest.approx(2 / 3)
    assert s["mrr"] == pytest.approx((1 + 0.1 + 0.001) / 3) and s["mean_log10_rank"] == pytest.approx(4 / 3)
    assert dec.summarise_ranks([], 10)["median_rank"] is None


def test_relation_words_from_user_builtin_and_titles(tmp_path):
    sources = {"1a": {"title": "CLASS-INCLUSION: Taxonomic", "definition": "Y is a kind/type/instance of X"},
               "antonym": {"title": "word -> its opposite"}}
    words, origin = dec.relation_words(["antonym", "1a", "mystery"], sources, {"plural": ["many"]})
    assert origin == {"antonym": "builtin", "1a": "title"}
    assert "opposite" in words["antonym"]
    assert words["1a"][:3] == ["class", "inclusion", "taxonomic"] and "kind" in words["1a"]
    assert "mystery" not in words
    words, origin = dec.relation_words(["antonym"], user={"antonym": ["reverse"]})
    assert words == {"antonym": ["reverse"]} and origin == {"antonym": "user"}
    assert dec.words_from_text("an X indicates/signifies Y") == ["indicates", "signifies"]


def test_words_file_errors(tmp_path):
    good = tmp_path / "w.json"
    good.write_text(json.dumps({"antonym": ["opposite", "reverse"]}))
    assert dec.load_words_file(good) == {"antonym": ["opposite", "reverse"]}
    bad = tmp_path / "bad.json"
    bad.write_text('{"antonym": "opposite"}')
    with pytest.raises(dec.DecodingError, match="expected an object"):
        dec.load_words_file(bad)
    broken = tmp_path / "broken.json"
    broken.write_text('{"antonym": [')
    with pytest.raises(dec.DecodingError, match="invalid JSON"):
        dec.load_words_file(broken)
    with pytest.raises(dec.DecodingError, match="is not a file"):
        dec.load_words_file(tmp_path / "missing.json")


def test_vector_of_the_wrong_size_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="d_model"):
        dec.decode_vector(tiny_llama, torch.zeros(tiny_llama.d_model + 1))


@pytest.mark.slow
def test_builtin_words_are_single_tokens_on_the_embedded_model(embedded_lm):
    """Most built-in relation words are whole tokens of Gemma's vocabulary (first-token ranks mean
    something), and the antonym FV direction of the unembedding of ' opposite' ranks it first."""
    from fvtrain.data import load_relation_words

    words = load_relation_words()
    tok = embedded_lm.tokenizer
    single = [w for ws in words.values() for w in ws if len(tok(" " + w, add_special_tokens=False)["input_ids"]) == 1]
    total = sum(len(ws) for ws in words.values())
    assert len(single) / total > 0.8
    tid = dec.word_token_ids(tok, "opposite")[" opposite"]
    d = dec.decode_vector(embedded_lm, _unembedding_row(embedded_lm, tid) * 50, ["opposite"], k=3)
    assert d["words"]["opposite"]["rank"] <= 3
