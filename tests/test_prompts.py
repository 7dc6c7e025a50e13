"""Prompt templates, batching and target encoding."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from fvtrain.models.tiny import tiny_tokenizer
from fvtrain.prompts import PromptTemplate, icl, make_batch, shuffled_icl, zero_shot

T = PromptTemplate()


def test_default_template_strings():
    assert zero_shot(T, "hot") == "Q: hot\nA:"
    assert T.target("cold") == " cold"
    assert icl(T, [("big", "small"), ("up", "down")], "hot") == (
        "Q: big\nA: small\n\nQ: up\nA: down\n\nQ: hot\nA:"
    )


def test_custom_template():
    t = PromptTemplate("{x} ->{y};")
    assert t.query("a") == "a ->" and t.target("b") == "b" and t.demo("a", "b") == "a ->b;"
    t2 = PromptTemplate("Input: {x}\tOutput:  {y}\n")
    assert t2.query("a") == "Input: a\tOutput:" and t2.target("b") == "  b"


@pytest.mark.parametrize("bad", ["{y} {x}", "Q: {x}", "{x}{x}{y}"])
def test_bad_template(bad):
    with pytest.raises(ValueError, match="must contain '{x}' once followed by '{y}' once"):
        PromptTemplate(bad)


def test_shuffled_icl_permutes_answers_only():
    demos = [(f"x{i}", f"y{i}") for i in range(8)]
    p = shuffled_icl(T, demos, "q", random.Random(0))
    lines = p.split("\n\n")
    assert [l.split("\n")[0] for l in lines[:-1]] == [f"Q: x{i}" for i in range(8)]
    answers = [l.split("\nA: ")[1] for l in lines[:-1]]
    assert sorted(answers) == sorted(y for _, y in demos) and answers != [y for _, y in demos]
    assert lines[-1] == "Q: q\nA:"


def test_batch_layout_left_pads_prompts_right_pads_targets():
    tok = tiny_tokenizer()
    b = make_batch(tok, ["Q: hot\nA:", "Q: a longer prompt\nA:"], ["cold", ["big dog", "cat"]])
    P = b.prompt_len
    # Every row's last prompt token is in column P-1 and the BOS is the tokenizer's own.
    for i, p in enumerate(["Q: hot\nA:", "Q: a longer prompt\nA:"]):
        ids = tok(p)["input_ids"]
        assert ids[0] == tok.bos_token_id
        assert b.input_ids[i, P - len(ids):P].tolist() == ids
        assert b.attention_mask[i, :P].sum() == len(ids)
    t1 = tok(" big dog", add_special_tokens=False)["input_ids"]
    assert b.target_ids[1, : len(t1)].tolist() == t1
    assert b.input_ids[1, P: P + len(t1) - 1].tolist() == t1[:-1]
    assert b.first_ids[1] == list(dict.fromkeys([t1[0], tok(" cat", add_special_tokens=False)["input_ids"][0]]))
    assert b.first_token_matrix().shape == (2, max(len(f) for f in b.first_ids))


@pytest.mark.parametrize("word", ["", "   "])
def test_empty_word_is_an_error(word):
    with pytest.raises(ValueError, match="empty word"):
        zero_shot(T, word)
    with pytest.raises(ValueError, match="empty answer"):
        make_batch(tiny_tokenizer(), ["Q: a\nA:"], [word])


def test_answer_that_encodes_to_no_token():
    tk = Tokenizer(models.WordLevel({"[UNK]": 0, "Q:": 1, "A:": 2, "a": 3}, unk_token="[UNK]"))
    tk.normalizer = normalizers.Replace("\u200b", "")
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[UNK]")
    with pytest.raises(ValueError, match=r"the answer '\\u200b' encodes to no token"):
        make_batch(tok, ["Q: a\nA:"], ["\u200b"])


def test_mismatched_lengths():
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        make_batch(tiny_tokenizer(), ["a", "b"], ["c"])
