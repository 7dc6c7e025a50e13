"""Integration tests on the embedded Gemma 3 270M (dequantised GGUF)."""

from __future__ import annotations

import random

import pytest

from fvtrain.prompts import PromptTemplate, icl, zero_shot

pytestmark = pytest.mark.slow

ANTONYMS = [
    ("hot", "cold"), ("big", "small"), ("up", "down"), ("good", "bad"), ("fast", "slow"),
    ("happy", "sad"), ("light", "dark"), ("open", "closed"), ("rich", "poor"), ("old", "young"),
    ("high", "low"), ("strong", "weak"), ("early", "late"), ("hard", "soft"), ("wet", "dry"),
    ("long", "short"), ("full", "empty"), ("thick", "thin"), ("loud", "quiet"), ("clean", "dirty"),
    ("true", "false"), ("win", "lose"), ("love", "hate"), ("push", "pull"), ("buy", "sell"),
    ("first", "last"), ("begin", "end"), ("inside", "outside"), ("north", "south"), ("day", "night"),
    ("alive", "dead"), ("heavy", "light"), ("safe", "dangerous"), ("sharp", "dull"), ("cheap", "expensive"),
    ("friend", "enemy"), ("accept", "reject"), ("asleep", "awake"), ("arrive", "leave"), ("above", "below"),
]


def test_embedded_geometry(embedded_lm):
    assert embedded_lm.describe() | {} == embedded_lm.describe()
    a = embedded_lm.adapter
    assert (a.model_type, a.n_layers, a.n_heads, a.n_kv_heads, a.head_dim, a.d_model) == (
        "gemma3_text", 18, 4, 1, 256, 640)
    assert embedded_lm.source.revision.startswith("sha256:")


def test_icl_beats_zero_shot_on_antonyms(embedded_lm):
    lm, T = embedded_lm, PromptTemplate()
    rng = random.Random(0)
    train, test = ANTONYMS[:20], ANTONYMS[20:]
    zs = [zero_shot(T, x) for x, _ in test]
    few = [icl(T, rng.sample(train, 10), x) for x, _ in test]
    answers = [y for _, y in test]
    acc_zs = lm.score(lm.batch(zs, answers)).correct.float().mean().item()
    acc_icl = lm.score(lm.batch(few, answers)).correct.float().mean().item()
    print(f"antonym first-token accuracy: zero-shot {acc_zs:.2f}, 10-shot ICL {acc_icl:.2f}")
    assert acc_icl > acc_zs
    assert acc_icl >= 0.5
