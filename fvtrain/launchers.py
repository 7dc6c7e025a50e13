"""Launcher configs for Hydra multirun on SLURM, registered in Hydra's ConfigStore.

``hydra/launcher=fvtrain_slurm`` is hydra-submitit-launcher's SLURM launcher with these changes
(made by :func:`register`, which every fvtrain entry point calls):

- ``srun_args``: hydra-submitit-launcher 1.2 does not expose submitit's ``srun_args``; the schema
  gains that field (every launcher field reaches submitit as ``slurm_<field>``).
- A refused submission (``sbatch: error: ...``) ends the command with one line that names the
  launcher setting to change, not a traceback.
- Job states come from ``sacct``, or from ``scontrol`` where the cluster keeps no accounting (no
  "Bypassing sacct error" warning on every poll). A job that ended without a result (cancelled
  with ``scancel``, timed out, killed for memory) does not stop the sweep: it is recorded in
  ``sweep_summary.json`` as ``cancelled``/``timeout``/``failed`` and the sweep exits non-zero.
- Multi-task jobs (``launcher=slurm_ddp``): srun starts every rank at once, so ranks > 0 wait until
  rank 0 holds the run folder (:func:`fvtrain.runs.claim`), as with Lightning's own DDP launch;
  a rank whose job fails exits non-zero and ``--kill-on-bad-exit=1`` ends the others (no rank
  left waiting for a peer until the time limit).

The ``${fvtrain.gpus:...}`` resolver (conf/launcher/slurm.yaml) asks SLURM for GPUs only where the
job uses them: the trainer's accelerator, or the model's device for stages without a trainer.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

log = logging.getLogger("fvtrain.launchers")


def slurm_gpus(accelerator: Any = None, device: Any = None, count: Any = 1) -> int | None:
    """GPUs per node to request: none when the job runs on CPU, else ``count``.

    ``accelerator`` is the trainer's (``cpu``, ``gpu``, ``cuda``, ``auto``, ...; None for stages
    without a trainer), ``device`` the model's (``cpu``, ``cuda``, ``cuda:1``, None).
    """
    where = accelerator if accelerator is not None else device
    if where is not None and str(where).lower().split(":")[0] == "cpu":
        return None
    try:
        n = int(count)
    except (TypeError, ValueError):
        return 1
    return n if n > 0 else 1


OmegaConf.register_new_resolver("fvtrain.gpus", slurm_gpus, replace=True)


# -- sbatch refusals -----------------------------------------------------------------------------

_HINTS = [
    ("gres", ("the partition has no such GPUs: train with trainer.accelerator=cpu (asks for none), "
             "set hydra.launcher.gpus_per_node=null, or choose a GPU partition (hydra.launcher.partition=...)")),
    ("partition", "choose a partition that exists (sinfo lists them): hydra.launcher.partition=..."),
    ("node configuration is not available", ("a node has fewer resources than asked: lower "
             "hydra.launcher.cpus_per_task, mem_gb, tasks_per_node or gpus_per_node")),
    ("more processors", "a node has fewer CPUs than asked: lower hydra.launcher.cpus_per_task or tasks_per_node"),
    ("memory", "lower hydra.launcher.mem_gb"),
    ("time limit", "lower hydra.launcher.timeout_min (minutes) below the partition's limit"),
    ("account", "set hydra.launcher.account=... (sacctmgr show assoc user=$USER lists yours)"),
    ("qos", "set hydra.launcher.qos=..."),
]


def sbatch_error_line(stderr: str) -> str:
    """One line out of sbatch's complaint, with the launcher setting to change."""
    lines = [ln.strip() for ln in str(stderr).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower()]
    msg = (errors or lines or ["sbatch failed"])[-1]
    for prefix in ("sbatch: error: Batch job submission failed: ", "sbatch: error: ", "sbatch: "):
        if msg.startswith(prefix):
            msg = msg[len(prefix):]
            break
    low = " ".join(lines).lower()
    hint = next((h for key, h in _HINTS if key in low),
                "check the hydra.launcher.* settings (conf/launcher/slurm.yaml)")
    return f"sbatch refused the sweep: {msg}; {hint}"


# -- job states without accounting ---------------------------------------------------------------

def _scontrol_states(job_ids: Sequence[str]) -> dict:
    """``{"123_4": {"JobID": ..., "State": ..., "NodeList": ...}}`` from ``scontrol show job``."""
    info: dict = {}
    for jid in job_ids:
        try:
            out = subprocess.run(["scontrol", "show", "job", "-o", str(jid)], capture_output=True,
                                 text=True, timeout=60, check=False).stdout
        except (OSError, subprocess.SubprocessError):
            continue
        for line in out.splitlines():
            f = dict(kv.split("=", 1) for kv in line.split() if "=" in kv)
            if "JobId" not in f:
                continue
            stats = {"JobID": f["JobId"], "State": f.get("JobState", "UNKNOWN"), "NodeList": f.get("NodeList", "")}
            task = f.get("ArrayTaskId")
            if not task:
                info[f["JobId"]] = stats
                continue
            for part in task.split("%")[0].split(","):
                lo, _, hi = part.partition("-")
                if lo.isdigit():
                    for i in range(int(lo), int(hi or lo) + 1):
                        info[f"{f['ArrayJobId']}_{i}"] = stats
    return info


def _watcher_class():
    from submitit.slurm.slurm import SlurmInfoWatcher

    class Watcher(SlurmInfoWatcher):
        """submitit's watcher, falling back to ``scontrol`` quietly when ``sacct`` fails."""

        sacct_disabled = False

        def update(self) -> None:
            import time

            command = self._make_command()
            if command is None:
                return
            self._num_calls += 1
            info = None
            if not self.sacct_disabled:
                proc = None
                try:
                    proc = subprocess.run(command, capture_output=True, timeout=120, check=False)
                except (OSError, subprocess.SubprocessError) as err:
                    reason = str(err)
                else:
                    reason = proc.stderr.decode(errors="replace").strip()
                if proc is not None and proc.returncode == 0:
                    self._output = proc.stdout
                    info = self.read_info(proc.stdout)
                elif proc is None or "accounting storage is disabled" in reason.lower():
                    Watcher.sacct_disabled = True
                    log.info("sacct is unavailable (%s); job states come from scontrol",
                             (reason.splitlines() or ["?"])[0])
                else:
                    log.debug("sacct failed (%s); asking scontrol", reason)
            if info is None:
                ids = sorted({x.split("_")[0] for x in self._registered - self._finished})
                info = _scontrol_states(ids)
            self._info_dict.update(info)
            self._last_status_check = time.time()
            for job_id in self._registered - self._finished:
                if self.is_done(job_id, mode="cache"):
                    self._finished.add(job_id)

    return Watcher


def _install_watcher() -> None:
    from submitit.slurm.slurm import SlurmJob

    if getattr(SlurmJob.watcher, "fvtrain", False):
        return
    watcher = _watcher_class()(delay_s=120)
    watcher.fvtrain = True
    SlurmJob.watcher = watcher


# -- the launcher --------------------------------------------------------------------------------
# Hydra instantiates launchers only from the ``hydra_plugins`` namespace, so fvtrain cannot name a
# launcher class of its own in ``_target_``: ``register()`` gives hydra-submitit-launcher's
# ``SlurmLauncher`` (only that class, only in processes that run an fvtrain entry point) the
# ``launch`` below, which is the plugin's 1.2 ``launch`` plus error handling.

def _launch(self: Any, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[Any]:
    import os

    import submitit
    from hydra.core.singleton import Singleton
    from hydra.core.utils import filter_overrides
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf
    from submitit.core.utils import FailedJobError, UncompletedJobError

    assert self.config is not None and len(job_overrides) > 0
    _install_watcher()
    init_keys = {"max_num_timeout", "submitit_folder"}
    executor = submitit.AutoExecutor(
        cluster=self._EXECUTOR, folder=self.params["submitit_folder"],
        **{f"{self._EXECUTOR}_{k}": v for k, v in self.params.items() if k == "max_num_timeout"})
    params = {k: v for k, v in self.params.items() if k not in init_keys}
    if _tasks(params) > 1:  # one rank failing ends the job step instead of leaving the others waiting
        srun_args = list(params.get("srun_args") or [])
        if not any(a.startswith(("--kill-on-bad-exit", "-K")) for a in srun_args):
            params["srun_args"] = srun_args + ["--kill-on-bad-exit=1"]
    baseparams = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in baseparams else f"{self._EXECUTOR}_{k}": v
                                  for k, v in params.items()})

    sweep_dir = Path(str(self.config.hydra.sweep.dir))
    log.info("Submitit '%s' sweep output dir : %s", self._EXECUTOR, sweep_dir)
    sweep_dir.mkdir(parents=True, exist_ok=True)
    if "mode" in self.config.hydra.sweep:
        os.chmod(sweep_dir, mode=int(str(self.config.hydra.sweep.mode), 8))
    nums = [initial_job_idx + i for i in range(len(job_overrides))]
    job_params = []
    for num, overrides in zip(nums, job_overrides):
        log.info("\t#%d : %s", num, " ".join(filter_overrides(overrides)))
        job_params.append((list(overrides), "hydra.sweep.dir", num, f"job_id_for_{num}", Singleton.get_state()))
    held = io.StringIO()  # submitit prints sbatch's stderr on a refusal; the one line below says it
    try:
        with contextlib.redirect_stderr(held):
            jobs = executor.map_array(self, *zip(*job_params))
        sys.stderr.write(held.getvalue())
    except FailedJobError as err:
        print(f"fvtrain: error: {sbatch_error_line(str(err))}", file=sys.stderr)
        raise SystemExit(2) from None
    except FileNotFoundError as err:
        print(f"fvtrain: error: {err.filename or 'sbatch'} not found: launcher=slurm needs the SLURM "
              "client commands (sbatch, and sacct or scontrol) on PATH", file=sys.stderr)
        raise SystemExit(2) from None

    returns = []
    for num, overrides, job in zip(nums, job_overrides, jobs):
        try:
            returns.append(job.results()[0])
        except UncompletedJobError:  # also FailedJobError: no result file
            returns.append(_ended_without_result(self, num, list(overrides), job))
    return returns


def _tasks(params: dict) -> int:
    try:
        return int(params.get("tasks_per_node") or 1) * int(params.get("nodes") or 1)
    except (TypeError, ValueError):
        return 1


def _call(self: Any, sweep_overrides: list[str], job_dir_key: str, job_num: int, job_id: str,
          singleton_state: Any) -> Any:
    """The job side (every srun task of an array task): the plugin's ``__call__``, with ranks > 0 of a
    multi-task job starting once rank 0 holds the run folder (as Lightning starts its own DDP ranks
    after rank 0), and a failed rank exiting non-zero so that srun ends the other ranks."""
    from hydra.core.utils import JobStatus

    import fvtrain.config  # noqa: F401  (registers ${run_id:} in the job's process)

    ntasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    rank = int(os.environ.get("SLURM_PROCID", "0") or 0)
    if ntasks > 1 and rank > 0:
        _wait_for_rank0(self, sweep_overrides, job_num)
    ret = _PLUGIN_CALL(self, sweep_overrides, job_dir_key, job_num, job_id, singleton_state)
    if ntasks > 1 and ret.status == JobStatus.FAILED:
        raise ret._return_value
    return ret


def _wait_for_rank0(launcher: Any, overrides: list[str], num: int, timeout: float = 600) -> None:
    import submitit
    from submitit.core.utils import JobPaths

    from fvtrain.runs import LOCK

    folder = _job_folder(launcher, num, overrides)
    env = submitit.JobEnvironment()
    rank0_result = JobPaths(env.paths.folder, job_id=env.job_id, task_id=0).result_pickle
    end = time.monotonic() + timeout
    while folder is not None and time.monotonic() < end:
        if (Path(folder) / LOCK).exists() or rank0_result.exists():
            return
        time.sleep(0.2)
    log.warning("rank %s: rank 0 has not claimed %s after %.0fs; starting anyway",
                os.environ.get("SLURM_PROCID"), folder, timeout)


def _ended_without_result(launcher: Any, num: int, overrides: list[str], job: Any) -> Any:
    """A failed JobReturn for a job that left no result, recorded in the sweep summary."""
    from hydra.core.utils import JobReturn, JobStatus

    from fvtrain.sweep import SUMMARY, _update

    state = str(job.watcher.get_state(job.job_id, mode="cache") or "UNKNOWN").split()[0].upper()
    status = {"CANCELLED": "cancelled", "TIMEOUT": "timeout"}.get(state, "failed")
    message = f"SLURM job {job.job_id} ended {state} without a result (log: {job.paths.stderr})"
    summary = Path(str(launcher.config.hydra.sweep.dir)) / SUMMARY
    entry = {"num": num, "overrides": overrides, "folder": _job_folder(launcher, num, overrides),
             "status": status, "error": message, "slurm_job": str(job.job_id), "slurm_state": state}
    try:  # a rank that failed in the task recorded the real error; keep it
        recorded = [j for j in json.loads(summary.read_text())["jobs"] if j["num"] == num]
    except (OSError, ValueError, KeyError):
        recorded = []
    if recorded and recorded[0].get("status") == "failed" and status == "failed":
        entry.update(status="failed", error=recorded[0].get("error"), folder=recorded[0].get("folder"))
        message = entry["error"]
    _update(summary, entry)
    log.error("job %d (%s) %s: %s", num, " ".join(overrides), status, message)
    ret = JobReturn(overrides=overrides, status=JobStatus.FAILED)
    ret._return_value = JobEndedWithoutResult(message)
    return ret


def _job_folder(launcher: Any, num: int, overrides: list[str]) -> str | None:
    """The folder Hydra would have given job ``num`` (``hydra.sweep.dir/hydra.sweep.subdir``)."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    hc = HydraConfig.instance()
    old = hc.cfg
    try:
        cfg = launcher.hydra_context.config_loader.load_sweep_config(launcher.config, overrides)
        with open_dict(cfg.hydra.job):
            cfg.hydra.job.num = num
        hc.set_config(cfg)
        return str(Path(str(cfg.hydra.sweep.dir)) / str(cfg.hydra.sweep.subdir))
    except Exception:  # noqa: BLE001  (the folder is a courtesy; the entry matters)
        return None
    finally:
        hc.cfg = old


_PLUGIN_CALL: Any = None


class JobEndedWithoutResult(RuntimeError):
    """A SLURM job that ended (cancelled, timed out, killed) before its task returned."""


def register() -> bool:
    """Register ``hydra/launcher=fvtrain_slurm``; False when the plugin is not installed."""
    try:
        from hydra.core.config_store import ConfigStore
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return False

    import importlib

    from hydra.core.plugins import Plugins

    global _PLUGIN_CALL
    module = "hydra_plugins.hydra_submitit_launcher.submitit_launcher"
    base = importlib.import_module(module).BaseSubmititLauncher
    _PLUGIN_CALL = base.__call__
    # Hydra's plugin scan re-executes the plugin modules once, when Plugins is first made; a SLURM
    # job unpickles its launcher before that: patch the class from before and after the scan.
    classes = {importlib.import_module(module).SlurmLauncher}
    classes.add(Plugins.instance().class_name_to_class.get(f"{module}.SlurmLauncher"))
    classes.add(sys.modules[module].SlurmLauncher)
    for cls in classes - {None}:
        cls.launch = _launch
        cls.__call__ = _call

    @dataclass
    class FvtrainSlurmQueueConf(SlurmQueueConf):
        srun_args: list[str] = field(default_factory=list)

    ConfigStore.instance().store(group="hydra/launcher", name="fvtrain_slurm",
                                 node=FvtrainSlurmQueueConf, provider="fvtrain")
    return True
