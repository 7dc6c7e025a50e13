"""fvtrain.api: each function works on a tiny model and gives what the job function it wraps gives."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from omegaconf import OmegaConf

from fvtrain import api

REPO = Path(__file__).resolve().parents[1]
# Debug-size counts (the tiny model has 4 layers x 4 heads).
SMALL = dict(n_prompts=4, n_corrupt=3, n_shots=3, k=3)
SMALL_OVERRIDES = {"extract.n_prompts": 4, "extract.n_corrupt": 3, "extract.n_shots": 3, "extract.k": 3,
                   "ffv.n_shots": 3, "logger": [], "callbacks": "none"}


def _extract_cfg(**kw):
    return OmegaConf.create({"n_prompts": 4, "n_corrupt": 3, "n_shots": 3, "k": 3, "filter_correct": True,
                             "aie_impl": "fast", "max_rows": 512, "layer_start": True, "batch_size": 16,
                             **kw})


def _split(name="antonym", seed=0):
    from fvtrain.data import load, split_relation

    return split_relation(load("builtin", relations=[name]).relations[name], 20, None, seed)


@pytest.fixture(scope="module")
def lm():
    lm = api.load_model("tiny-llama")
    assert lm.model_id == "tiny-llama" and lm.n_layers == 4
    return lm


@pytest.fixture(scope="module")
def fvs(lm):
    return [api.extract_fv(lm, r, **SMALL) for r in ("antonym", "plural")]


@pytest.fixture(scope="module")
def trained(lm, fvs, tmp_path_factory):
    out = tmp_path_factory.mktemp("train")
    return api.finetune(lm, fv_source=fvs, out=out, max_epochs=2, overrides=SMALL_OVERRIDES)


# -- library rules -----------------------------------------------------------------------------------

def test_api_imports_no_entry_point_or_cli():
    entries = {"fvtrain.cli", "fvtrain.extract", "fvtrain.train", "fvtrain.compose", "fvtrain.evaluate",
               "fvtrain.pipeline", "fvtrain.report"}
    tree = ast.parse((REPO / "fvtrain" / "api.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
            imported |= {f"{node.module}.{a.name}" for a in node.names}
    assert imported & entries == set()
    assert "fvtrain.extraction.job" in imported and "fvtrain.training" in imported


def test_every_public_name_is_documented():
    for name in api.__all__:
        assert getattr(api, name).__doc__, name


# -- configs -----------------------------------------------------------------------------------------

def test_override_strings_quote_what_hydra_would_misread():
    got = api.override_strings({"trainer.max_epochs": 2, "data.relations": ["antonym", "plural"],
                                "ffv.layer": None, "ffv.icl": False, "data.path": "/tmp/my data",
                                "model.revision": "1.0", "prompt.template": "Q: {x}\nA: {y}\n\n"})
    assert got[:4] == ["trainer.max_epochs=2", "data.relations=[antonym,plural]", "ffv.layer=null",
                       "ffv.icl=false"]
    assert got[4] == "data.path='/tmp/my data'" and got[5] == "model.revision='1.0'"
    assert api.override_strings(["trainer=cpu"]) == ["trainer=cpu"]
    assert api.override_strings("seed=3") == ["seed=3"] and api.override_strings(None) == []


def test_job_config_is_the_command_line_config_with_overrides(lm, tmp_path):
    cfg = api.job_config("train", {"trainer.max_epochs": 2, "data.path": str(tmp_path / "a b"),
                                   "model.revision": "1.0", "prompt.template": "In: {x}\nOut: {y}\n"},
                         lm=lm, out=tmp_path)
    assert cfg.model.name == "tiny-llama" and cfg.trainer.max_epochs == 2
    assert cfg.data.path == str(tmp_path / "a b")
    assert cfg.model.revision == "1.0" and isinstance(cfg.model.revision, str)
    assert cfg.prompt.template == "In: {x}\nOut: {y}\n"
    assert cfg.paths.output_dir == str(tmp_path)
    # A model name that is no preset becomes model=hub model.name=..., as on the command line.
    assert api.job_config("extract", lm="tiny-gpt2").model.name == "tiny-gpt2"
    # The user's overrides come last, so they win over the model's.
    assert api.job_config("extract", ["model.dtype=bfloat16"], lm=lm).model.dtype == "bfloat16"
    with pytest.raises(ValueError, match="unknown stage"):
        api.job_config("pipeline")


def test_a_model_on_cuda_keeps_training_on_its_device():
    fake = SimpleNamespace(model_id="tiny-llama", device=torch.device("cuda", 1))
    cfg = api.job_config("train", lm=fake)
    assert cfg.model.device == "cuda:1"
    assert cfg.trainer.accelerator == "gpu" and list(cfg.trainer.devices) == [1]
    assert api.job_config("extract", lm=fake).model.device == "cuda:1"


# -- function vectors ----------------------------------------------------------------------------------

def test_extract_fv_is_extract_relation(lm, fvs):
    from fvtrain.extraction.job import extract_relation
    from fvtrain.prompts import PromptTemplate

    ex = extract_relation(lm, _split(), _extract_cfg(), PromptTemplate(), 0, lm.default_layer())
    fv = fvs[0]
    assert fv.relation == "antonym" and fv.layer == lm.default_layer()
    assert torch.equal(fv.vector, ex.vector) and torch.equal(fv.aie, ex.aie) and torch.equal(fv.mean, ex.mean)
    assert fv.heads == ex.heads and len(fv.heads) == 3
    assert fv.split == _split() and fv.config["n_prompts"] == 4


def test_extract_fv_seed_layer_and_pairs(lm, fvs):
    other = api.extract_fv(lm, "antonym", seed=1, **SMALL)
    assert other.split != fvs[0].split and not torch.equal(other.vector, fvs[0].vector)
    assert api.extract_fv(lm, "antonym", layer=3, **SMALL).layer == 3
    with pytest.raises(ValueError, match="layer"):
        api.extract_fv(lm, "antonym", layer=9, **SMALL)
    # Plain (x, y) pairs work like a Relation of the same pairs ("a/b" is several answers).
    from fvtrain.data.types import Pair, Relation

    rel = _split().train + _split().val + _split().test
    pairs = [(p.x, "/".join(p.answers)) for p in rel]
    a = api.extract_fv(lm, pairs, **SMALL)
    b = api.extract_fv(lm, Relation("pairs", tuple(Pair(p.x, p.answers) for p in rel)), **SMALL)
    assert a.relation == "pairs" and torch.equal(a.vector, b.vector)
    # A ready split is used as given.
    c = api.extract_fv(lm, fvs[0].split, **SMALL)
    assert torch.equal(c.vector, fvs[0].vector)


def test_evaluate_fv_is_evaluate_relation(lm, fvs):
    from fvtrain.extraction.job import evaluate_relation
    from fvtrain.prompts import PromptTemplate

    fv = api.FunctionVector(**{**fvs[0].__dict__, "metrics": {}})
    got = api.evaluate_fv(lm, fv, n_shots=3)
    want = evaluate_relation(lm, fv.split, fv.vector, fv.layer, PromptTemplate(), 3, 0, sweep=False)
    assert got == want and fv.metrics["icl"] == want["icl"]
    assert set(got["zero_shot"]) == {"none", "fv"} and got["n"] == len(fv.split.test)


def test_generate_and_complete_inject_the_vector(lm, fvs):
    from fvtrain.prompts import PromptTemplate, zero_shot

    fv = fvs[0]
    prompt = zero_shot(PromptTemplate(), "hot")
    big = fv.vector / fv.vector.norm() * 50
    assert api.generate(lm, prompt, max_new_tokens=4) == lm.generate([prompt], 4)[0]
    assert api.generate(lm, [prompt, prompt], fv, max_new_tokens=4) == \
        lm.generate([prompt, prompt], 4, fv.vector, fv.layer)
    # An explicit layer wins over the vector's own; a bare tensor goes to the default layer.
    assert api.generate(lm, prompt, big, layer=3, max_new_tokens=4) == lm.generate([prompt], 4, big, 3)[0]
    assert api.generate(lm, prompt, big, max_new_tokens=4) == \
        lm.generate([prompt], 4, big, lm.default_layer())[0]
    assert api.generate(lm, prompt, big, max_new_tokens=4) != api.generate(lm, prompt, max_new_tokens=4)
    raw = lm.generate([prompt], 3, big, 3)[0]
    assert api.complete(lm, "hot", big, layer=3) == raw.strip().split("\n", 1)[0].strip()
    assert api.complete(lm, ["hot", "hot"], big, layer=3) == [api.complete(lm, "hot", big, layer=3)] * 2
    with pytest.raises(ValueError, match="one vector"):
        api.generate(lm, prompt, torch.stack([big, big]))


# -- stage runs ----------------------------------------------------------------------------------------

def test_extract_run_is_the_extraction_job(lm, fvs, tmp_path, monkeypatch):
    from fvtrain import runs

    monkeypatch.setenv("FVTRAIN_OUTPUT_DIR", str(tmp_path / "outputs"))
    res = api.extract(lm, ["antonym"], overrides={**{f"extract.{k}": v for k, v in SMALL.items()},
                                                  "extract.layer_sweep": False})
    assert res.stage == "extract" and res.out.parent.parent == tmp_path / "outputs" / "extract"
    v, man = runs.read_vector(res.vectors / "antonym.safetensors")
    assert torch.equal(v, fvs[0].vector.float()) and man["model_id"] == "tiny-llama"
    assert res.metrics["relations"]["antonym"]["zero_shot"]["fv"]["n"] == len(fvs[0].split.test)
    # A run started while that folder exists (e.g. in the same second) gets a new one.
    again = api._run_folder("extract", None)
    assert again != res.out and not again.exists() and again.parent.parent == res.out.parent.parent
    assert api._run_folder("extract", tmp_path / "mine") == tmp_path / "mine"


def test_extract_with_a_model_name_loads_it_after_the_checks(tmp_path):
    from fvtrain.errors import ConfigError

    with pytest.raises((ConfigError, ValueError), match="k=100"):
        api.extract("tiny-llama", ["antonym"], tmp_path, overrides={"extract.k": 100})
    assert not list(tmp_path.rglob("*.safetensors"))


def test_finetune_from_in_memory_fvs_is_the_training_job(lm, fvs, trained, tmp_path):
    from fvtrain import runs
    from fvtrain.config import compose
    from fvtrain.training import job

    assert trained.stage == "train" and trained.bank == trained.out / "bank"
    assert trained.metrics["epochs"] == 2
    saved = runs.load_vectors(trained.out / "extraction" / "vectors").as_dict()
    assert set(saved) == {"antonym", "plural"} and torch.equal(saved["antonym"], fvs[0].vector.float())
    # The same run through the job function directly, from the FVs the API saved.
    cfg = compose("train", ["model=tiny-llama", "trainer.max_epochs=2", "data.relations=[antonym,plural]",
                            *api.override_strings(SMALL_OVERRIDES)], output_dir=tmp_path)
    ref = job.run(cfg, tmp_path, lm, fv_source=trained.out / "extraction" / "vectors")
    mine, theirs = runs.load_vectors(trained.bank).as_dict(), runs.load_vectors(ref.bank).as_dict()
    assert set(mine) == {"antonym", "plural"}
    for r in mine:
        torch.testing.assert_close(mine[r], theirs[r])
    assert trained.metrics["zero_shot_acc"] == ref.metrics["zero_shot_acc"]
    cfg_written = OmegaConf.load(trained.out / "config.yaml")
    assert cfg_written.trainer.max_epochs == 2 and list(cfg_written.data.relations) == ["antonym", "plural"]


def test_finetune_refuses_fvs_of_another_split(lm, tmp_path):
    from fvtrain.training.init import InitArtifactError

    fv = api.extract_fv(lm, "antonym", seed=1, **SMALL)
    with pytest.raises(InitArtifactError, match="another split"):
        api.finetune(lm, fv_source=fv, out=tmp_path, max_epochs=1, overrides=SMALL_OVERRIDES)


def test_load_bank_from_a_result_a_path_or_a_subset(trained):
    a = api.load_bank(trained)
    b = api.load_bank(str(trained.out))
    c = api.load_bank(trained.out, relations=["plural"])
    assert a.names == b.names == ["antonym", "plural"] and torch.equal(a.vectors, b.vectors)
    assert c.names == ["plural"] and torch.equal(c.vectors[0], a.vectors[1])
    assert a.kind == "ffv" and a.layer == trained.layer
    assert api.load_bank(a, ["plural"]).names == ["plural"] and api.load_bank(a) is a


def test_cfv_is_score_softmax_compose(lm, trained):
    from fvtrain.composition import compose, make_scheme, score_pairs
    from fvtrain.prompts import PromptTemplate

    bank = api.load_bank(trained)
    v = api.cfv(lm, bank, "hot", "cold", temperature=0.5)
    scores = score_pairs(lm, [("hot", "cold")], bank.vectors, bank.layer, PromptTemplate())
    w = make_scheme("softmax", 0.5).weights(scores)
    torch.testing.assert_close(v.scores, scores[0])
    torch.testing.assert_close(v.weights, w[0])
    torch.testing.assert_close(v.vector, compose(w, bank.vectors)[0])
    assert v.layer == bank.layer and v.names == bank.names
    assert abs(float(v.weights.sum()) - 1) < 1e-5
    assert v.top(1)[0][0] == bank.names[int(scores[0].argmax())]
    top1 = api.cfv(lm, trained, "hot", "cold", scheme="top1")
    torch.testing.assert_close(top1.vector, bank.vectors[int(scores[0].argmax())])
    uniform = api.cfv(lm, trained.out, "hot", "cold", scheme="uniform")
    torch.testing.assert_close(uniform.vector, bank.vectors.mean(0))
    # A bank of another model is refused.
    from fvtrain.composition.bank import BankError

    other = api.load_bank(trained)
    other.model_id = "tiny-qwen2"
    with pytest.raises(BankError, match="tiny-qwen2"):
        api.cfv(lm, other, "hot", "cold")
    # Applied to C, the CFV is injected at the bank's layer.
    assert api.complete(lm, "warm", v) == api.complete(lm, "warm", v.vector, layer=bank.layer)


def test_solve_analogies_is_the_composition_job(lm, trained, tmp_path):
    res = api.solve_analogies(lm, trained, tmp_path, scheme="softmax",
                              overrides={"analogies.max_items": 6, "analogies.relations": ["antonym", "plural"]})
    assert res.stage == "compose" and res.scheme == "softmax"
    assert Path(res.bank) == trained.bank
    assert OmegaConf.load(tmp_path / "config.yaml").basis.path == str(trained.bank)
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["analogies"]["n"] == 6 and "softmax" in m["methods"] and m["bank"]["relations"] == ["antonym", "plural"]
    assert len((tmp_path / "predictions.jsonl").read_text().splitlines()) == 6


def test_evaluate_is_the_evaluation_job(lm, trained, tmp_path):
    res = api.evaluate(lm, fv=trained, ffv=trained, out=tmp_path)
    assert res.stage == "eval"
    assert res.vectors == {"fv": trained.out / "extraction" / "vectors", "ffv": trained.bank}
    assert set(res.metrics["vectors"]) == {"fv", "ffv"} and "decoding" in res.metrics
    assert json.loads((tmp_path / "metrics.json").read_text())["stage"] == "eval"
