"""Experiment tracking: every stage job is one run in each logger of ``cfg.logger``.

The loggers are the Lightning logger nodes of ``conf/logger/`` (``logger=csv``, ``tensorboard``,
``wandb``, ``many`` or a list), built for one stage job with its run folder as ``save_dir``. A job
is tracked by wrapping it (:func:`tracked`) or explicitly::

    with tracking(cfg, out, "extract") as t:     # starts the run(s), logs the flattened config
        ...                                       # the job; the training job hands t.loggers to its Trainer
        t.log_result(result)                      # headline metrics, tables, figures

Run identity (wandb ``group`` / ``name`` / ``job_type``; null in ``conf/logger/wandb.yaml``): a
Hydra multirun is one group named after its sweep folder and each job a run named after its
overrides; the main job sets a :func:`scope` so that it is one group with one run per stage; the
stage is the ``job_type``. Every run ends when its job ends, as failed (wandb exit code 1) when the
job raised, so sequential multirun jobs in one process never share a run.

Logging is a side effect only: a logger that fails (no network in online mode, a full disk) warns
once and is dropped for the rest of the run; the job and its files on disk are never affected.

No stage talks to wandb, TensorBoard or the CSV files directly: they call this module.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import functools
import logging
import math
import re
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

log = logging.getLogger("fvtrain.tracking")

SUCCESS, FAILED = "success", "failed"
_CURRENT: contextvars.ContextVar[Tracker | None] = contextvars.ContextVar("fvtrain_tracker", default=None)
_SCOPE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("fvtrain_tracking_scope", default=None)
_WANDB_GROUP_MAX = 128


# -- run identity ------------------------------------------------------------------------------------

def label(path: str | Path, root: str | Path | None = None) -> str:
    """``path`` relative to ``root`` (the output root) when it lies inside it, else its full path."""
    p = Path(path)
    if root is not None:
        try:
            return Path(p).resolve().relative_to(Path(root).resolve()).as_posix()
        except (ValueError, OSError):
            pass
    return p.as_posix()


def hydra_identity(root: str | Path | None = None) -> dict:
    """``{"group", "name"}`` from the running Hydra app: in a multirun the sweep folder and the job's
    overrides (``hydra.job.override_dirname``); nothing in a single run."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:  # pragma: no cover - hydra is a dependency
        return {}
    if not HydraConfig.initialized():
        return {}
    hc = HydraConfig.get()
    out = Path(hc.runtime.output_dir)
    if hc.mode != RunMode.MULTIRUN:
        return {}
    # runtime.output_dir is <sweep dir>/<subdir>: its parent is the sweep folder as created.
    return {"group": label(out.parent, root), "name": str(hc.job.override_dirname or "") or f"job{hc.job.num}"}


@contextlib.contextmanager
def scope(group: str | None = None, name: str | None = None) -> Iterator[None]:
    """Run identity for the stage jobs started inside: ``name`` may hold ``{stage}`` (the main job
    uses ``scope(group=<its run folder>, name="{stage}")``: one group, one run per stage)."""
    token = _SCOPE.set({"group": group, "name": name})
    try:
        yield
    finally:
        _SCOPE.reset(token)


def identity(cfg, out: Path, stage: str, group: str | None = None, name: str | None = None) -> dict:
    """Explicit arguments, else the enclosing :func:`scope`, else the Hydra app, else the folder."""
    root = _select(cfg, "paths.output_root")
    found = {"group": None, "name": None}
    for source in ({"group": group, "name": name}, _SCOPE.get() or {}, hydra_identity(root)):
        for k in found:
            if found[k] is None and source.get(k) is not None:
                found[k] = str(source[k])
    if found["name"] is None:
        found["name"] = label(out, root)
    found["name"] = found["name"].replace("{stage}", stage)
    if found["group"] is not None and len(found["group"]) > _WANDB_GROUP_MAX:
        found["group"] = found["group"][-_WANDB_GROUP_MAX:]
    return found


# -- loggers -------------------------------------------------------------------------------------

def _select(cfg, key: str, default=None):
    from omegaconf import OmegaConf

    try:
        v = OmegaConf.select(cfg, key, default=default)
    except Exception:  # noqa: BLE001 - an interpolation that cannot resolve here
        return default
    return v


def _kind(obj_or_target) -> str:
    t = obj_or_target if isinstance(obj_or_target, str) else type(obj_or_target).__name__
    for kind in ("Wandb", "TensorBoard", "CSV"):
        if t.rsplit(".", 1)[-1].startswith(kind):
            return kind.lower()
    return "other"


def _save_dir(sub, raw: dict, out: Path) -> str:
    """The node's ``save_dir`` with ``${paths.output_dir}`` meaning this stage's folder."""
    v = raw.get("save_dir")
    if isinstance(v, str) and "${paths.output_dir}" in v:
        v = v.replace("${paths.output_dir}", str(out))
        if "${" not in v:
            return v
    try:
        v = sub.save_dir
    except Exception:  # noqa: BLE001
        v = None
    return str(v) if v else str(out)


def build_loggers(cfg, out: Path, stage: str, group: str | None, name: str) -> list:
    """One Lightning logger per node of ``cfg.logger`` with a ``_target_``, writing under ``out``.
    A node that cannot be built warns and is left out."""
    from hydra.utils import instantiate
    from omegaconf import DictConfig, OmegaConf

    node = _select(cfg, "logger")
    if not node or not isinstance(node, DictConfig):
        return []
    loggers = []
    for key in node:
        sub = node._get_node(key)
        if not (isinstance(sub, DictConfig) and "_target_" in sub):
            continue
        raw = OmegaConf.to_container(sub, resolve=False)
        kind = _kind(str(raw["_target_"]))
        kw: dict[str, Any] = {"_target_": raw["_target_"]}
        try:
            for k in raw:
                if k in ("_target_", "save_dir"):
                    continue
                v = sub[k]
                kw[k] = OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v
            if "save_dir" in raw or kind != "other":
                kw["save_dir"] = _save_dir(sub, raw, out)
                Path(kw["save_dir"]).mkdir(parents=True, exist_ok=True)
            if kind == "wandb":
                kw["name"] = kw.get("name") or name
                kw["group"] = kw.get("group") or group
                kw["job_type"] = kw.get("job_type") or stage
                kw["offline"] = False  # offline=True switches the whole process to dry-run; mode does it
            loggers.append(instantiate(kw))
        except Exception as err:  # noqa: BLE001 - tracking never stops a job
            log.warning("logger %r could not be started (%s: %s); the run goes on without it",
                        str(key), type(err).__name__, err)
    return loggers


def _rank_zero() -> bool:
    try:
        from lightning.fabric.utilities.rank_zero import rank_zero_only
    except ImportError:  # pragma: no cover
        return True
    return getattr(rank_zero_only, "rank", 0) == 0


# -- values ----------------------------------------------------------------------------------------

def flatten(d: Mapping, prefix: str = "", sep: str = ".") -> dict:
    """Nested mappings as one level of dotted keys (lists stay values)."""
    out: dict = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key, sep))
        else:
            out[key] = v
    return out


def config_dict(cfg) -> dict:
    """The resolved config, flattened (unresolvable interpolations stay as written)."""
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - e.g. ${hydra:...} outside a Hydra app
        data = OmegaConf.to_container(cfg, resolve=False)
    data = {k: v for k, v in data.items() if k != "hydra"}
    return flatten(data)


def _number(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, (int, float)) and not (isinstance(v, float) and math.isnan(v)):
        return float(v)
    return None


def _cell(v):
    if v is None or (isinstance(v, float) and math.isnan(v)) or v == "-":
        return None
    return v


def _columns_typed(rows: list[list]) -> list[list]:
    """Rows whose every column holds numbers (or None) or strings (or None): wandb Tables refuse
    mixed columns."""
    rows = [[_cell(v) for v in r] for r in rows]
    if not rows:
        return rows
    width = max(len(r) for r in rows)
    for i in range(width):
        vals = [r[i] for r in rows if i < len(r) and r[i] is not None]
        if vals and not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            for r in rows:
                if i < len(r) and r[i] is not None:
                    r[i] = str(r[i])
    return rows


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "table"


# -- the tracker -----------------------------------------------------------------------------------

class Tracker:
    """The loggers of one stage job. Every method is safe: a failing logger warns once and is dropped."""

    def __init__(self, loggers: list, stage: str, out: Path, identity: Mapping | None = None):
        self.loggers = list(loggers)
        self.stage = stage
        self.out = Path(out)
        self.identity = dict(identity or {})
        self.active = _rank_zero()
        self.status: str | None = None
        self._broken: set[int] = set()
        self._pending: dict[int, dict] = {}  # CSV loggers' config, written with their first metrics

    # -- plumbing
    def _live(self) -> list:
        return [lg for lg in self.loggers if id(lg) not in self._broken] if self.active else []

    def _guard(self, lg, what: str, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - logging never stops or changes a job
            self._broken.add(id(lg))
            log.warning("%s logger failed to %s (%s: %s); it logs nothing more for this %s run "
                        "(the run folder's files are unaffected)", type(lg).__name__, what,
                        type(err).__name__, err, self.stage)

    @staticmethod
    def _log_dir(lg) -> Path | None:
        d = getattr(lg, "log_dir", None)
        return Path(d) if d else None

    # -- what jobs log
    def log_config(self, cfg) -> dict:
        """The resolved config, flattened to dotted keys (also ``stage``).

        The CSV logger gets it with the first metrics (or at the end): its files must not be
        opened before a ``ddp_spawn`` Trainer copies the logger into its processes."""
        params = {"stage": self.stage, **config_dict(cfg)}
        for lg in self._live():
            if _kind(lg) == "csv":
                self._pending[id(lg)] = params
                continue
            self._guard(lg, "log the config", lambda lg=lg: (lg.log_hyperparams(params), lg.save()))
        return params

    def _csv_ready(self, lg) -> None:
        """Flush the pending config; know the columns other processes (spawned Trainers) wrote."""
        params = self._pending.pop(id(lg), None)
        if params is not None:
            lg.log_hyperparams(params)
            lg.save()
        exp = lg.experiment
        path = Path(getattr(exp, "metrics_file_path", "") or "")
        if path.is_file() and isinstance(getattr(exp, "metrics_keys", None), list):
            with open(path, newline="") as fh:
                header = next(csv.reader(fh), [])
            exp.metrics_keys = sorted(set(exp.metrics_keys) | set(header))

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> dict:
        """Numbers only (None and NaN are left out)."""
        nums = {k: x for k, v in metrics.items() if (x := _number(v)) is not None}
        if not nums:
            return nums
        for lg in self._live():
            def write(lg=lg):
                if _kind(lg) == "csv":
                    self._csv_ready(lg)
                lg.log_metrics(dict(nums), step)
                lg.save()
            self._guard(lg, "log metrics", write)
        return nums

    def log_table(self, key: str, table) -> None:
        """A :class:`fvtrain.reporting.tables.Table`: a wandb Table, a CSV file beside the CSV
        logger's metrics.csv (``tables/<key>.csv``), markdown text in TensorBoard."""
        columns = [str(c) for c in table.columns]
        rows = _columns_typed([list(r) for r in table.rows])
        key = _slug(key)
        for lg in self._live():
            kind = _kind(lg)
            if kind == "wandb":
                self._guard(lg, f"log table {key}",
                            lambda lg=lg: lg.log_table(key=f"tables/{key}", columns=columns, data=rows))
            elif kind == "csv":
                def write(lg=lg):
                    self._csv_ready(lg)
                    folder = Path(lg.log_dir) / "tables"
                    folder.mkdir(parents=True, exist_ok=True)
                    with open(folder / f"{key}.csv", "w", newline="") as fh:
                        w = csv.writer(fh)
                        w.writerow(columns)
                        w.writerows([["" if v is None else v for v in r] for r in rows])
                self._guard(lg, f"write table {key}", write)
            elif kind == "tensorboard":
                text = f"**{table.title}**\n\n" + table.markdown()
                self._guard(lg, f"log table {key}",
                            lambda lg=lg, text=text: lg.experiment.add_text(f"tables/{key}", text))

    def log_figure(self, name: str, path: str | Path) -> None:
        """A PNG: a wandb Image, a TensorBoard image; the CSV logger lists it in ``figures.csv``."""
        path = Path(path)
        if not path.is_file():
            return
        name = _slug(name)
        for lg in self._live():
            kind = _kind(lg)
            if kind == "wandb":
                self._guard(lg, f"log figure {name}", lambda lg=lg: lg.log_image(key=f"figures/{name}",
                                                                                images=[str(path)]))
            elif kind == "tensorboard":
                def add(lg=lg):
                    import numpy as np
                    from PIL import Image

                    with Image.open(path) as im:
                        arr = np.asarray(im.convert("RGB"))
                    lg.experiment.add_image(f"figures/{name}", arr, dataformats="HWC")
                self._guard(lg, f"log figure {name}", add)
            elif kind == "csv":
                def note(lg=lg):
                    self._csv_ready(lg)
                    f = Path(lg.log_dir) / "figures.csv"
                    f.parent.mkdir(parents=True, exist_ok=True)
                    new = not f.exists()
                    with open(f, "a", newline="") as fh:
                        w = csv.writer(fh)
                        if new:
                            w.writerow(["name", "path"])
                        w.writerow([name, str(path.resolve())])
                self._guard(lg, f"list figure {name}", note)

    def log_result(self, result) -> None:
        """A finished stage (:class:`fvtrain.runs.StageResult`): its headline metrics, tables and the
        PNGs of its ``figures/`` folder."""
        metrics = getattr(result, "metrics", None) or {}
        if not metrics or not self.active:
            return
        stage = str(metrics.get("stage") or getattr(result, "stage", "") or self.stage)
        for what, fn in (("metrics", lambda: self.log_metrics(headline(stage, metrics))),
                         ("tables", lambda: [self.log_table(k, t) for k, t in stage_tables(stage, metrics)])):
            try:
                fn()
            except Exception as err:  # noqa: BLE001 - an unexpected metrics layout is not fatal
                log.warning("could not log the %s stage's %s (%s: %s)", stage, what, type(err).__name__, err)
        out = Path(getattr(result, "out", self.out))
        from fvtrain.runs import FIGURES

        for png in sorted((out / FIGURES).glob("*.png")):
            self.log_figure(png.stem, png)

    # -- the end
    def finish(self, status: str = SUCCESS) -> None:
        """End every logger's run; wandb's with exit code 1 when ``status`` is ``failed``."""
        if self.status is not None:
            return
        self.status = status
        if not self.active:
            return
        for lg in self.loggers:
            if _kind(lg) == "wandb":
                def end(lg=lg):
                    run = getattr(lg, "_experiment", None)
                    if run is not None and hasattr(run, "finish"):
                        run.finish(exit_code=0 if status == SUCCESS else 1)
                # Always attempted, also for a logger that failed earlier: the run must end.
                try:
                    end()
                except Exception as err:  # noqa: BLE001
                    log.warning("wandb run could not be finished cleanly (%s: %s)", type(err).__name__, err)
            elif id(lg) not in self._broken:
                def end(lg=lg):
                    if _kind(lg) == "csv":
                        self._csv_ready(lg)
                    lg.finalize(status)
                self._guard(lg, "finish", end)


@contextlib.contextmanager
def tracking(cfg, out: str | Path, stage: str, group: str | None = None,
             name: str | None = None) -> Iterator[Tracker]:
    """Start one run per logger of ``cfg.logger`` for ``stage`` writing under ``out``, log the
    config, and end the runs when the block ends (as failed when it raises)."""
    out = Path(out)
    ident = identity(cfg, out, stage, group, name)
    # Built on every rank (a Trainer needs them); Lightning's loggers write on rank zero only.
    tracker = Tracker(build_loggers(cfg, out, stage, ident["group"], ident["name"]), stage, out, ident)
    if any(_kind(lg) == "wandb" for lg in tracker.loggers):
        _finish_stray_wandb_run()
    token = _CURRENT.set(tracker)
    try:
        tracker.log_config(cfg)
        yield tracker
    except BaseException:
        tracker.finish(FAILED)
        raise
    else:
        tracker.finish(SUCCESS)
    finally:
        _CURRENT.reset(token)


def current() -> Tracker | None:
    """The tracker of the stage job running in this context (the training job takes its loggers)."""
    return _CURRENT.get()


def tracked(stage: str) -> Callable:
    """Decorate a stage job ``run(cfg, out, lm, ...) -> StageResult`` so that it is one tracked run
    that logs its result."""
    def wrap(job: Callable) -> Callable:
        @functools.wraps(job)
        def run(cfg, out, lm, *args, **kwargs):
            with tracking(cfg, out, stage) as t:
                result = job(cfg, out, lm, *args, **kwargs)
                t.log_result(result)
            return result
        return run
    return wrap


def _finish_stray_wandb_run() -> None:
    """A wandb run still open in this process (a job that did not end its run) would be reused by
    the next WandbLogger: end it first, so that jobs never share a run."""
    import sys

    wandb = sys.modules.get("wandb")
    run = getattr(wandb, "run", None) if wandb is not None else None
    if run is not None:
        log.warning("ending wandb run %s left open by an earlier job", getattr(run, "id", "?"))
        try:
            run.finish()
        except Exception as err:  # noqa: BLE001
            log.warning("could not end it (%s)", err)


# -- what each stage logs ------------------------------------------------------------------------

def _acc_metrics(prefix: str, per_relation: Mapping, mean: Mapping, modes=("zero_shot", "shuffled_icl")) -> dict:
    out: dict = {}
    for rel, m in per_relation.items():
        for mode in modes:
            for method, v in ((m.get(mode) or {}).items() if isinstance(m.get(mode), Mapping) else ()):
                if isinstance(v, Mapping):
                    out[f"{prefix}{mode}/{method}/acc/{rel}"] = v.get("acc")
        icl = m.get("icl")
        if isinstance(icl, Mapping):
            out[f"{prefix}icl/acc/{rel}"] = icl.get("acc")
    for mode in modes:
        for method, v in (mean.get(mode) or {}).items():
            out[f"{prefix}{mode}/{method}/acc"] = v
    if "icl" in mean:
        out[f"{prefix}icl/acc"] = mean["icl"]
    return out


def _corr(prefix: str, corr: Mapping | None) -> dict:
    """Spearman / Pearson per kind (and the FFV - FV difference) with their bootstrap intervals."""
    out: dict = {}
    for kind, c in (corr or {}).items():
        if not isinstance(c, Mapping):
            continue
        for stat in ("spearman", "pearson"):
            if stat in c:
                out[f"{prefix}/{kind}/{stat}"] = c.get(stat)
                ci = c.get(f"{stat}_ci")
                if isinstance(ci, (list, tuple)) and len(ci) == 2:
                    out[f"{prefix}/{kind}/{stat}_ci_low"], out[f"{prefix}/{kind}/{stat}_ci_high"] = ci
    return out


def headline(stage: str, metrics: Mapping) -> dict:
    """The scalars a stage logs, from its metrics.json (keys follow the training module's
    ``test/<mode>/<method>/acc[/<relation>]``; no key means the mean over relations)."""
    m = metrics
    if stage == "extract":
        out = _acc_metrics("test/", m.get("relations") or {}, m.get("mean") or {})
        out["layer"] = m.get("layer")
        for rel, r in (m.get("relations") or {}).items():
            sweep = (r.get("layer_sweep") or {}).get("acc")
            if sweep:
                best = max(range(len(sweep)), key=lambda i: sweep[i])
                out[f"layer_sweep/best_layer/{rel}"] = best
                out[f"layer_sweep/best_acc/{rel}"] = sweep[best]
        return out
    if stage == "train":
        out = _acc_metrics("test/", m.get("relations") or {}, m.get("mean") or {})
        for rel, r in (m.get("relations") or {}).items():
            v = r.get("val") or {}
            out[f"val/best_acc/{rel}"] = v.get("acc")
        out["layer"], out["epochs"] = m.get("layer"), m.get("epochs")
        return out
    if stage == "compose":
        out = {"analogy/n": (m.get("analogies") or {}).get("n"), "layer": m.get("layer")}
        for method, res in (m.get("methods") or {}).items():
            for mode in ("open", "mc"):
                groups = res.get(mode) or {}
                for g in ("all", "near", "far"):
                    out[f"analogy/{mode}/{method}/acc/{g}"] = (groups.get(g) or {}).get("acc")
                for rel, v in (groups.get("by_relation") or {}).items():
                    out[f"analogy/{mode}/{method}/acc/relation/{rel}"] = v.get("acc")
        top = m.get("top_basis_is_item_relation") or {}
        if isinstance(top, Mapping):
            out["analogy/top_basis_is_item_relation"] = top.get("acc")
        return out
    if stage == "eval":
        out: dict = {}
        al = m.get("alignment") or {}
        rel = al.get("relation") or {}
        out.update(_corr("alignment/relation", rel.get("all")))
        out["alignment/relation/n"] = rel.get("n")
        for rep, res in (al.get("pair") or {}).items():
            if isinstance(res, Mapping) and "all" in res:
                out.update(_corr(f"alignment/pair/{rep}", res.get("all")))
                out[f"alignment/pair/{rep}/n"] = res.get("n")
        for key in ("prototypicality", "prototypicality_held_out"):
            p = al.get(key) or {}
            out.update(_corr(f"alignment/{key}", p.get("mean")))
        dec = m.get("decoding") or {}
        for kind, s in (dec.get("summary") or {}).items():
            if isinstance(s, Mapping):
                for stat in ("median_rank", "mrr", "top10", "top100"):
                    out[f"decoding/{kind}/{stat}"] = s.get(stat)
        for rel, e in (dec.get("relations") or {}).items():
            for kind, d in e.items():
                if isinstance(d, Mapping) and "best_rank" in d:
                    out[f"decoding/{kind}/best_rank/{rel}"] = d.get("best_rank")
        return out
    return {}


def stage_tables(stage: str, metrics: Mapping) -> list[tuple[str, Any]]:
    """``(key, Table)`` of a stage: the same tables the console and report.md show."""
    from fvtrain.reporting.tables import Table

    if stage == "extract":
        from fvtrain.extraction.tables import fv_table

        out = [("fv_accuracy", fv_table(metrics))]
        sweeps = {r: (v.get("layer_sweep") or {}).get("acc") for r, v in (metrics.get("relations") or {}).items()}
        sweeps = {r: s for r, s in sweeps.items() if s}
        if sweeps:
            n = max(len(s) for s in sweeps.values())
            rows = [[i, *[s[i] if i < len(s) else None for s in sweeps.values()]] for i in range(n)]
            out.append(("layer_sweep", Table("Layer sweep: zero-shot accuracy with the FV injected at each layer",
                                             ["layer", *sweeps], rows)))
        return out
    if stage == "train":
        from fvtrain.training.tables import completion_table, shuffled_table

        return [(k, t) for k, t in (("zero_shot_accuracy", completion_table(metrics)),
                                    ("shuffled_icl_accuracy", shuffled_table(metrics))) if t is not None]
    if stage == "compose":
        from fvtrain.composition.tables import analogy_table

        return [("analogy_accuracy", analogy_table(metrics))]
    if stage == "eval":
        from fvtrain.evaluation.tables import (
            alignment_table,
            decoding_table,
            skipped_table,
            word_rank_table,
        )

        pairs = (("alignment", alignment_table(metrics, compact=False)), ("decoding", decoding_table(metrics)),
                 ("word_ranks", word_rank_table(metrics)), ("skipped", skipped_table(metrics)))
        return [(k, t) for k, t in pairs if t is not None]
    return []


# -- reading wandb offline runs back (tests, and checking a run before ``wandb sync``) ------------

def read_wandb_run(folder: str | Path) -> dict:
    """The records of an offline wandb run folder (``wandb/offline-run-*``): ``{"group", "name",
    "job_type", "config", "summary", "exit_code"}`` (``exit_code`` None: the run never ended)."""
    import json
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    folder = Path(folder)
    data = next(folder.glob("*.wandb")).read_bytes()
    block, pos, buf = 32768, 7, b""
    info: dict[str, Any] = {"group": None, "name": None, "job_type": None, "config": {}, "summary": {},
                            "exit_code": None}

    def value(item):
        return json.loads(item.value_json)

    def key(item):
        return "/".join(item.nested_key) if item.nested_key else item.key

    def chunks():
        nonlocal pos, buf
        while pos + 7 <= len(data):
            off = pos % block
            if block - off < 7:
                pos += block - off
                continue
            _crc, length, typ = struct.unpack("<IHB", data[pos:pos + 7])
            if length == 0 and typ == 0:
                pos += block - off
                continue
            chunk = data[pos + 7:pos + 7 + length]
            pos += 7 + length
            if typ == 1:
                yield chunk
            elif typ == 2:
                buf = chunk
            elif typ == 3:
                buf += chunk
            elif typ == 4:
                yield buf + chunk
                buf = b""

    for raw in chunks():
        r = pb.Record()
        r.ParseFromString(raw)
        kind = r.WhichOneof("record_type")
        if kind == "run":
            info.update(group=r.run.run_group or None, name=r.run.display_name or None,
                        job_type=r.run.job_type or None, id=r.run.run_id)
        elif kind == "config":
            for u in r.config.update:
                info["config"][key(u)] = value(u)
        elif kind == "summary":
            for u in r.summary.update:
                info["summary"][key(u)] = value(u)
        elif kind == "history":
            for u in r.history.item:
                info["summary"][key(u)] = value(u)
        elif kind == "exit":
            info["exit_code"] = r.exit.exit_code
    return info
