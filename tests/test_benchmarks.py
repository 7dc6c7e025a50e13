"""The GPU benchmark runs anywhere: it exits cleanly without CUDA and measures on --device cpu."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu.py"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=600)


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


def test_eval_passes_benchmark_runs_and_its_paths_agree():
    """benchmarks/eval_passes.py on a tiny model: both measurements print, and the one-pass outcomes
    equal the per-method reference's."""
    script = SCRIPT.parent / "eval_passes.py"
    p = subprocess.run([sys.executable, str(script), "--model", "tiny-llama", "--n", "8", "--methods", "2",
                        "--reps", "1", "--batch-size", "4"], capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr
    assert "first-token completion: one pass" in p.stdout and "same outcomes: True" in p.stdout
    assert "greedy exact match:     one pass" in p.stdout and "same texts: True" in p.stdout
