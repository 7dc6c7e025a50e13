"""The main job end to end on a reduced configuration: every artifact of the full run exists."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from helpers import is_png, run_cli
from omegaconf import OmegaConf

pytestmark = pytest.mark.slow


def test_pipeline_smoke_writes_every_artifact(tmp_path):
    proc = run_cli("fvtrain.pipeline", "debug=smoke", f"paths.output_root={tmp_path}")
    runs = list((tmp_path / "pipeline").rglob("pipeline.json"))
    assert len(runs) == 1
    run = runs[0].parent
    info = json.loads(runs[0].read_text())
    assert info["stages"] == ["extract", "train", "compose", "eval", "report"]
    # extraction
    for rel in ("antonym", "country_capital"):
        assert (run / "extract" / "vectors" / f"{rel}.safetensors").is_file()
        assert (run / "extract" / "vectors" / f"{rel}.json").is_file()
        assert (run / "train" / "bank" / f"{rel}.safetensors").is_file()
        assert (run / "train" / "bank" / f"{rel}.json").is_file()
    assert is_png(run / "extract" / "figures" / "aie_heatmap.png")
    # training metrics under the documented keys
    tm = json.loads((run / "train" / "metrics.json").read_text())
    assert set(tm["relations"]) == {"antonym", "country_capital"}
    assert {"none", "fv", "ffv", "icl"} <= set(tm["zero_shot_acc"]["methods"])
    # composition and evaluation
    cm = json.loads((run / "compose" / "metrics.json").read_text())
    assert "affine" in json.dumps(cm) and "far" in json.dumps(cm)
    assert (run / "eval" / "metrics.json").is_file()
    # report
    report = (run / "report.md").read_text()
    pngs = [p for p in run.rglob("*.png")]
    assert pngs and all(is_png(p) for p in pngs)
    assert report.startswith(f"# fvtrain report: main job `{run}`")
    for stage in ("extract", "train", "compose", "eval"):
        assert f"## Stage `{stage}`" in report
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+\.png)\)", report)
    assert len(linked) >= 4 and all(is_png(run / p) for p in linked)
    assert "aie_heatmap.png" in report and "composition_schemes.png" in report
    assert len((run / "metrics.csv").read_text().strip().splitlines()) == 1 + 4  # header + a row per stage
    assert (run / "config.yaml").is_file()
    out = proc.stdout
    assert "Relation completion" in out and "Analogies" in out and "report:" in out


def test_the_main_job_loads_the_model_once_and_hands_stages_their_inputs(tmp_path, monkeypatch):
    """In process: one model load for all four stages; each stage gets its folder and the previous
    stage's output explicitly, and the config is left as it was."""
    import fvtrain.models
    from fvtrain.config import compose
    from fvtrain.pipeline import pipeline

    loads = []
    real = fvtrain.models.load_model

    def counting(*args, **kwargs):
        loads.append(kwargs.get("name", args[0] if args else None))
        return real(*args, **kwargs)

    monkeypatch.setattr(fvtrain.models, "load_model", counting)
    cfg = compose("pipeline", ["debug=smoke", "stages=[extract,train,compose,eval]", "logger=[]"],
                  output_dir=tmp_path / "run")
    before = OmegaConf.to_yaml(cfg)
    res = pipeline(cfg, tmp_path / "run")
    assert loads == ["tiny-llama"] and res["model_loads"] == 1
    assert OmegaConf.to_yaml(cfg) == before
    for stage in ("extract", "train", "compose", "eval"):
        assert json.loads((tmp_path / "run" / stage / "metrics.json").read_text())["stage"] == stage
    bank = json.loads((tmp_path / "run" / "compose" / "metrics.json").read_text())["bank"]["path"]
    assert Path(bank) == tmp_path / "run" / "train" / "bank"
    assert res["results"]["train"]["fv_source"] == str(tmp_path / "run" / "extract" / "vectors")
