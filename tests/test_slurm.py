"""Cluster submission on a real single-node SLURM (``tests/slurm_cluster.py``), as a user runs it.

The ``slurm`` tests need ``slurmctld slurmd slurm-client munge`` installed (``.ci/setup-slurm.sh``)
and skip with the reason otherwise; ``pytest -m slurm`` runs them. Jobs run the tiny model on the
node's CPUs (``hydra.launcher.partition=debug``, GPUs per task follow the trainer/model: none).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import assert_ddp_metrics_equal_single_process
from slurm_cluster import ClusterUnavailable, SlurmCluster

REPO = Path(__file__).resolve().parents[1]
# What a user on a CPU partition adds to a sweep (no GPU option: the trainer/model asks for none).
CPU_PARTITION = ["hydra.launcher.partition=debug", "hydra.launcher.cpus_per_task=1",
                 "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=15"]
EXTRACT = ["debug=fast", "extract.n_shots=3", "extract.layer_sweep=false"]


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A private single-node SLURM for the session; every daemon it started is stopped at the end."""
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    try:
        cluster.start()
    except ClusterUnavailable as err:
        if "not installed" in str(err) or os.geteuid() != 0:
            pytest.skip(str(err))
        raise
    try:
        yield cluster
    finally:
        cluster.stop()


def _env(cluster: SlurmCluster) -> dict:
    return {**cluster.env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "WANDB_MODE": "offline",
            "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


def _cli(cluster: SlurmCluster, module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, env=_env(cluster),
                          capture_output=True, text=True, timeout=timeout, check=False)


def _summary(root: Path) -> list[dict]:
    found = list(root.rglob("sweep_summary.json"))
    assert len(found) == 1, found
    return json.loads(found[0].read_text())["jobs"]


def _explain(proc: subprocess.CompletedProcess, cluster: SlurmCluster, root: Path) -> str:
    logs = "\n".join(f"[{p}] {p.read_text(errors='replace')[-1500:]}"
                     for p in sorted(root.rglob(".submitit/*/*_log.*")))
    return f"rc={proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{logs}\n{cluster.logs()}"


@pytest.fixture(scope="module")
def array_sweep(slurm_cluster, tmp_path_factory):
    """``fvtrain-extract -m launcher=slurm`` over layers 1 and 9 of the 4-layer model (9 fails)."""
    root = tmp_path_factory.mktemp("array")
    t = time.monotonic()
    proc = _cli(slurm_cluster, "fvtrain.extract", "-m", "launcher=slurm", *CPU_PARTITION, *EXTRACT,
                "extract.layer=1,9", f"paths.output_root={root}")
    return proc, root, time.monotonic() - t


@pytest.mark.slurm
def test_array_sweep_one_job_fails_the_other_completes(array_sweep, slurm_cluster):
    proc, root, seconds = array_sweep
    assert proc.returncode != 0, _explain(proc, slurm_cluster, root)  # a failed job fails the sweep
    jobs = _summary(root)
    assert [j["status"] for j in jobs] == ["completed", "failed"], _explain(proc, slurm_cluster, root)
    assert "layer 9 is out of range" in jobs[1]["error"]
    assert json.loads((Path(jobs[0]["folder"]) / "metrics.json").read_text())["layer"] == 1
    # One array of two tasks; the jobs' folders sit in the sweep folder the launcher named (the
    # ${run_id:} of the submitting process, resolved the same way inside the SLURM jobs).
    script = next(root.rglob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --array=0-1" in script and "--gpus" not in script and "--gres" not in script
    summary_dir = next(root.rglob("sweep_summary.json")).parent
    assert {Path(j["folder"]).parent for j in jobs} == {summary_dir}
    assert re.fullmatch(r"\d\d-\d\d-\d\d-\d+", summary_dir.name), summary_dir
    assert "Bypassing sacct error" not in proc.stdout + proc.stderr  # no accounting, no noise
    print(f"array sweep on SLURM: {seconds:.0f}s")


@pytest.mark.slurm
def test_slurm_ddp_two_cpu_ranks_match_single_process_evaluation(array_sweep, slurm_cluster, tmp_path):
    """``launcher=slurm_ddp``: one job, two srun tasks joined by Lightning as a 2-rank DDP group."""
    fv_run = Path(_summary(array_sweep[1])[0]["folder"])
    proc = _cli(slurm_cluster, "fvtrain.train", "-m", "launcher=slurm_ddp", *CPU_PARTITION,
                "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.max_epochs=1",
                "debug=fast", "extract.n_shots=3", "ffv.n_shots=3", "ffv.batch_per_relation=4",
                "ffv.eval_batch_size=7", "ffv.test_modes=[zero_shot,shuffled_icl]", "logger=[csv]",
                f"ffv.fv_run='{fv_run}'", f"paths.output_root={tmp_path}")
    assert proc.returncode == 0, _explain(proc, slurm_cluster, tmp_path)
    script = next(tmp_path.rglob(".submitit/*/*_submission.sh")).read_text()
    assert "#SBATCH --ntasks-per-node=2" in script and "--gpus" not in script
    logs = "".join(p.read_text(errors="replace") for p in tmp_path.rglob(".submitit/*/*_log.*"))
    assert "GLOBAL_RANK: 1" in logs or "global_rank=1" in logs.lower() or "rank: 1" in logs.lower(), logs[-3000:]
    (job,) = _summary(tmp_path)
    assert job["status"] == "completed"
    run = Path(job["folder"])
    assert_ddp_metrics_equal_single_process(run, fv_run)


@pytest.mark.slurm
def test_scancel_is_reported_as_cancelled(slurm_cluster, tmp_path):
    """A job cancelled while it runs ends the sweep non-zero and reads ``cancelled`` in the summary."""
    args = [sys.executable, "-m", "fvtrain.extract", "-m", "launcher=slurm", *CPU_PARTITION, *EXTRACT,
            "extract.layer=1", "hydra.launcher.setup=['sleep 300']", f"paths.output_root={tmp_path}"]
    # Jobs of earlier tests may still be listed (completing): cancel only the one this sweep submits.
    earlier = set(slurm_cluster.job_states())
    proc = subprocess.Popen(args, cwd=REPO, env=_env(slurm_cluster), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        end = time.monotonic() + 120
        running = []
        while time.monotonic() < end and not running and proc.poll() is None:
            time.sleep(0.5)
            running = [ln.split()[0] for ln in slurm_cluster.squeue()
                       if ln.endswith("RUNNING") and ln.split()[0] not in earlier]
        assert running, f"no job started: {slurm_cluster.squeue()}"
        subprocess.run(["scancel", running[0]], env=slurm_cluster.env, check=True)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, out + err
    (job,) = _summary(tmp_path)
    assert job["status"] == "cancelled", job
    assert job["slurm_state"] == "CANCELLED" and "without a result" in job["error"]
    assert not list(tmp_path.rglob("metrics.json"))
    assert "Bypassing sacct error" not in out + err


@pytest.mark.slurm
def test_refused_submission_reads_as_one_line(slurm_cluster, tmp_path):
    """Asking a CPU-only partition for a GPU: sbatch refuses, fvtrain says so in one line."""
    proc = _cli(slurm_cluster, "fvtrain.extract", "-m", "launcher=slurm", *CPU_PARTITION, *EXTRACT,
                "extract.layer=1", "hydra.launcher.gpus_per_node=1", f"paths.output_root={tmp_path}",
                timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("fvtrain: error: sbatch refused the sweep: Invalid generic resource")
    assert "hydra.launcher.gpus_per_node=null" in lines[0] and "trainer.accelerator=cpu" in lines[0]


# -- without a cluster -----------------------------------------------------------------------------

def _launcher(config: str, *overrides: str):
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    import fvtrain.cli  # noqa: F401  (registers the launcher and its resolver)
    from fvtrain.config import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose(config, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg.hydra.launcher


@pytest.mark.parametrize("config,overrides,gpus,tasks", [
    ("train", ["launcher=slurm"], None, 1),                                   # trainer: cpu
    ("train", ["launcher=slurm", "trainer=gpu"], 1, 1),
    ("train", ["launcher=slurm_ddp", "trainer=ddp", "trainer.devices=4"], 4, 4),
    ("train", ["launcher=slurm_ddp", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2"], None, 2),
    ("extract", ["launcher=slurm"], None, 1),                                 # model.device: cpu
    ("extract", ["launcher=slurm", "model=gpt-j-6b"], 1, 1),                  # model.device: cuda
    ("extract", ["launcher=slurm", "hydra.launcher.gpus_per_node=2"], 2, 1),  # explicit wins
])
def test_gpus_per_task_follow_the_trainer_or_model(config, overrides, gpus, tasks):
    launcher = _launcher(config, *overrides)
    assert launcher.gpus_per_node == gpus
    assert launcher.tasks_per_node == tasks


def test_sbatch_error_line_names_the_setting():
    from fvtrain.launchers import sbatch_error_line

    line = sbatch_error_line("sbatch: error: Invalid generic resource (gres) specification\n")
    assert line.startswith("sbatch refused the sweep: Invalid generic resource (gres) specification;")
    assert "hydra.launcher.gpus_per_node=null" in line
    line = sbatch_error_line("sbatch: error: invalid partition specified: gpu\n"
                             "sbatch: error: Batch job submission failed: Invalid partition name specified")
    assert "Invalid partition name specified" in line and "hydra.launcher.partition=" in line
