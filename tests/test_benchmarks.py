"""The GPU benchmark runs anywhere: it exits cleanly without CUDA and measures on --device cpu; the
pipeline benchmark prints every stage of the main job."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _run(*args: str, without: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """The script in a new interpreter; the packages in ``without`` fail to import there."""
    if not without:
        return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)
    code = ("import runpy, sys\n" + "".join(f"sys.modules[{m!r}] = None\n" for m in without)
            + f"sys.argv = {[str(SCRIPT), *args]!r}\nrunpy.run_path({str(SCRIPT)!r}, run_name='__main__')\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine without CUDA")
def test_gpu_benchmark_without_cuda_says_so_and_exits_zero():
    p = _run()
    assert p.returncode == 0, p.stderr
    assert "no CUDA device on this machine: nothing to measure" in p.stdout


def test_gpu_benchmark_measures_on_the_given_device():
    p = _run("--device", "cpu", "--model", "tiny-llama", "--n-corrupt", "2", "--relations", "2",
             "--per-relation", "2", "--repeats", "1")
    assert p.returncode == 0, p.stderr
    assert "AIE (fast path, max_rows 512): 2 prompts x 16 heads" in p.stdout
    assert "patched heads/s" in p.stdout
    assert p.stdout.count("steps/s") == 2  # zero-shot and shuffled 10-shot


def test_gpu_benchmark_times_a_random_model_of_a_real_shape():
    """--shape builds a random-weight model of a published config (here Qwen3-0.6B's widths, one
    layer and a small vocabulary, to run on a CPU) and prints every measurement beside its FLOP
    count and the share of the floor that count sets at the measured GEMM rate. It needs none of
    Hydra, OmegaConf or wandb, which GPU images lack (README, "Benchmarks")."""
    p = _run("--shape", "qwen3-0.6b", "--device", "cpu", "--layers", "1", "--vocab", "2048",
             "--n-corrupt", "2", "--ffv-prompts", "4", "--bank", "4", "--score-prompts", "4", "--repeats", "1",
             without=("hydra", "omegaconf", "antlr4", "wandb"))
    assert p.returncode == 0, p.stderr
    assert "random qwen3-0.6b float32: 1 layers x 16 heads, d_model 1024, vocabulary 2048" in p.stdout
    assert "AIE: 2 prompts x 16 heads, T = 87, max_rows 512" in p.stdout
    for label in ("aie_fast", "plain step", "cached step", "source_scores"):
        line = next(x for x in p.stdout.splitlines() if x.strip().startswith(label))
        share = float(re.search(r"([\d.]+)% of floor", line).group(1))
        assert 0 < share < 150, line  # a share of a FLOP floor, not a wrong count


def test_eval_passes_benchmark_runs_and_its_paths_agree():
    """benchmarks/eval_passes.py on a tiny model: both measurements print, and the one-pass outcomes
    equal the per-method reference's."""
    script = SCRIPT.parent / "eval_passes.py"
    p = subprocess.run([sys.executable, str(script), "--model", "tiny-llama", "--n", "8", "--methods", "2",
                        "--reps", "1", "--batch-size", "4"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "first-token completion: one pass" in p.stdout and "same outcomes: True" in p.stdout
    assert "greedy exact match:     one pass" in p.stdout and "same texts: True" in p.stdout


@pytest.mark.slow
def test_pipeline_benchmark_prints_each_stage_and_its_share_in_the_model():
    """benchmarks/pipeline.py runs the main job in-process (here its debug=fast form) and prints one
    line per stage with its seconds, its share and its share inside the frozen model (none for the
    report, which runs no model), after one model load."""
    script = SCRIPT.parent / "pipeline.py"
    p = subprocess.run([sys.executable, str(script), "debug=fast"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    rows = dict(re.findall(r"^  (extract|train|compose|eval|report)\s+\S+\s+\S+%\s+(\S+)", p.stdout, re.M))
    assert set(rows) == {"extract", "train", "compose", "eval", "report"}, p.stdout[-2000:]
    assert rows["report"] == "-" and float(rows["extract"].rstrip("%")) > 0
    assert "model loads: 1" in p.stdout


@pytest.mark.slow
def test_gpu_session_script_runs_every_measurement_on_a_small_shape(tmp_path):
    """benchmarks/gpu_session.sh (the one call a GPU session makes) on a CPU and a one-block shape:
    the kernel measurements against their floors, then the study on the same random shape."""
    import os

    script = SCRIPT.parent / "gpu_session.sh"
    env = {**os.environ, "PYTHON": sys.executable, "SHAPE": "qwen3-0.6b", "DEVICE": "cpu", "DTYPE": "float32",
           "GPU_ARGS": "--layers 1 --vocab 2048 --n-corrupt 2 --ffv-prompts 4 --bank 4 --score-prompts 4 --repeats 1",
           "PIPELINE_ARGS": "model.layers=1 debug=fast stages=[extract] data.relations=[antonym]"}
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    assert "random qwen3-0.6b float32: 1 layers x 16 heads" in p.stdout
    assert "cached step" in p.stdout and "source_scores" in p.stdout
    assert "model=shape model.name=shape-qwen3-0.6b model.dtype=float32 model.device=cpu" in p.stdout
    assert re.search(r"^\s+extract\s+[\d.]+\s", p.stdout, re.M)
    assert "model loads: 1" in p.stdout
    # A failing study still leaves the kernel measurements, printed again at the end, and fails the call.
    env["PIPELINE_ARGS"] += " extract.k=0"
    p = subprocess.run(["bash", str(script)], capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert p.returncode != 0
    end = p.stdout[p.stdout.index("=== benchmarks/gpu.py (exit 0) ==="):]
    assert "cached step" in end and f"=== benchmarks/pipeline.py (exit {p.returncode};" in end
    assert "extract.k=0: the function vector needs at least one head" in end
