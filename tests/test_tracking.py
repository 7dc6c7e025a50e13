"""Experiment tracking (fvtrain/tracking.py): every stage job is one run in each configured logger.

wandb runs in offline mode; its run folders are read back with :func:`fvtrain.tracking.read_wandb_run`
(the records of the ``.wandb`` file), CSV from the CSV logger's files, TensorBoard from its event files.
"""

from __future__ import annotations

import csv
import json
import logging
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import run_cli
from omegaconf import OmegaConf

from fvtrain.config import compose
from fvtrain.tracking import Tracker, read_wandb_run, tracking

EVERY_LOGGER = "logger=[csv,tensorboard,wandb]"


def _wandb_runs(folder: Path, wait_s: float = 60) -> list[dict]:
    """The offline runs under ``folder``; wandb's service writes a run's last records (its exit code)
    shortly after ``finish()`` returns, so wait for them."""
    deadline = time.monotonic() + wait_s
    while True:
        runs = [read_wandb_run(p) for p in sorted(folder.rglob("offline-run-*")) if p.is_dir()]
        if all(r["exit_code"] is not None for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(0.2)


def _csv_metrics(run: Path) -> dict:
    rows = list(csv.DictReader(next((run / "csv").glob("version_*/metrics.csv")).open()))
    merged: dict = {}
    for r in rows:
        merged.update({k: float(v) for k, v in r.items() if v not in ("", None)})
    return merged


def _tb_scalars(run: Path) -> dict:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((run / "tensorboard").glob("version_*")))).Reload()
    return {tag: acc.Scalars(tag)[-1].value for tag in acc.Tags()["scalars"]}


@pytest.mark.slow  # a real command line
def test_extraction_multirun_over_two_layers_is_one_wandb_group(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the subprocess: no spinning threads on shared cores
    run_cli("fvtrain.extract", "-m", "model=tiny-llama", "debug=fast", "extract.layer=1,2", EVERY_LOGGER,
            f"paths.output_root={tmp_path}")
    jobs = sorted(p.parent for p in (tmp_path / "extract" / "multirun").rglob("metrics.json"))
    assert len(jobs) == 2
    sweep = jobs[0].parent
    groups, names = set(), []
    for layer, job in zip((1, 2), jobs):
        metrics = json.loads((job / "metrics.json").read_text())
        [w] = _wandb_runs(job / "wandb")  # one run per job, ended: the next job did not reuse it
        groups.add(w["group"])
        names.append(w["name"])
        assert w["job_type"] == "extract" and w["exit_code"] == 0
        assert w["config"]["extract.layer"] == layer and w["config"]["stage"] == "extract"
        s, c, tb = w["summary"], _csv_metrics(job), _tb_scalars(job)
        assert s["layer"] == c["layer"] == tb["layer"] == layer
        for rel, m in metrics["relations"].items():
            acc = m["zero_shot"]["fv"]["acc"]
            key = f"test/zero_shot/fv/acc/{rel}"
            assert s[key] == pytest.approx(acc) and c[key] == pytest.approx(acc) and tb[key] == pytest.approx(acc)
            assert s[f"test/icl/acc/{rel}"] == pytest.approx(m["icl"]["acc"])
        assert s["test/zero_shot/fv/acc"] == pytest.approx(metrics["mean"]["zero_shot"]["fv"])
        # tables (wandb Table, CSV file) and figures (wandb Image, listed beside the CSV metrics)
        assert s["tables/fv_accuracy/_type"] == "table-file" and s["tables/layer_sweep/_type"] == "table-file"
        assert s["figures/aie_heatmap/_type"] == "images/separated"
        table = list(csv.reader(next((job / "csv").glob("version_*/tables/fv_accuracy.csv")).open()))
        assert table[0][:3] == ["relation", "0-shot", "0-shot+FV"] and [r[0] for r in table[1:]] == [
            *metrics["relations"], "mean"]
        assert "aie_heatmap" in next((job / "csv").glob("version_*/figures.csv")).read_text()
    assert groups == {f"extract/multirun/{sweep.parent.name}/{sweep.name}"}  # the sweep folder
    assert [n.split(",")[0] for n in names] == ["extract.layer=1", "extract.layer=2"]  # the overrides


def _bank(tmp_path: Path) -> Path:
    from fvtrain.artifacts import save_vector

    g = torch.Generator().manual_seed(0)
    for rel in ("antonym", "country_capital", "plural"):
        save_vector(tmp_path / "bank", rel, torch.randn(48, generator=g) * 3,
                    {"kind": "ffv", "relation": rel, "model_id": "tiny-llama", "model_revision": "seed:0",
                     "model_type": "llama", "layer": 1, "seed": 0})
    return tmp_path / "bank"


def test_compose_logs_accuracy_by_scheme_and_distance(tmp_path, tiny_llama):
    from fvtrain.composition import job

    args = ["model=tiny-llama", f"basis.path={_bank(tmp_path)}", "composition=softmax", "compose.also=[uniform]",
            "compose.baselines=[none]", "analogies.max_items=12", "analogies.relations=[antonym,country_capital,plural]"]
    plain = job.run(compose("compose", [*args, "logger=[]"]), tmp_path / "plain", tiny_llama)
    cfg = compose("compose", [*args, EVERY_LOGGER])
    before = OmegaConf.to_yaml(cfg)
    res = job.run(cfg, tmp_path / "logged", tiny_llama)
    assert OmegaConf.to_yaml(cfg) == before  # the job never changes its config
    assert res.metrics["methods"] == plain.metrics["methods"]  # logging is a side effect only
    assert not (tmp_path / "plain" / "csv").exists() and not (tmp_path / "plain" / "wandb").exists()

    out, methods = tmp_path / "logged", res.metrics["methods"]
    assert list(methods) == ["none", "uniform", "softmax"]
    [w] = _wandb_runs(out / "wandb")
    assert w["job_type"] == "compose" and w["exit_code"] == 0 and w["config"]["composition.name"] == "softmax"
    c, tb = _csv_metrics(out), _tb_scalars(out)
    n_logged = 0
    for name, m in methods.items():
        for mode in ("open", "mc"):
            for dist in ("all", "near", "far"):
                key, acc = f"analogy/{mode}/{name}/acc/{dist}", m[mode][dist]["acc"]
                if acc is None:
                    assert key not in w["summary"] and key not in c
                    continue
                n_logged += 1
                assert w["summary"][key] == pytest.approx(acc) and c[key] == pytest.approx(acc)
                assert tb[key] == pytest.approx(acc)
    assert n_logged >= 3 * 2 * 2  # every method, both modes, all and at least one distance
    # the analogy table: one row per method, open / MC by near and far, as wandb Table and CSV
    assert w["summary"]["tables/analogy_accuracy/_type"] == "table-file"
    media = list((out / "wandb").rglob("media/table/tables/analogy_accuracy_*.table.json"))
    assert len(media) == 1 and json.loads(media[0].read_text())["columns"][:4] == [
        "method", "open all", "open near", "open far"]
    rows = list(csv.reader(next((out / "csv").glob("version_*/tables/analogy_accuracy.csv")).open()))
    assert rows[0] == ["method", "open all", "open near", "open far", "MC all", "MC near", "MC far"]
    assert [r[0] for r in rows[1:]] == ["none", "uniform", "softmax"]
    assert w["summary"]["figures/analogy_accuracy/_type"] == "images/separated"
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(next((out / "tensorboard").glob("version_*"))), size_guidance={"images": 0}).Reload()
    assert "figures/analogy_accuracy" in acc.Tags()["images"]


@pytest.mark.slow  # a real command line
def test_main_job_is_one_group_with_one_run_per_stage(tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    run_cli("fvtrain.pipeline", "debug=smoke", "trainer.max_epochs=1", "analogies.max_items=6", "logger=[csv,wandb]",
            f"paths.output_root={tmp_path}")
    [run] = [p.parent for p in (tmp_path / "pipeline").rglob("pipeline.json")]
    runs = {}
    for stage in ("extract", "train", "compose", "eval"):
        [w] = _wandb_runs(run / stage / "wandb")  # the Trainer and the tracker share the train run
        runs[stage] = w
        assert (w["name"], w["job_type"], w["exit_code"]) == (stage, stage, 0)
        assert (run / stage / "csv").is_dir()
    assert not (run / "wandb").exists()
    assert {w["group"] for w in runs.values()} == {f"pipeline/{run.parent.name}/{run.name}"}
    assert len({w["id"] for w in runs.values()}) == 4
    train = runs["train"]["summary"]
    assert "train/loss_epoch" in train or "train/loss_step" in train  # Lightning's logging ...
    assert train["tables/zero_shot_accuracy/_type"] == "table-file"  # ... and the tracker's, one run
    tm = json.loads((run / "train" / "metrics.json").read_text())
    assert train["test/zero_shot/ffv/acc/antonym"] == pytest.approx(tm["relations"]["antonym"]["zero_shot"]["ffv"]["acc"])
    assert "analogy/open/affine/acc/far" in runs["compose"]["summary"]
    assert any(k.startswith("decoding/fv/") for k in runs["eval"]["summary"])
    assert runs["train"]["config"]["ffv.init"] == "fv"


def test_failing_job_run_is_closed_and_marked_failed(tmp_path, tiny_llama):
    from fvtrain.errors import ConfigError
    from fvtrain.extraction import job

    wandb = pytest.importorskip("wandb")
    bad = compose("extract", ["model=tiny-llama", "debug=fast", "extract.k=999", "logger=[csv,wandb]"])
    with pytest.raises(ConfigError):
        job.run(bad, tmp_path / "bad", tiny_llama)
    assert wandb.run is None  # ended, so the next job in this process gets a run of its own
    ok = compose("extract", ["model=tiny-llama", "debug=fast", "extract.layer_sweep=false", "logger=[csv,wandb]"])
    job.run(ok, tmp_path / "ok", tiny_llama)
    assert wandb.run is None
    [failed], [good] = _wandb_runs(tmp_path / "bad" / "wandb"), _wandb_runs(tmp_path / "ok" / "wandb")
    assert failed["exit_code"] == 1 and good["exit_code"] == 0 and failed["id"] != good["id"]
    assert failed["config"]["extract.k"] == 999  # the config of the failed run was logged
    assert "test/zero_shot/fv/acc/antonym" in good["summary"] and not any(
        k.startswith("test/") for k in failed["summary"])
    assert next((tmp_path / "bad" / "csv").glob("version_*/hparams.yaml")).is_file()

    # The context manager itself: any exception (also KeyboardInterrupt) ends the run as failed.
    cfg = compose("extract", ["model=tiny-llama", "logger=wandb"])
    with pytest.raises(KeyboardInterrupt), tracking(cfg, tmp_path / "interrupted", "extract", group="g",
                                                    name="n") as t:
        t.log_metrics({"x": 1.0})
        raise KeyboardInterrupt
    assert t.status == "failed" and wandb.run is None
    [w] = _wandb_runs(tmp_path / "interrupted" / "wandb")
    assert (w["group"], w["name"], w["exit_code"], w["summary"]["x"]) == ("g", "n", 1, 1.0)


class _Broken:
    """A logger whose every call fails, like wandb online without a network or a full disk."""

    def __getattr__(self, name):
        def fail(*a, **k):
            raise OSError(28, "No space left on device")
        return fail


def test_a_failing_logger_warns_once_and_the_others_go_on(tmp_path, caplog):
    from lightning.pytorch.loggers import CSVLogger

    from fvtrain.reporting.tables import Table

    good = CSVLogger(str(tmp_path), name="csv")
    t = Tracker([_Broken(), good], "compose", tmp_path)
    cfg = compose("compose", ["model=tiny-llama"])
    with caplog.at_level(logging.WARNING, logger="fvtrain.tracking"):
        t.log_config(cfg)
        t.log_metrics({"a": 1.0, "skipped": None, "nan": float("nan")})
        t.log_metrics({"b": 2})
        t.log_table("scores", Table("Scores", ["method", "acc"], [["x", 0.5], ["y", "-"]]))
        t.finish("success")
    assert len([r for r in caplog.records if "_Broken logger failed" in r.getMessage()]) == 1
    logged = _csv_metrics(tmp_path)
    assert (logged["a"], logged["b"]) == (1.0, 2.0) and "skipped" not in logged and "nan" not in logged
    rows = list(csv.reader((tmp_path / "csv" / "version_0" / "tables" / "scores.csv").open()))
    assert rows == [["method", "acc"], ["x", "0.5"], ["y", ""]]

    # A logger node that cannot even be built is left out with a warning; the job still runs.
    cfg = compose("compose", ["model=tiny-llama", "+logger.broken._target_=no.such.Logger"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fvtrain.tracking"), tracking(cfg, tmp_path / "run", "compose") as t2:
        t2.log_metrics({"a": 1.0})
    assert [type(lg).__name__ for lg in t2.loggers] == ["CSVLogger"]
    assert any("'broken' could not be started" in r.getMessage() for r in caplog.records)
    assert "wandb" not in sys.modules or sys.modules["wandb"].run is None
