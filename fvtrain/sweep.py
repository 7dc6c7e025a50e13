"""Multirun bookkeeping: a Hydra callback that records every job's status as it ends.

``<sweep dir>/sweep_summary.json`` lists each job's number, overrides, folder, status and error,
updated as each job ends (also from SLURM array tasks on a shared file system). Status is
``completed`` or ``failed``; the SLURM launcher (:mod:`fvtrain.launchers`) adds ``cancelled`` and
``timeout`` for jobs that SLURM ended before they returned (with ``slurm_job`` and ``slurm_state``). A failing job does
not stop the others; at the end the summary is printed and failures make the exit status non-zero.
"""

from __future__ import annotations

import fcntl
import json
import logging
import traceback
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

log = logging.getLogger("fvtrain.sweep")
SUMMARY = "sweep_summary.json"


def _update(path: Path, entry: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.with_suffix(".lock")
    with open(lock, "w") as lf:
        fcntl.flock(lf, fcntl.LOCK_EX)
        jobs = json.loads(path.read_text())["jobs"] if path.is_file() else []
        jobs = [j for j in jobs if j["num"] != entry["num"]] + [entry]
        jobs.sort(key=lambda j: j["num"])
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"jobs": jobs}, indent=2))
        tmp.replace(path)


class SweepSummary(Callback):
    """Record each job's outcome in the sweep folder's ``sweep_summary.json``."""

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hc = config.hydra
        if str(hc.mode) != "RunMode.MULTIRUN" and hc.mode != "MULTIRUN":
            return
        failed = job_return.status == JobStatus.FAILED
        err = job_return._return_value if failed else None
        entry = {
            "num": int(hc.job.num),
            "overrides": list(hc.overrides.task),
            "folder": str(hc.runtime.output_dir),
            "status": "failed" if failed else "completed",
            "error": None if err is None else "".join(traceback.format_exception_only(type(err), err)).strip(),
        }
        _update(Path(hc.sweep.dir) / SUMMARY, entry)
        if failed:
            log.error("job %d (%s) failed: %s", entry["num"], " ".join(entry["overrides"]), entry["error"])

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        print_summary(Path(config.hydra.sweep.dir))


def print_summary(sweep_dir: Path) -> int:
    """Print the sweep's job table; returns the number of jobs that did not complete (``failed``, or
    ``cancelled``/``timeout`` as the SLURM launcher records jobs that ended without a result)."""
    path = sweep_dir / SUMMARY
    if not path.is_file():
        return 0
    from fvtrain.console import print_table

    jobs = json.loads(path.read_text())["jobs"]
    print_table(f"Sweep {sweep_dir}", ["job", "overrides", "status", "error"],
                [(j["num"], " ".join(j["overrides"]), j["status"], (j["error"] or "")[:80]) for j in jobs])
    return sum(j["status"] != "completed" for j in jobs)
