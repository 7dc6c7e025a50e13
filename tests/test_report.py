"""fvtrain-report: run and multirun folders -> report.md, PNG figures, metrics.csv; bad folders."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from helpers import is_png, run_cli, single_run_dir

from fvtrain.artifacts import save_tensors, save_vector, write_json
from fvtrain.reporting import report as rp


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _images(md: str) -> list[str]:
    return [m.strip("<>") for m in re.findall(r"!\[[^\]]*\]\(([^)]+)\)", md)]


def check_report(folder: Path, out: Path | None = None) -> tuple[str, list[dict]]:
    """Every image report.md shows exists and is a PNG; returns the markdown and the CSV rows."""
    out = out or folder
    md = (out / "report.md").read_text()
    imgs = _images(md)
    assert imgs, md
    for rel in imgs:
        assert is_png(out / rel), rel
    assert "metrics.csv" in md
    return md, _csv(out / "metrics.csv")


# -- synthetic run folders (no model) ---------------------------------------------------------


def _extract_like(folder: Path, layer: int = 1) -> Path:
    rels = {}
    for i, r in enumerate(("antonym", "plural")):
        rels[r] = {"zero_shot": {"none": {"acc": 0.1 * i, "prob": 0.1, "n": 5}, "fv": {"acc": 0.5, "prob": 0.3, "n": 5}},
                   "shuffled_icl": {"none": {"acc": 0.2, "prob": 0.1, "n": 5}, "fv": {"acc": 0.6, "prob": 0.3, "n": 5}},
                   "icl": {"acc": 0.9, "prob": 0.6, "n": 5}, "n": 5,
                   "layer_sweep": {"acc": [0.1, 0.5, 0.4, 0.2], "prob": [0.1, 0.2, 0.2, 0.1]},
                   "heads": [[1, 2, 0.05], [2, 0, 0.01]], "layer": layer}
        save_tensors(folder / "aie" / f"{r}.safetensors", {"aie": torch.rand(4, 4), "mean": torch.zeros(4, 4, 3)})
        save_vector(folder / "vectors", r, torch.randn(8), {"kind": "fv", "relation": r, "layer": layer})
    write_json(folder / "metrics.json", {"relations": rels, "mean": {"n_relations": 2, "zero_shot": {"none": 0.05, "fv": 0.5},
                                                                     "icl": 0.9}, "layer": layer,
                                         "model": {"model_id": "tiny-llama"}})
    return folder


def _train_like(folder: Path) -> Path:
    """The layout of fvtrain-train's metrics.json (per relation: mode -> method -> {acc})."""
    rels = {r: {"zero_shot": {m: {"acc": a, "prob": a / 2, "n": 6} for m, a in (("none", 0.0), ("fv", 0.3), ("ffv", 0.7))},
                "icl": {"acc": 0.8, "n": 6}} for r in ("antonym", "plural")}
    write_json(folder / "metrics.json", {"relations": rels, "mean": {"zero_shot": {"none": 0.0, "fv": 0.3, "ffv": 0.7}},
                                         "zero_shot_acc": {"relations": {r: {"none": 0.0, "ffv": 0.7} for r in rels}}})
    for r in rels:
        save_vector(folder / "bank", r, torch.randn(8), {"kind": "ffv", "relation": r, "layer": 1})
    return folder


def _compose_like(folder: Path) -> Path:
    def acc(a):
        return {"all": {"acc": a, "n": 10}, "near": {"acc": a + 0.1, "n": 5}, "far": {"acc": a - 0.1, "n": 5},
                "by_relation": {}}
    methods = {m: {"open": acc(a), "mc": acc(a + 0.05)} for m, a in
               (("none", 0.2), ("one_shot", 0.4), ("uniform", 0.3), ("softmax", 0.5), ("affine", 0.6))}
    write_json(folder / "metrics.json", {"methods": methods, "bank": {"n": 4, "kind": "ffv"},
                                         "scheme": {"name": "affine"}})
    return folder


def test_flatten_and_overrides():
    flat = rp.flatten({"a": {"b": 1, "c": [0.5, 0.25], "d": [[1, 2]], "e": None}, "s": "x"})
    assert flat == {"a.b": 1, "a.c.0": 0.5, "a.c.1": 0.25, "a.e": None, "s": "x"}
    assert rp.parse_overrides(["extract.layer=3", "+x.y=[1,2]", "~z", "model=hub"]) == {
        "extract.layer": "3", "x.y": "[1,2]", "model": "hub"}


def test_stage_detection(tmp_path):
    ex = _extract_like(tmp_path / "ex")
    tr = _train_like(tmp_path / "tr")
    co = _compose_like(tmp_path / "co")
    assert rp.detect_stages(ex, json.loads((ex / "metrics.json").read_text())) == ["extract"]
    assert rp.detect_stages(tr, json.loads((tr / "metrics.json").read_text())) == ["train"]
    assert rp.detect_stages(co, json.loads((co / "metrics.json").read_text())) == ["compose"]
    accs = rp.relation_accuracies(json.loads((tr / "metrics.json").read_text()))
    assert accs["antonym"] == {"0-shot": 0.0, "0-shot+FV": 0.3, "0-shot+FFV": 0.7, "ICL": 0.8}
    assert accs["mean"]["0-shot+FFV"] == pytest.approx(0.7)


@pytest.mark.parametrize("maker,figures", [
    (_extract_like, ["accuracy_by_relation.png", "layer_sweep.png", "aie_heatmap.png"]),
    (_train_like, ["accuracy_by_relation.png"]),
    (_compose_like, ["composition_schemes.png"]),
])
def test_report_of_each_stage_generates_its_figures(tmp_path, maker, figures):
    run = maker(tmp_path / "run")
    rep = rp.build_report(run)
    md, rows = check_report(run)
    for f in figures:
        assert is_png(run / "figures" / f) and f"figures/{f}" in md
    assert len(rows) == 1 and rows[0]["job"] == "."
    assert rep.kind == "run" and len(rep.figures) == len(figures)


def test_train_report_has_every_baseline(tmp_path):
    run = _train_like(tmp_path / "run")
    rp.build_report(run)
    md = (run / "report.md").read_text()
    assert "| relation | 0-shot | 0-shot+FV | 0-shot+FFV | ICL |" in md
    assert "Fine-tuned function vectors" in md and "2 fine-tuned vector(s)" in md


def test_multirun_of_synthetic_jobs_with_a_failed_one(tmp_path):
    root = tmp_path / "multirun"
    for i, layer in enumerate((1, 3)):
        job = _extract_like(root / f"{i}_extract.layer={layer}", layer)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(f"- extract.layer={layer}\n- seed=0\n")
    broken = root / "2_extract.layer=5"
    (broken / ".hydra").mkdir(parents=True)
    (broken / ".hydra" / "overrides.yaml").write_text("- extract.layer=5\n")
    write_json(root / "sweep_summary.json", {"jobs": [
        {"num": 2, "overrides": ["extract.layer=5"], "status": "failed", "error": "ValueError: layer 5 is out of range"}]})
    out = tmp_path / "elsewhere"
    rep = rp.build_report(root, out)
    md, rows = check_report(root, out)
    assert [r["job"] for r in rows] == ["0_extract.layer=1", "1_extract.layer=3"]
    assert [r["extract.layer"] for r in rows] == ["1", "3"] and rows[0]["seed"] == "0"
    assert rows[1]["relations.antonym.zero_shot.fv.acc"] == "0.5"
    assert rep.incomplete == [broken] and "2_extract.layer=5" in md and "layer 5 is out of range" in md
    assert is_png(out / "figures" / "sweep.png") and "swept: `extract.layer`" in md
    assert "../multirun/0_extract.layer=1/figures/aie_heatmap.png" in md


def test_multirun_over_seeds_is_summarised_as_mean_and_sd(tmp_path):
    root = tmp_path / "multirun"
    accs = {(1, 0): 0.4, (1, 1): 0.6, (3, 0): 0.5, (3, 1): 0.5}
    for i, ((layer, seed), a) in enumerate(accs.items()):
        job = _extract_like(root / f"{i}_layer={layer},seed={seed}", layer)
        m = json.loads((job / "metrics.json").read_text())
        m["mean"]["zero_shot"]["fv"] = a
        write_json(job / "metrics.json", m)
        (job / ".hydra").mkdir()
        (job / ".hydra" / "overrides.yaml").write_text(f"- extract.layer={layer}\n- seed={seed}\n")
    rp.build_report(root)
    md = (root / "report.md").read_text()
    section = md.split("## Over seeds (mean ± sd)")[1].split("\n\n")[1]
    rows = [r for r in section.splitlines() if r.startswith("| 1 ") or r.startswith("| 3 ")]
    # layer 1: mean 0.5, sample sd 0.1414; layer 3: 0.5 ± 0
    assert "| 1 | 2 |" in rows[0] and "0.500 ± 0.141" in rows[0]
    assert "| 3 | 2 |" in rows[1] and "0.500 ± 0.000" in rows[1]


def test_train_report_shows_intervals_and_paired_differences(tmp_path):
    run = _train_like(tmp_path / "run")
    m = json.loads((run / "metrics.json").read_text())
    m["layer"] = 1
    m["zero_shot_acc"] = {"methods": ["none", "ffv"], "relations": {"antonym": {"none": 0.0, "ffv": 0.7}},
                          "mean": {"none": 0.0, "ffv": 0.7},
                          "intervals": {"relations": {"antonym": {"ffv": [0.5, 0.9]}},
                                        "mean": {"none": [0.0, 0.0], "ffv": [0.5, 0.9]},
                                        "differences": {"ffv - none": {"diff": 0.7, "ci": [0.5, 0.9],
                                                                       "excludes_zero": True, "n": 6}}}}
    write_json(run / "metrics.json", m)
    rp.build_report(run)
    md = (run / "report.md").read_text()
    assert "| antonym | 0.000 | 0.700 [0.500, 0.900] |" in md
    assert "| ffv - none | 6 | +0.700 [+0.500, +0.900]* |" in md


def test_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    from fvtrain.report import main

    (tmp_path / "empty").mkdir()
    with pytest.raises(rp.ReportError, match="no metrics.json under .*empty: give a run folder written by "
                                             "fvtrain-extract/train/compose/eval or a multirun folder"):
        rp.build_report(tmp_path / "empty")
    assert main([str(tmp_path / "empty")]) == 2
    assert "fvtrain-report: error: no metrics.json under" in capsys.readouterr().err
    with pytest.raises(rp.ReportError, match="does not exist"):
        rp.build_report(tmp_path / "missing")
    job = tmp_path / "sweep" / "0_x=1" / ".hydra"
    job.mkdir(parents=True)
    (job / "overrides.yaml").write_text("- x=1\n")
    with pytest.raises(rp.ReportError, match=r"1 job folder\(s\) without metrics.json"):
        rp.build_report(tmp_path / "sweep")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "metrics.json").write_text('{"relations": ')
    with pytest.raises(rp.ReportError, match="metrics.json:1: not valid JSON"):
        rp.build_report(bad)
    assert not (tmp_path / "empty" / "report.md").exists()


# -- real runs (subprocess) -------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("reportruns")
    run_cli("fvtrain.extract", "debug=fast", f"paths.output_root={root}")
    run_cli("fvtrain.extract", "-m", "debug=fast", "extract.layer=1,2", f"paths.output_root={root}")
    multi = [p.parent for p in (root / "extract" / "multirun").rglob("multirun.yaml")]
    assert len(multi) == 1
    return single_run_dir(root, "extract"), multi[0]


@pytest.mark.slow
def test_report_of_a_real_extraction_run(real_runs):
    run, _ = real_runs
    proc = run_cli("fvtrain.report", str(run))
    assert "report:" in proc.stdout and "job" in proc.stdout  # the rich summary table
    md, rows = check_report(run)
    for f in ("aie_heatmap.png", "layer_sweep.png", "accuracy_by_relation.png"):
        assert f"figures/{f}" in md and is_png(run / "figures" / f)
    assert len(rows) == 1 and rows[0]["debug"] == "fast"
    assert "relations.antonym.zero_shot.fv.acc" in rows[0] and rows[0]["model.model_id"] == "tiny-llama"
    # Missing figures are drawn from the saved data (AIE heatmaps from aie/*.safetensors).
    (run / "figures" / "aie_heatmap.png").unlink()
    rep = rp.build_report(run)
    assert is_png(run / "figures" / "aie_heatmap.png") and run / "figures" / "aie_heatmap.png" in rep.figures


@pytest.mark.slow
def test_report_of_a_real_two_job_multirun(real_runs):
    _, multi = real_runs
    run_cli("fvtrain.report", str(multi))
    md, rows = check_report(multi)
    assert len(rows) == 2
    assert [r["extract.layer"] for r in rows] == ["1", "2"]
    assert [r["layer"] for r in rows] == ["1", "2"]  # the metric agrees with the override
    jobs = sorted(p.name for p in multi.iterdir() if (p / "metrics.json").is_file())
    for j in jobs:
        for f in ("aie_heatmap.png", "layer_sweep.png", "accuracy_by_relation.png"):
            assert f"{j}/figures/{f}" in md
    assert is_png(multi / "figures" / "sweep.png")


@pytest.mark.slow
def test_eval_on_a_real_run_then_its_report(real_runs, tmp_path):
    """fvtrain-eval on the extracted vectors (FFV: a perturbed copy standing in for a bank), then a
    report of the eval folder: alignment scatter, decoding ranks, CSV of alignment metrics."""
    from test_alignment_eval import make_relsim

    from fvtrain.artifacts import list_vectors, load_vector

    run, _ = real_runs
    bank = tmp_path / "train_run" / "bank"
    for f in list_vectors(run / "vectors"):
        v, man = load_vector(f)
        save_vector(bank, f.stem, v + 0.1 * torch.randn(v.shape, generator=torch.Generator().manual_seed(0)),
                    {**man, "kind": "ffv"})
    pairs = {"antonym": [("hot", "cold"), ("up", "down"), ("big", "small"), ("wet", "dry")],
             "country_capital": [("France", "Paris"), ("Japan", "Tokyo"), ("Peru", "Lima")]}
    csv_path = make_relsim(tmp_path / "relsim.csv", n=30, rels=list(pairs), pairs=pairs)
    out = tmp_path / "eval"
    proc = run_cli("fvtrain.evaluate", "debug=fast", f"vectors.fv={run}", f"vectors.ffv={bank.parent}",
                   f"judgments.path={csv_path}", "alignment.n_boot=50", f"hydra.run.dir={out}")
    assert "Alignment with human judgments" in proc.stdout and "Logit lens" in proc.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["alignment"]["pair"]["weights"]["n"] == 32
    assert m["alignment"]["relation"]["skipped"]["relation without a vector"]["n"] == 2
    assert m["decoding"]["word_source"] == {"antonym": "builtin", "country_capital": "builtin"}
    shutil.rmtree(out / "figures")
    rp.build_report(out)  # redraws the eval figures from metrics.json + alignment_points.json
    md, rows = check_report(out)
    assert "figures/alignment_scatter.png" in md and "figures/decoding_ranks.png" in md
    assert "Alignment with human judgments" in md and "Decoding (logit lens)" in md
    assert "alignment.pair.weights.all.fv.spearman" in rows[0]
