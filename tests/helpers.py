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
