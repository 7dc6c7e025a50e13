"""Random-weight models of real shapes (``model.name=shape-...``): the published geometry, clear
refusals, and the real pipeline running on one without any download."""

from __future__ import annotations

import json

import pytest

from fvtrain.models.loading import (ModelNotFoundError, ModelOptionError, config_geometry, load_config, load_model,
                                    load_tokenizer, resolve_source)
from helpers import run_cli, single_run_dir


def test_shape_names_resolve_and_unknown_ones_are_refused():
    src = resolve_source("shape-llama3-8b")
    assert (src.kind, src.revision) == ("shape", "random:seed0")
    with pytest.raises(ModelNotFoundError) as err:
        resolve_source("shape-llama4")
    assert str(err.value) == ("unknown model shape 'shape-llama4'; known: shape-llama3-8b, shape-qwen3-0.6b, "
                              "shape-gptj-6b")


@pytest.mark.parametrize("name, layers, heads, d_model", [
    ("shape-llama3-8b", 32, 32, 4096), ("shape-qwen3-0.6b", 28, 16, 1024), ("shape-gptj-6b", 28, 16, 4096),
])
def test_shape_configs_have_the_published_geometry(name, layers, heads, d_model):
    cfg = load_config(name)
    geo = config_geometry(cfg)
    assert (geo["n_layers"], geo["n_heads"]) == (layers, heads)
    assert (getattr(cfg, "hidden_size", None) or cfg.n_embd) == d_model
    assert config_geometry(load_config(name, layers=2))["n_layers"] == 2


def test_layers_and_tokenizer_are_refused_for_other_models():
    msg = ("model.layers and model.tokenizer apply to random-weight shape models (model.name=shape-...) only, "
           "not to 'tiny-llama'; leave them null")
    for kw in ({"layers": 2}, {"tokenizer": "gemma3-270m"}):
        with pytest.raises(ModelOptionError) as err:
            load_model("tiny-llama", **kw)
        assert str(err.value) == msg


def test_the_cli_refuses_shape_options_for_a_real_model_before_loading_it(tmp_path):
    p = run_cli("fvtrain.extract", "debug=fast", "model.tokenizer=gemma3-270m", f"paths.output_root={tmp_path}",
                check=False)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert ("error: model.layers and model.tokenizer apply to random-weight shape models (model.name=shape-...) "
            "only, not to 'tiny-llama'; leave them null") in p.stderr
    assert "loading model" not in p.stderr + p.stdout


def test_a_shape_model_takes_its_tokenizers_vocabulary(tmp_path):
    """A tokenizer larger than the shape's vocabulary widens the unembedding; a smaller one keeps it."""
    from fvtrain.models.tiny import tiny_tokenizer

    tiny_tokenizer().save_pretrained(tmp_path / "tok")
    lm = load_model("shape-qwen3-0.6b", layers=1, tokenizer=str(tmp_path / "tok"), self_check=True)
    assert lm.model.config.vocab_size == 151936 and lm.n_layers == 1 and lm.n_heads == 16
    assert lm.source.kind == "shape" and len(lm.tokenizer) < 400
    assert len(load_tokenizer(str(tmp_path / "tok"))) == len(lm.tokenizer)  # a tokenizer-only folder
    assert len(load_tokenizer("shape-llama3-8b")) == 262_144  # the embedded Gemma tokenizer


def test_a_shape_larger_than_free_memory_is_refused_before_allocating(monkeypatch):
    """Weights counted on the meta device against the device's free memory: a clear refusal instead
    of a machine filled by random initialisation."""
    import fvtrain.models.wrapper as wrapper
    from fvtrain.models.shapes import shape_bytes

    assert shape_bytes("qwen3-0.6b", vocab=151936) == 596_049_920 * 4  # Qwen3-0.6B's parameter count
    monkeypatch.setattr(wrapper, "free_memory", lambda device: 10 * 10**9)
    with pytest.raises(ModelOptionError) as err:
        load_model("shape-llama3-8b", dtype="bfloat16")
    assert str(err.value) == ("shape-llama3-8b (262,144-token vocabulary) needs 18.3 GB for its bfloat16 weights "
                              "and cpu has 10.0 GB free; use fewer blocks (model.layers=N) or a device with more "
                              "memory")
    with pytest.raises(ModelOptionError, match=r"needs 36\.5 GB for its float32 weights and cpu has 10\.0 GB free; "
                                               r"use model\.dtype=bfloat16, fewer blocks"):
        load_model("shape-llama3-8b")


@pytest.mark.slow
def test_extraction_runs_on_a_random_model_of_a_real_shape(tmp_path):
    """The real CLI on Qwen3-0.6B's widths (one block) with the embedded tokenizer: artifacts name
    the shape and its random weights, and the vectors have the shape's width."""
    run_cli("fvtrain.extract", "debug=fast", "model=shape", "model.name=shape-qwen3-0.6b", "model.layers=1",
            "data.relations=[antonym]", f"paths.output_root={tmp_path}")
    run = single_run_dir(tmp_path, "extract")
    man = json.loads((run / "vectors" / "antonym.json").read_text())
    assert man["model_id"] == "shape-qwen3-0.6b" and man["model_revision"] == "random:seed0"
    assert man["d_model"] == 1024 and man["layer"] == 0
