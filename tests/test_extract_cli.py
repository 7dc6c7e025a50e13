"""fvtrain-extract end to end: artifacts, reproducibility, fail-fast errors, embedded-model effect."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from fvtrain.artifacts import load_tensors, load_vector
from helpers import is_png, run_cli, single_run_dir


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract")
    run_cli("fvtrain.extract", "debug=fast", f"paths.output_root={root}")
    return single_run_dir(root, "extract")


def test_extract_writes_every_artifact(tiny_run):
    run = tiny_run
    for rel in ("antonym", "country_capital"):
        vec, man = load_vector(run / "vectors" / rel)
        assert vec.shape == (48,) and torch.isfinite(vec).all()
        assert man["relation"] == rel and man["kind"] == "fv" and man["model_id"] == "tiny-llama"
        assert man["layer"] == 1 and man["k"] == 3 and len(man["heads"]) == 3
        assert {"layer", "head", "aie"} <= set(man["heads"][0])
        assert len(man["split_hash"]) == 64 and man["seed"] == 0
        assert man["template"] == "Q: {x}\nA: {y}\n\n"
        t = load_tensors(run / "aie" / f"{rel}.safetensors")
        assert t["aie"].shape == (4, 4) and t["mean"].shape == (4, 4, 12)
    m = json.loads((run / "metrics.json").read_text())
    assert set(m["relations"]) == {"antonym", "country_capital"}
    r = m["relations"]["antonym"]
    assert set(r["zero_shot"]) == {"none", "fv"} and set(r["shuffled_icl"]) == {"none", "fv"}
    assert len(r["layer_sweep"]["acc"]) == 4 and "icl" in r
    assert set(m["mean"]["zero_shot"]) == {"none", "fv"}
    # Per-item outcomes behind every accuracy, and intervals of the means over relations.
    z = r["zero_shot"]["fv"]
    assert len(z["correct"]) == z["n"] == r["n"] and abs(sum(z["correct"]) / z["n"] - z["acc"]) < 1e-6
    lo, hi = m["mean"]["intervals"]["zero_shot"]["mean"]["fv"]
    assert lo - 1e-9 <= m["mean"]["zero_shot"]["fv"] <= hi + 1e-9
    d = m["mean"]["intervals"]["zero_shot"]["fv - none"]
    assert abs(d["diff"] - (m["mean"]["zero_shot"]["fv"] - m["mean"]["zero_shot"]["none"])) < 1e-9
    splits = json.loads((run / "splits.json").read_text())
    assert "antonym" in json.dumps(splits)
    cfg = OmegaConf.load(run / "config.yaml")
    assert cfg.model.name == "tiny-llama" and cfg.extract.k == 3
    assert is_png(run / "figures" / "aie_heatmap.png") and is_png(run / "figures" / "layer_sweep.png")


def _extract_in_process(out, *overrides):
    from fvtrain.cli import compose
    from fvtrain.extract import extract

    return extract(compose("extract", ["debug=fast", *overrides]), out)


def test_same_seed_same_vectors_other_seed_differs(tiny_run, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _extract_in_process(a)
    _extract_in_process(b, "seed=1")
    va, _ = load_vector(a / "vectors" / "antonym")
    v0, _ = load_vector(tiny_run / "vectors" / "antonym")
    vb, _ = load_vector(b / "vectors" / "antonym")
    assert torch.equal(va, v0)
    assert json.loads((a / "metrics.json").read_text()) == json.loads((tiny_run / "metrics.json").read_text())
    assert not torch.equal(vb, v0)


def test_universal_heads_are_the_top_mean_aie_of_the_head_relations(tiny_run, tmp_path):
    from fvtrain.extraction.fv import function_vector
    from fvtrain.models import load_model

    out = tmp_path / "u"
    _extract_in_process(out, "extract.heads=universal", "extract.head_relations=[antonym]")
    m = json.loads((out / "metrics.json").read_text())
    # One relation's AIE picks the heads: the same AIE as a per-relation run, so the same top 3.
    _, per = load_vector(tiny_run / "vectors" / "antonym")
    want = [[h["layer"], h["head"]] for h in per["heads"]]
    assert [h[:2] for h in m["universal_heads"]["heads"]] == want and m["universal_heads"]["relations"] == ["antonym"]
    assert torch.equal(load_tensors(out / "aie" / "antonym.safetensors")["aie"],
                       load_tensors(tiny_run / "aie" / "antonym.safetensors")["aie"])
    t = load_tensors(out / "aie" / "country_capital.safetensors")
    assert "aie" not in t  # no AIE of its own
    vec, man = load_vector(out / "vectors" / "country_capital")
    assert [[h["layer"], h["head"]] for h in man["heads"]] == want
    lm = load_model("tiny-llama")
    expect = function_vector(lm, t["mean"], [tuple(h) for h in m["universal_heads"]["heads"]])
    torch.testing.assert_close(vec, expect)


@pytest.mark.parametrize("override,message", [
    ("extract.k=100", "k=100 heads requested, but tiny-llama has 16 heads (4 layers x 4)"),
    ("extract.layer=9", "layer 9 is out of range for tiny-llama with 4 layers (valid: 0..3)"),
    ("extract.n_shots=25", "relation 'antonym': 25-shot prompts need at least 26 train pairs"),
    ("data.relations=[antonymm]", "unknown relation 'antonymm'"),
])
def test_bad_config_fails_before_model_work(tmp_path, override, message, monkeypatch):
    from fvtrain.runtime import LazyModel

    def no_model(self):
        raise AssertionError("the model was loaded before the config was validated")

    monkeypatch.setattr(LazyModel, "__call__", no_model)
    with pytest.raises(ValueError) as err:
        _extract_in_process(tmp_path, override)
    assert message in str(err.value)
    assert not list(tmp_path.rglob("*.safetensors"))


def test_bad_config_on_the_command_line_exits_nonzero(tmp_path):
    proc = run_cli("fvtrain.extract", "debug=fast", "extract.k=100", f"paths.output_root={tmp_path}",
                   check=False)
    assert proc.returncode != 0
    assert "k=100 heads requested" in proc.stderr + proc.stdout


@pytest.mark.slow
def test_fv_raises_correct_token_probability_on_embedded_antonyms(embedded_lm):
    """Zero-shot on held-out antonym pairs: P(correct first token) is higher with the FV."""
    from fvtrain.data.readers import read
    from fvtrain.data.splits import split_relation
    from fvtrain.evaluation.relation import completion
    from fvtrain.extraction.job import extract_relation
    from fvtrain.prompts import PromptTemplate, zero_shot

    lm, T = embedded_lm, PromptTemplate()
    split = split_relation(read("builtin", relations=["antonym"]).relations["antonym"], seed=0)
    from fvtrain.config import compose

    cfg = compose("extract", ["extract.n_prompts=20", "extract.n_corrupt=8"]).extract
    layer = lm.default_layer()
    ex = extract_relation(lm, split, cfg, T, seed=0, layer=layer)
    prompts = [zero_shot(T, p.x) for p in split.test]
    answers = [p.answers for p in split.test]
    none = completion(lm, prompts, answers)
    fv = completion(lm, prompts, answers, ex.vector, layer)
    print(f"antonym zero-shot P(correct first token): none {none['prob']:.4f}, FV {fv['prob']:.4f}")
    assert fv["prob"] > none["prob"]
