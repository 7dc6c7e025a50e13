"""fvtrain-train end to end: the real command line in subprocesses, on a tiny model.

One extraction run (module fixture) feeds every training run. Covered: the run folder (metrics,
basis bank, light checkpoints, CSV/TensorBoard/wandb-offline logs), resuming after an
interruption, and ``trainer=ddp_sim`` against a single-process evaluation of the same vectors.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import assert_ddp_metrics_equal_single_process

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
COMMON = ["debug=fast", "extract.n_shots=3", "ffv.n_shots=3", "ffv.batch_per_relation=4",
          "ffv.eval_batch_size=7", "ffv.test_modes=[zero_shot,shuffled_icl]"]


def _env():
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", WANDB_MODE="offline",
               WANDB_SILENT="true", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(module: str, run_dir: Path, *args: str, ok: bool = True, timeout: int = 600):
    cmd = [sys.executable, "-m", module, *args, f"hydra.run.dir={run_dir}"]
    p = subprocess.run(cmd, cwd=run_dir.parent, env=_env(), capture_output=True, text=True, timeout=timeout)
    if ok and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


@pytest.fixture(scope="module")
def fv_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("extract") / "run"
    _run("fvtrain.extract", run, "debug=fast", "extract.n_shots=3", "extract.layer_sweep=false")
    return run


def _bank(run: Path) -> dict[str, torch.Tensor]:
    from fvtrain.artifacts import list_vectors, load_vector

    return {p.stem: load_vector(p)[0] for p in list_vectors(run / "bank")}


def test_cli_run_folder(fv_run, tmp_path):
    run = tmp_path / "run"
    _run("fvtrain.train", run, *COMMON, f"ffv.fv_run={fv_run}", "trainer.max_epochs=2",
         "ffv.random_baseline=true", "logger=many", "ffv.train_modes=[zero_shot,shuffled_icl]",
         "ffv.loss.target=full", "ffv.loss.lambda=0.001")
    m = json.loads((run / "metrics.json").read_text())
    rels = ["antonym", "country_capital"]
    table = m["zero_shot_acc"]
    assert table["methods"] == ["none", "fv", "ffv", "ffv_random", "icl"]
    assert list(table["relations"]) == rels
    for meth in table["methods"]:
        assert 0.0 <= table["mean"][meth] <= 1.0
        assert abs(table["mean"][meth] - sum(table["relations"][r][meth] for r in rels) / 2) < 1e-9
    for r in rels:
        entry = m["relations"][r]
        n = entry["n_test"]
        assert entry["zero_shot"]["ffv"]["n"] == n and entry["shuffled_icl"]["fv"]["n"] == n
        assert entry["icl"]["source"] == "extraction"  # measured on the same prompts by fvtrain-extract
        assert entry["val"]["best_epoch"] in (0, 1)
    assert m["mean"]["zero_shot"]["ffv"] == table["mean"]["ffv"] and m["params"]["trainable"] == 2 * 48

    # Per-item outcomes: every test pair once per mode and method, so intervals can be paired.
    out = json.loads((run / "test_outcomes.json").read_text())["outcomes"]
    n_items = sum(m["relations"][r]["n_test"] for r in rels)
    for meth in ("none", "fv", "ffv", "ffv_random"):
        for mode in ("zero_shot", "shuffled_icl"):
            keys = out[f"{mode}/{meth}"]["key"]
            assert len(keys) == len(set(keys)) == n_items
        c = out[f"zero_shot/{meth}"]["correct"]
        assert abs(sum(c) - sum(table["relations"][r][meth] * m["relations"][r]["n_test"] for r in rels)) < 1e-4
    # ICL reused from the extraction run comes with its per-item outcomes, on the same test pairs.
    assert out["icl"]["key"] == out["zero_shot/ffv"]["key"]
    assert abs(sum(out["icl"]["correct"]) - sum(table["relations"][r]["icl"] * m["relations"][r]["n_test"]
                                                 for r in rels)) < 1e-4
    ci = table["intervals"]
    for meth in ("none", "fv", "ffv", "ffv_random"):
        lo, hi = ci["mean"][meth]
        assert lo - 1e-6 <= table["mean"][meth] <= hi + 1e-6
        for r in rels:
            lo, hi = ci["relations"][r][meth]
            assert lo - 1e-6 <= table["relations"][r][meth] <= hi + 1e-6
    assert ci["differences"]["ffv - icl"]["n"] == n_items
    d = ci["differences"]["ffv - fv"]
    assert abs(d["diff"] - (table["mean"]["ffv"] - table["mean"]["fv"])) < 1e-6 and d["n"] == n_items
    assert d["ci"][0] <= d["diff"] <= d["ci"][1]

    # The basis bank: one vector + manifest per relation, composition's input.
    from fvtrain.artifacts import load_vector

    for r in rels:
        v, man = load_vector(run / "bank" / r)
        assert v.shape == (48,) and man["kind"] == "ffv" and man["model_id"] == "tiny-llama"
        assert man["d_model"] == 48 and man["layer"] == m["layer"] and man["relation"] == r
        assert man["split_hash"] and man["metrics"]["test"]["zero_shot"]["ffv"]["n"] > 0
        assert load_vector(run / "bank_random" / r)[1]["kind"] == "ffv_random"

    # Checkpoints: vectors, buffers and optimiser state; never the frozen model.
    ck = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert all(t.numel() <= 2 * 48 for t in ck["state_dict"].values())
    assert ck["optimizer_states"][0]["state"][0]["exp_avg"].shape == (2, 48)
    assert (run / "checkpoints" / "last.ckpt").stat().st_size < 200_000
    assert [p.name for p in (run / "checkpoints").glob("epoch*.ckpt")]  # the best epoch is kept
    assert (run / "checkpoints" / "random" / "last.ckpt").is_file()

    # Loggers: CSV (with the hyperparameters and parameter counts), TensorBoard, wandb offline.
    csv = next((run / "csv").glob("version_*/metrics.csv")).read_text().splitlines()[0]
    assert "val/zero_shot/acc" in csv and "random/val/zero_shot/acc" in csv and "test/zero_shot/ffv/acc" in csv
    hp = next((run / "csv").glob("version_*/hparams.yaml")).read_text()
    assert "params_trainable: 96" in hp and "params_frozen:" in hp
    assert list((run / "tensorboard").rglob("events.out.tfevents.*"))
    runs = list((run / "wandb").glob("offline-run-*"))
    assert len(runs) == 1  # one wandb run for the whole job, ended by wandb.finish()
    assert list(runs[0].glob("*.wandb"))


def test_resume_after_interruption_reaches_the_same_vectors(fv_run, tmp_path):
    args = [*COMMON, f"ffv.fv_run={fv_run}", "trainer.max_epochs=2", "logger=[]"]
    _run("fvtrain.train", tmp_path / "whole", *args)
    cut = tmp_path / "cut"
    p = _run("fvtrain.train", cut, *args, "+callbacks.interrupt._target_=fvtrain.training.callbacks.Interrupt",
             "+callbacks.interrupt.after_epochs=1", ok=False)
    assert p.returncode != 0 and not (cut / "metrics.json").exists()
    ck = torch.load(cut / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ck["epoch"] == 0  # stopped after the first of two epochs
    _run("fvtrain.train", cut, *args, "ckpt_path=last")
    whole, resumed = _bank(tmp_path / "whole"), _bank(cut)
    assert list(whole) == list(resumed)
    for r in whole:
        torch.testing.assert_close(resumed[r], whole[r], rtol=1e-6, atol=1e-6)
    mw = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    mr = json.loads((cut / "metrics.json").read_text())
    assert mr["zero_shot_acc"] == mw["zero_shot_acc"] and mr["epochs"] == mw["epochs"] == 2
    assert {r: v["val"] for r, v in mr["relations"].items()} == {r: v["val"] for r, v in mw["relations"].items()}


def test_ddp_sim_metrics_equal_single_process_evaluation(fv_run, tmp_path):
    """ddp_spawn on 2 CPU processes; odd batch counts, so a padding sampler would repeat items."""
    run = tmp_path / "ddp"
    _run("fvtrain.train", run, *COMMON, f"ffv.fv_run={fv_run}", "trainer=ddp_sim", "trainer.max_epochs=1",
         "logger=[csv]")
    assert_ddp_metrics_equal_single_process(run, fv_run)
    # Per-item outcomes gathered from both processes: every test pair exactly once per method.
    m = json.loads((run / "metrics.json").read_text())
    n_items = sum(e["n_test"] for e in m["relations"].values())
    out = json.loads((run / "test_outcomes.json").read_text())["outcomes"]
    for name, o in out.items():
        assert len(o["key"]) == len(set(o["key"])) == n_items, name
    assert m["zero_shot_acc"]["intervals"]["differences"]["ffv - fv"]["n"] == n_items


def test_cross_validation_tests_every_pair_once_and_merges_the_folds(tmp_path):
    from fvtrain.data.select import load_relations
    from fvtrain.data.splits import dedupe
    from omegaconf import OmegaConf

    run = tmp_path / "cv"
    _run("fvtrain.train", run, *COMMON, "data.cv_folds=3", "trainer.max_epochs=1", "logger=[csv]",
         "extract.layer_sweep=false", "ffv.test_modes=[zero_shot]")
    m = json.loads((run / "metrics.json").read_text())
    assert m["cv"]["folds"] == 3 and all((run / f"fold_{i}" / "bank").is_dir() for i in range(3))
    cfg = OmegaConf.load(run / "config.yaml")
    sizes = {n: len(dedupe(r).pairs) for n, r in load_relations(cfg.data).relations.items()}
    out = json.loads((run / "test_outcomes.json").read_text())["outcomes"]
    for name, o in out.items():
        by_rel = {}
        for key in o["key"]:
            by_rel.setdefault(key // 1_000_000, []).append(key % 1_000_000)
        for i, (r, n) in enumerate(sizes.items()):
            assert sorted(by_rel[i]) == list(range(n)), (name, r)  # every pair exactly once
    table = m["zero_shot_acc"]
    for r, n in sizes.items():
        assert m["cv"]["pairs_tested"][r] == n
        c = [v for k, v in zip(out["zero_shot/ffv"]["key"], out["zero_shot/ffv"]["correct"])
             if k // 1_000_000 == list(sizes).index(r)]
        assert abs(table["relations"][r]["ffv"] - sum(c) / n) < 1e-9
    assert "icl" in table["methods"] and table["intervals"]["differences"]["ffv - icl"]["n"] == sum(sizes.values())
