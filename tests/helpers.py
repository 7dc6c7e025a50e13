"""Helpers for tests that run the real command lines."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_cli(module: str, *overrides: str, cwd: Path | None = None, check: bool = True,
            timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m <module> <overrides>`` in a subprocess, offline, as a user would run it."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "WANDB_MODE": "offline", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run([sys.executable, "-m", module, *overrides], cwd=cwd or REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{module} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def single_run_dir(root: Path, task: str) -> Path:
    runs = [p.parent for p in (root / task).rglob("metrics.json") if "multirun" not in p.parts]
    assert len(runs) == 1, runs
    return runs[0]


def is_png(path: Path) -> bool:
    return path.is_file() and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def assert_ddp_metrics_equal_single_process(run: Path, fv_run: Path) -> None:
    """The test metrics a multi-process training run wrote equal one process's test loop over the
    same vectors and prompts (DDP must neither drop nor repeat an example)."""
    import json

    import lightning
    import pytest
    import torch

    from fvtrain.artifacts import load_vector
    from fvtrain.data.datamodules import RelationDataModule
    from fvtrain.data.splits import load_splits
    from fvtrain.models import load_model
    from fvtrain.prompts import PromptTemplate
    from fvtrain.training.init import load_init_vectors
    from fvtrain.training.module import FFVModule

    m = json.loads((run / "metrics.json").read_text())
    splits = load_splits(run / "splits.json")
    rels = list(splits)
    bank = torch.stack([load_vector(run / "bank" / r)[0] for r in rels])
    fv, _, _ = load_init_vectors(fv_run, rels, model_id="tiny-llama", d_model=48)
    lm = load_model("tiny-llama")
    module = FFVModule(rels, m["layer"], bank, fv, test_modes=["zero_shot", "shuffled_icl"]).attach_lm(lm)
    dm = RelationDataModule(splits, PromptTemplate(), ["zero_shot"], ["zero_shot"],
                            ["zero_shot", "shuffled_icl"], False, n_shots=3, eval_batch_size=7)
    trainer = lightning.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                                use_distributed_sampler=False, enable_model_summary=False)
    res = trainer.test(module, datamodule=dm, verbose=False)[0]
    for r in rels:
        assert m["relations"][r]["zero_shot"]["ffv"]["n"] == len(splits[r].test)  # nothing counted twice
        for mode in ("zero_shot", "shuffled_icl"):
            for meth in ("none", "fv", "ffv"):
                for stat in ("acc", "prob"):
                    assert m["relations"][r][mode][meth][stat] == pytest.approx(
                        res[f"test/{mode}/{meth}/{stat}/{r}"], rel=1e-5, abs=1e-6), (r, mode, meth, stat)
