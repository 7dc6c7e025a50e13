"""Baseline vectors (task vector, mean difference, random with the residual's norm) on tiny models:
each equals its definition computed by hand, FFVs can start from them, and the training job
reports them in its test table and saves them as vector artifacts."""

from __future__ import annotations

import json

import pytest
import torch

from fvtrain.data.splits import Split
from fvtrain.data.types import Pair
from fvtrain.prompts import PromptTemplate, make_batch, zero_shot
from fvtrain.training.baselines import BASELINES, build_baselines, relation_prompts
from fvtrain.training.init import INITS, initial_vectors

T = PromptTemplate()
WORDS = [("hot", "cold"), ("big", "small"), ("up", "down"), ("fast", "slow"), ("old", "new"),
         ("wet", "dry"), ("dark", "light"), ("hard", "soft"), ("high", "low"), ("rich", "poor")]


def _splits() -> dict[str, Split]:
    pairs = [Pair(x, (y,)) for x, y in WORDS]
    flip = [Pair(y, (x,)) for x, y in WORDS]
    return {"a": Split(tuple(pairs[:8]), (), tuple(pairs[8:]), "a"),
            "b": Split(tuple(flip[:8]), (), tuple(flip[8:]), "b")}


def _by_hand(lm, prompts: list[str], layer: int) -> torch.Tensor:
    """Block ``layer``'s output at the last token, one unpadded prompt at a time, by a forward hook."""
    rows = []

    def hook(module, args, output):
        rows.append((output[0] if isinstance(output, tuple) else output)[0, -1].double())

    handle = lm.adapter.block(layer).register_forward_hook(hook)
    try:
        for p in prompts:
            b = make_batch(lm.tokenizer, [p], ["x"])
            with torch.no_grad():
                lm.forward(b.prompt_ids, b.prompt_mask)
    finally:
        handle.remove()
    return torch.stack(rows)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gptj"])  # bare-tensor and tuple-returning blocks
def test_task_vector_and_mean_diff_equal_hand_recorded_means(family):
    from fvtrain.models import load_model

    lm = load_model(f"tiny-{family}")
    splits, layer = _splits(), 1
    base = build_baselines(lm, splits, BASELINES, T, seed=3, layer=layer, n_prompts=6, n_shots=3, batch_size=4)
    assert list(base.vectors) == list(BASELINES)
    for i, r in enumerate(splits):
        clean, zs = relation_prompts(splits[r], T, 3, 6, 3)
        assert len(clean) == len(zs) == 6 and all(c.endswith(z) for c, z in zip(clean, zs))
        icl_res, zs_res = _by_hand(lm, clean, layer), _by_hand(lm, zs, layer)
        torch.testing.assert_close(base.vectors["task_vector"][i].double(), icl_res.mean(0), atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(base.vectors["mean_diff"][i].double(), icl_res.mean(0) - zs_res.mean(0),
                                   atol=1e-4, rtol=1e-4)
        # random_rms: the residual stream's norm at the layer (mean over prompts of ||h||).
        rms = float(zs_res.norm(dim=-1).mean())
        assert float(base.vectors["random_rms"][i].norm()) == pytest.approx(rms, rel=1e-4)
        assert float(base.residual_norm[i]) == pytest.approx(rms, rel=1e-4)


def test_block_output_equals_full_forward(tiny_llama):
    prompts = ["Q: hot\nA:", "Q: the quick brown fox\nA:"]
    b = make_batch(tiny_llama.tokenizer, prompts, ["x", "y"])
    # Left-padded batch: a plain forward counts pads as positions, so compare with one prompt each.
    torch.testing.assert_close(tiny_llama.block_output(b.prompt_ids, b.prompt_mask, 0),
                               _by_hand(tiny_llama, prompts, 0).float(), atol=1e-5, rtol=1e-5)
    one = make_batch(tiny_llama.tokenizer, prompts[:1], ["x"])
    # A model of its own: output_hidden_states leaves transformers' capture hooks on the model, and
    # tiny_llama is shared with tests that count hooks.
    from fvtrain.models import load_model

    other = load_model("tiny-llama")
    with torch.no_grad():
        hs = other.model(input_ids=one.prompt_ids, output_hidden_states=True).hidden_states
    torch.testing.assert_close(tiny_llama.block_output(one.prompt_ids, one.prompt_mask, 1)[0], hs[2][0, -1].float())


def test_random_rms_is_seeded_and_differs_across_relations(tiny_llama):
    splits = _splits()
    a = build_baselines(tiny_llama, splits, ["random_rms"], T, seed=5, layer=1, n_prompts=4, n_shots=3)
    b = build_baselines(tiny_llama, splits, ["random_rms"], T, seed=5, layer=1, n_prompts=4, n_shots=3)
    c = build_baselines(tiny_llama, splits, ["random_rms"], T, seed=6, layer=1, n_prompts=4, n_shots=3)
    assert list(a.vectors) == ["random_rms"]
    assert torch.equal(a.vectors["random_rms"], b.vectors["random_rms"])
    assert not torch.allclose(a.vectors["random_rms"], c.vectors["random_rms"])
    v = a.vectors["random_rms"]
    assert abs(float(torch.nn.functional.cosine_similarity(v[0], v[1], dim=0))) < 0.9
    # The same direction as ffv.init=random; only the norm differs (the residual's, not the FV's).
    rnd = initial_vectors("random", list(splits), tiny_llama.d_model, 5, torch.ones(2, tiny_llama.d_model))
    torch.testing.assert_close(v / v.norm(dim=-1, keepdim=True), rnd / rnd.norm(dim=-1, keepdim=True))


def test_replace_overwrites_the_residual_and_equals_adding_the_difference(tiny_llama):
    lm, layer = tiny_llama, 1
    prompts = ["Q: hot\nA:", "Q: the quick brown fox\nA:"]
    b = make_batch(lm.tokenizer, prompts, ["cold", "dog"], T)
    v = torch.randn(lm.d_model)
    with lm.replace(v, layer):
        torch.testing.assert_close(lm.block_output(b.prompt_ids, b.prompt_mask, layer), v.expand(2, -1))
    h = lm.block_output(b.prompt_ids, b.prompt_mask, layer)
    with lm.replace(v, layer, positions=b.prompt_len - 1):
        replaced = lm.score(b)
    added = lm.score(b, v - h, layer)
    torch.testing.assert_close(replaced.target_logprob, added.target_logprob, atol=1e-4, rtol=1e-4)
    # replace_scores: the same numbers per relation, from the job's helper.
    from fvtrain.training.baselines import replace_scores

    splits = {"a": Split((), (), (Pair("hot", ("cold",)), Pair("the quick brown fox", ("dog",))), "a")}
    sc = replace_scores(lm, splits, v[None], layer, T)["a"]
    assert sc["n"] == 2 and sc["prob"] == pytest.approx(float(replaced.first_prob.mean()), rel=1e-4)


def test_unknown_baseline_is_refused(tiny_llama):
    with pytest.raises(ValueError, match="unknown baseline"):
        build_baselines(tiny_llama, _splits(), ["task_vectr"], T, seed=0, layer=1, n_prompts=2, n_shots=3)


@pytest.mark.parametrize("kind", BASELINES)
def test_ffv_init_from_each_baseline_starts_at_that_vector(tiny_llama, kind):
    from fvtrain.training.module import FFVModule

    assert kind in INITS
    splits = _splits()
    base = build_baselines(tiny_llama, splits, [kind], T, seed=0, layer=1, n_prompts=4, n_shots=3)
    init = initial_vectors(kind, list(splits), tiny_llama.d_model, 0, None, base.vectors)
    torch.testing.assert_close(init, base.vectors[kind])
    m = FFVModule(list(splits), 1, init)
    torch.testing.assert_close(m.vectors.detach(), base.vectors[kind])
    torch.testing.assert_close(m.v0, base.vectors[kind])
    with pytest.raises(ValueError, match=kind):
        initial_vectors(kind, list(splits), tiny_llama.d_model, 0)


def test_module_tests_baselines_as_extra_methods(tiny_llama):
    from fvtrain.training.module import FFVModule

    R, d = 2, tiny_llama.d_model
    m = FFVModule(["a", "b"], 1, torch.ones(R, d), torch.zeros(R, d)).attach_lm(tiny_llama)
    before = set(m.state_dict())
    tv, md = torch.randn(R, d), torch.randn(R, d)
    m.set_baselines({"task_vector": tv, "mean_diff": md})
    assert m.methods() == ["none", "fv", "ffv", "task_vector", "mean_diff"]
    assert set(m.state_dict()) == before  # checkpoints keep the trained vectors only
    names, vecs = m.method_vectors(torch.tensor([1, 0]))
    assert names == m.methods()
    rows = vecs.view(2, len(names), d)
    torch.testing.assert_close(rows[0, 3], tv[1])
    torch.testing.assert_close(rows[1, 4], md[0])
    assert "zero_shot__task_vector" in m.test_metrics
    with pytest.raises(ValueError):
        m.set_baselines({"ffv": tv})
    with pytest.raises(ValueError):
        m.set_baselines({"task_vector": torch.randn(R + 1, d)})


def test_training_job_reports_and_saves_baselines(tiny_llama, tmp_path):
    from fvtrain import api
    from fvtrain.artifacts import load_vector
    from fvtrain.training.tables import completion_table

    res = api.finetune(tiny_llama, ["antonym", "country_capital"], tmp_path / "run", max_epochs=1, overrides={
        "extract.n_prompts": 4, "extract.n_corrupt": 3, "extract.n_shots": 3, "extract.k": 3,
        "extract.layer_sweep": False, "ffv.n_shots": 3, "ffv.icl": False, "ffv.init": "mean_diff",
        "ffv.baselines": ["task_vector", "mean_diff", "random_rms", "task_vector_replace"],
        "ffv.baseline_prompts": 5,
        "logger": [], "callbacks": [], "ffv.select": "last", "optim.optimizer.lr": 1e-12})
    m = json.loads((res.out / "metrics.json").read_text())
    table = m["zero_shot_acc"]
    assert table["methods"][:3] == ["none", "fv", "ffv"]
    assert table["methods"][3:7] == ["task_vector", "mean_diff", "random_rms", "task_vector_replace"]
    for meth in ("task_vector", "mean_diff", "random_rms", "task_vector_replace"):
        assert 0.0 <= table["mean"][meth] <= 1.0
        for r in ("antonym", "country_capital"):
            assert m["relations"][r]["zero_shot"][meth]["n"] == m["relations"][r]["n_test"]
    # lr ~0: the FFV stays at its init, the mean-difference vector, so both columns agree.
    assert table["mean"]["ffv"] == table["mean"]["mean_diff"]
    assert m["baselines"]["n_prompts"] == 5 and m["times"]["baselines_s"] >= 0
    header = completion_table(m).columns
    assert "task_vector" in header and "random_rms" in header
    for name in ("task_vector", "mean_diff", "random_rms"):
        v, man = load_vector(res.out / "baselines" / name / "antonym")
        assert man["kind"] == name and man["layer"] == m["layer"] and man["relation"] == "antonym"
        assert man["metrics"]["test"]["zero_shot"]["acc"] == m["relations"]["antonym"]["zero_shot"][name]["acc"]
        assert v.shape == (tiny_llama.d_model,)
    ffv, _ = load_vector(res.out / "bank" / "antonym")
    md, _ = load_vector(res.out / "baselines" / "mean_diff" / "antonym")
    torch.testing.assert_close(ffv, md, atol=1e-6, rtol=1e-6)


def test_default_config_builds_no_baselines(tmp_path):
    from fvtrain.config import compose
    from fvtrain.training.job import baselines_needed

    cfg = compose("train", output_dir=tmp_path)

    assert list(cfg.ffv.baselines) == [] and baselines_needed(cfg.ffv) == []


@pytest.mark.slow
def test_task_vector_beats_no_vector_on_embedded_antonyms(embedded_lm, tmp_path):
    """Gemma 3 270M, built-in antonyms, the default split and layer (6 of 18): the task vector (20
    clean 10-shot prompts) lifts zero-shot accuracy above no vector when it overwrites the residual
    as Hendel et al. use it. Added instead, it is inert on this model (see README "Baselines")."""
    from fvtrain.config import compose
    from fvtrain.data.select import load_relations
    from fvtrain.data.splits import split_relation
    from fvtrain.training.baselines import replace_scores

    cfg = compose("train", ["data.relations=[antonym]"], output_dir=tmp_path)
    rel = load_relations(cfg.data).relations["antonym"]
    splits = {"antonym": split_relation(rel, int(cfg.data.n_train), cfg.data.n_val, 0)}
    lm, layer = embedded_lm, embedded_lm.default_layer()
    base = build_baselines(lm, splits, ["task_vector"], T, 0, layer, 20, 10)
    test = splits["antonym"].test
    b = make_batch(lm.tokenizer, [zero_shot(T, p.x) for p in test], [p.answers for p in test], T)
    none = float(lm.score(b).correct.float().mean())
    replaced = replace_scores(lm, splits, base.vectors["task_vector"], layer, T)["antonym"]["acc"]
    assert replaced > none
