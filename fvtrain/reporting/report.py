"""Reports: a run folder or a Hydra multirun folder -> ``report.md``, PNG figures, ``metrics.csv``.

What a folder holds is detected from its files:

* **extract** (``fvtrain-extract``): ``metrics.json`` with ``relations`` (accuracies, ``layer_sweep``,
  ``heads``) and ``aie/<relation>.safetensors``;
* **train** (``fvtrain-train``): a ``bank/`` of fine-tuned vectors; per-relation accuracies under
  method keys (``none``, ``fv``, ``ffv``, ``icl``) are found wherever they sit in ``metrics.json``;
* **compose** (``fvtrain-compose``): ``metrics.json`` with ``methods`` (analogy accuracy by scheme);
* **eval** (``fvtrain-eval``): ``metrics.json`` with ``alignment`` and/or ``decoding`` (and
  ``alignment_points.json`` for the scatter plots);
* a **main job** folder (``fvtrain``): ``pipeline.json`` and one folder per stage;
* a **multirun** folder: numbered job folders, each with ``.hydra/overrides.yaml``.

Figures a run did not write are generated from its saved data (AIE heatmaps from
``aie/*.safetensors``, layer sweeps and accuracy bars from ``metrics.json``, scatter plots from
``alignment_points.json``). ``metrics.csv`` has one row per job: the job's overrides as columns,
then every metric flattened to dotted keys. Stages that are absent are simply left out.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fvtrain.reporting.tables import markdown_table

log = logging.getLogger(__name__)

STAGES = ("extract", "train", "compose", "eval")
NO_METRICS = ("no metrics.json under {path}: give a run folder written by fvtrain-extract/train/compose/eval "
              "or a multirun folder (its numbered job folders hold metrics.json and .hydra/overrides.yaml)")
MAX_LIST = 64  # lists of scalars up to this length become indexed CSV columns
METHOD_KEYS = ("none", "fv", "ffv", "cfv", "icl", "one_shot", "zero_shot", "shuffled_icl", "random")
PER_ITEM = {"correct"}  # per-item outcome lists: in metrics.json, not one CSV column per item
SKIP_KEYS = {"layer_sweep", "heads", "history", "curves", "model", "config"}
PRETTY = {
    "zero_shot/none": "0-shot", "zero_shot/fv": "0-shot+FV", "zero_shot/ffv": "0-shot+FFV",
    "shuffled_icl/none": "shuffled", "shuffled_icl/fv": "shuffled+FV", "shuffled_icl/ffv": "shuffled+FFV",
    "icl": "ICL", "none": "no vector", "fv": "FV", "ffv": "FFV", "one_shot": "1-shot",
    "zero_shot/ffv_random": "0-shot+FFV(random init)", "shuffled_icl/ffv_random": "shuffled+FFV(random init)",
    "ffv_random": "FFV(random init)", "val": "val (FFV)",
}
AIE_DIRS = ("aie", "extraction/aie")  # an extraction run; a training run that extracted its FVs


class ReportError(ValueError):
    """A folder that cannot be reported on."""


@dataclass
class Job:
    """One run folder: its metrics, stages and the Hydra overrides that made it."""

    path: Path
    name: str
    num: int | None
    overrides: list[str]
    metrics: dict
    stages: list[str] = field(default_factory=list)

    @property
    def override_values(self) -> dict[str, str]:
        return parse_overrides(self.overrides)


@dataclass
class Report:
    path: Path
    kind: str  # "run", "pipeline" (the main job's stage folders) or "multirun"
    jobs: list[Job]
    report_md: Path
    metrics_csv: Path
    figures: list[Path]
    incomplete: list[Path]


# -- discovery --------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, str]:
    """``["extract.layer=1", "+x=2"]`` -> ``{"extract.layer": "1", "x": "2"}`` (deletions dropped)."""
    out = {}
    for it in items:
        key, sep, value = str(it).partition("=")
        key = key.strip()
        if not sep or key.startswith("~"):
            continue
        out[key.lstrip("+")] = value.strip()
    return out


def _read_overrides(folder: Path) -> list[str]:
    f = folder / ".hydra" / "overrides.yaml"
    if not f.is_file():
        return []
    from omegaconf import OmegaConf

    try:
        data = OmegaConf.to_container(OmegaConf.load(f))
    except Exception as err:  # noqa: BLE001 - a broken overrides file only loses columns
        log.warning("cannot read %s: %s", f, err)
        return []
    return [str(x) for x in data] if isinstance(data, list) else []


def _read_metrics(folder: Path) -> dict:
    f = folder / "metrics.json"
    try:
        data = json.loads(f.read_text())
    except json.JSONDecodeError as err:
        raise ReportError(f"{f}:{err.lineno}: not valid JSON ({err.msg}); was the run interrupted while "
                          "writing it?") from None
    if not isinstance(data, dict):
        raise ReportError(f"{f}: expected a JSON object of metrics, got {type(data).__name__}")
    return data


def detect_stages(folder: Path, metrics: Mapping) -> list[str]:
    """The stage that wrote ``folder``: what its metrics.json declares. Folders written before
    stages were declared (no ``stage`` key) are recognised by their content."""
    if metrics.get("stage") in STAGES:
        return [str(metrics["stage"])]
    stages = []
    rels = metrics.get("relations")
    if (folder / "aie").is_dir() or (isinstance(rels, dict) and any(
            isinstance(r, dict) and ("layer_sweep" in r or "heads" in r) for r in rels.values())):
        stages.append("extract")
    if (folder / "bank").is_dir() or any("FFV" in label for accs in relation_accuracies(metrics).values()
                                         for label in accs):
        stages.append("train")
    if isinstance(metrics.get("methods"), dict):
        stages.append("compose")
    if "alignment" in metrics or "decoding" in metrics:
        stages.append("eval")
    return stages


def _job_num(name: str) -> int | None:
    m = re.match(r"^(\d+)(?:_|$)", name)
    return int(m.group(1)) if m else None


def find_jobs(path: str | Path, max_depth: int = 4) -> tuple[str, list[Job], list[Path]]:
    """``(kind, jobs, incomplete)``: a run folder is one job; otherwise every folder below with a
    ``metrics.json`` (a multirun's job folders), and job folders without one as incomplete."""
    root = Path(path).expanduser()
    if not root.exists():
        raise ReportError(f"{path} does not exist")
    if not root.is_dir():
        raise ReportError(f"{path} is a file; give a run folder or a multirun folder")
    if (root / "metrics.json").is_file():
        m = _read_metrics(root)
        return "run", [Job(root, ".", None, _read_overrides(root), m, detect_stages(root, m))], []
    found, incomplete = [], []

    def walk(d: Path, depth: int):
        for sub in sorted(p for p in d.iterdir() if p.is_dir() and not p.name.startswith(".")):
            if (sub / "metrics.json").is_file():
                found.append(sub)
            elif (sub / ".hydra" / "overrides.yaml").is_file():
                incomplete.append(sub)
            elif depth > 1:
                walk(sub, depth - 1)

    if (root / "pipeline.json").is_file():
        # The main job: its stage folders, in the order they ran.
        order = json.loads((root / "pipeline.json").read_text()).get("stages") or []
        found = [root / st for st in order if (root / st / "metrics.json").is_file()]
        if found:
            jobs = []
            for f in found:
                m = _read_metrics(f)
                jobs.append(Job(f, f.name, None, _read_overrides(root), m, detect_stages(f, m)))
            return "pipeline", jobs, []
    walk(root, max_depth)
    if not found:
        extra = (f" ({len(incomplete)} job folder(s) without metrics.json: failed or still running?)"
                 if incomplete else "")
        raise ReportError(NO_METRICS.format(path=path) + extra)
    jobs = []
    for f in found:
        m = _read_metrics(f)
        name = f.relative_to(root).as_posix()
        jobs.append(Job(f, name, _job_num(f.name), _read_overrides(f), m, detect_stages(f, m)))
    jobs.sort(key=lambda j: (j.num is None, j.num if j.num is not None else 0, j.name))
    return "multirun", jobs, incomplete


# -- flattening -------------------------------------------------------------------------------


def flatten(obj: Any, prefix: str = "", out: dict | None = None) -> dict[str, Any]:
    """Dotted keys of every scalar (lists of scalars up to ``MAX_LIST`` become ``key.0``, ...)."""
    out = {} if out is None else out
    if isinstance(obj, dict):
        for k, v in obj.items():
            if k not in PER_ITEM:
                flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    elif isinstance(obj, (list, tuple)):
        if len(obj) <= MAX_LIST and all(_scalar(v) for v in obj):
            for i, v in enumerate(obj):
                out[f"{prefix}.{i}"] = v
    elif _scalar(obj):
        out[prefix] = obj
    return out


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (str, int, float, bool))


def _typed(value: str) -> Any:
    try:
        import yaml

        v = yaml.safe_load(value)
    except Exception:  # noqa: BLE001
        return value
    return v if isinstance(v, (int, float, str, bool)) else value


def metrics_table(jobs: Sequence[Job]) -> tuple[list[str], list[dict]]:
    """Columns and rows of ``metrics.csv``: job, stages, path, overrides, then flattened metrics."""
    override_keys = list(dict.fromkeys(k for j in jobs for k in j.override_values))
    flat = [flatten(j.metrics) for j in jobs]
    metric_keys = list(dict.fromkeys(k for f in flat for k in f))
    fixed = ["job", "stages", "path", "overrides"]
    rename = {k: (f"metrics.{k}" if k in override_keys or k in fixed else k) for k in metric_keys}
    rows = []
    for j, f in zip(jobs, flat):
        row = {"job": j.name, "stages": "+".join(j.stages) or "unknown", "path": str(j.path),
               "overrides": " ".join(j.overrides)}
        row.update(j.override_values)
        row.update({rename[k]: v for k, v in f.items()})
        rows.append(row)
    return fixed + override_keys + [rename[k] for k in metric_keys], rows


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[Mapping]) -> Path:
    from fvtrain.artifacts import _atomic

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else _fmt_csv(r.get(k))) for k in columns})
    text = buf.getvalue()
    return _atomic(path, lambda tmp: Path(tmp).write_text(text))


def _fmt_csv(v: Any) -> Any:
    return repr(v) if isinstance(v, float) and math.isfinite(v) else v


# -- what the metrics hold --------------------------------------------------------------------


def _per_relation(metrics: Mapping) -> dict | None:
    """The per-relation dict of a run's metrics (top level or one level down, e.g. ``test``)."""
    for key in ("relations", "per_relation"):
        v = metrics.get(key)
        if isinstance(v, dict) and v and all(isinstance(x, dict) for x in v.values()):
            return v
    for k, v in metrics.items():
        if isinstance(v, dict) and k not in ("decoding", "alignment", "vectors", "model"):
            for key in ("relations", "per_relation"):
                r = v.get(key)
                if isinstance(r, dict) and r and all(isinstance(x, dict) for x in r.values()):
                    return r
    return None


def _accuracy_leaves(d: Mapping, path: tuple = (), intervals: dict | None = None) -> dict[str, float]:
    """``{label: acc}`` of every accuracy under ``d``; ``intervals`` (when given) receives
    ``{label: [lo, hi]}`` for those saved with an ``acc_ci``."""
    out: dict[str, float] = {}
    for k, v in d.items():
        if k in SKIP_KEYS:
            continue
        p = path + (str(k),)
        if isinstance(v, dict):
            if _num(v.get("acc")):
                out["/".join(p)] = float(v["acc"])
                if intervals is not None and _interval(v.get("acc_ci")):
                    intervals["/".join(p)] = [float(c) for c in v["acc_ci"]]
            else:
                out.update(_accuracy_leaves(v, p, intervals))
        elif _num(v) and 0 <= float(v) <= 1 and (k in METHOD_KEYS or str(k).endswith("acc")):
            label = "/".join(p[:-1] if str(k) in ("acc", "accuracy") else p)
            if label:
                out[label] = float(v)
    return out


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(float(v))


def _interval(ci: Any) -> bool:
    return isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) for c in ci)


def pretty(label: str) -> str:
    if label in PRETTY:
        return PRETTY[label]
    for pre in ("test/", "zero_shot_test/", "metrics/"):
        if label.startswith(pre) and label[len(pre):] in PRETTY:
            return PRETTY[label[len(pre):]]
    return label.replace("/", " ")


def relation_accuracies(metrics: Mapping) -> dict[str, dict[str, float]]:
    """``{relation: {method label: accuracy}}`` wherever a run keeps per-relation accuracies, plus a
    ``mean`` row (the run's own when it has one, else the mean over relations)."""
    rels = _per_relation(metrics)
    if not rels:
        return {}
    out = {name: {pretty(k): v for k, v in _accuracy_leaves(r).items()} for name, r in rels.items()}
    out = {n: v for n, v in out.items() if v}
    if not out:
        return {}
    series = list(dict.fromkeys(s for v in out.values() for s in v))
    out["mean"] = {s: sum(v[s] for v in out.values() if s in v) / sum(1 for v in out.values() if s in v)
                   for s in series}
    return out


def relation_intervals(metrics: Mapping) -> dict[str, dict[str, list[float]]]:
    """``{relation: {method label: [lo, hi]}}``: the 95% intervals saved beside the accuracies of
    :func:`relation_accuracies` (``acc_ci``), for error bars; relations without any are left out."""
    out = {}
    for name, r in (_per_relation(metrics) or {}).items():
        cis: dict = {}
        _accuracy_leaves(r, intervals=cis)
        if cis:
            out[name] = {pretty(k): v for k, v in cis.items()}
    return out


HEADLINE = [
    re.compile(r"^(test\.)?mean\.(?![\w.]*\bn_)[\w.]+$"),
    re.compile(r"^methods\.[^.]+\.(open|mc)\.all\.acc$"),
    re.compile(r"^alignment\.(relation|pair\.\w+)\.all\.(fv|ffv)\.spearman$"),
    re.compile(r"^alignment\.prototypicality(_held_out)?\.mean\.(none|fv|ffv)\.spearman$"),
    re.compile(r"^decoding\.summary\.(fv|ffv)\.median_rank$"),
]


def headline(metrics: Mapping) -> dict[str, float]:
    """The few numbers that summarise a job (mean accuracies, scheme accuracies, correlations)."""
    flat = flatten(metrics)
    return {k: float(v) for k, v in flat.items()
            if _num(v) and not k.endswith(".n") and "prob" not in k and any(p.match(k) for p in HEADLINE)}


# -- figures ----------------------------------------------------------------------------------


def _figure(folder: Path, name: str, make, refresh: bool, made: list[Path]) -> Path | None:
    """``folder/figures/name``: kept if present (unless ``refresh``), else made by ``make(path)``."""
    path = folder / "figures" / name
    if path.is_file() and not refresh:
        return path
    try:
        r = make(path)
    except Exception as err:  # noqa: BLE001 - a figure that cannot be drawn is reported, not fatal
        log.warning("figure %s not drawn: %s", path, err)
        return None
    if r is None:
        return None
    made.append(path)
    return path


def _aie_heatmap(job: Job):
    def make(path):
        from fvtrain.artifacts import file_stem, load_tensors, name_of, read_json
        from fvtrain.reporting.figures import aie_heatmaps

        folder = _aie_dir(job)
        files = sorted(folder.glob("*.safetensors")) if folder else []
        if not files:
            return None
        vec_dir = folder.parent / "vectors"
        aies = {name_of(f.stem): t["aie"] for f in files if "aie" in (t := load_tensors(f))}
        if not aies:
            return None
        rels = _per_relation(job.metrics) or {}
        tops = {}
        for n in aies:
            heads = (rels.get(n) or {}).get("heads")
            if heads is None and (vec_dir / f"{file_stem(n)}.json").is_file():
                heads = [[h["layer"], h["head"], h.get("aie")] for h in
                         read_json(vec_dir / f"{file_stem(n)}.json").get("heads", [])]
            tops[n] = heads or []
        return aie_heatmaps(aies, path, tops)
    return make


def _aie_dir(job: Job) -> Path | None:
    for d in AIE_DIRS:
        if (job.path / d).is_dir() and any((job.path / d).glob("*.safetensors")):
            return job.path / d
    return None


def _layer_sweep(job: Job):
    def make(path):
        from fvtrain.reporting.figures import layer_sweep_curves

        rels = _per_relation(job.metrics) or {}
        sweeps, base = {}, {}
        for n, r in rels.items():
            ls = r.get("layer_sweep")
            if isinstance(ls, dict) and isinstance(ls.get("acc"), list):
                sweeps[n] = ls["acc"]
                b = (r.get("zero_shot") or {}).get("none")
                if isinstance(b, dict) and _num(b.get("acc")):
                    base[n] = b["acc"]
        if not sweeps:
            return None
        layer = job.metrics.get("layer")
        return layer_sweep_curves(sweeps, path, base, layer if isinstance(layer, int) else None)
    return make


def _accuracy_bars(values, intervals=None):
    def make(path):
        from fvtrain.reporting.figures import grouped_bars

        return grouped_bars(values, path, "test accuracy", "Accuracy per relation, every method",
                            intervals=intervals or None)
    return make


def _composition(table, methods: Mapping | None = None):
    """The composition figure: the bars of the composition table (``fvtrain.composition.tables``),
    with error bars where ``methods[name][mode][group]`` (metrics.json) saved an ``acc_ci``."""
    def make(path):
        from fvtrain.reporting.figures import grouped_bars

        vals, cis = {}, {}
        for name, *accs in table.rows:
            row = {col: float(acc) for col, acc in zip(table.columns[1:], accs) if _num(acc)}
            if row:
                vals[name] = row
            for col in row:  # columns read "<mode> <group>": "open all", "MC far"
                mode, _, group = col.lower().partition(" ")
                ci = ((((methods or {}).get(name) or {}).get(mode) or {}).get(group) or {}).get("acc_ci")
                if _interval(ci):
                    cis.setdefault(name, {})[col] = [float(c) for c in ci]
        if not vals:
            return None
        return grouped_bars(vals, path, "analogy accuracy", "Composition schemes and baselines",
                            intervals=cis or None)
    return make


# -- markdown ---------------------------------------------------------------------------------


def _link(target: Path, base: Path) -> str:
    rel = Path(os.path.relpath(target, base)).as_posix()
    return f"<{rel}>" if re.search(r"[\s()<>]", rel) else rel


def _img(title: str, target: Path, base: Path) -> str:
    return f"![{title}]({_link(target, base)})"


def job_section(job: Job, base: Path, level: int, refresh: bool, made: list[Path]) -> tuple[str, list[Path]]:
    """The markdown of one job and the figures it shows (generated where missing)."""
    h = "#" * level
    parts, figs = [], []

    def show(title, fig):
        if fig is not None:
            figs.append(fig)
            parts.append(_img(title, fig, base))

    m = job.metrics
    model = m.get("model") if isinstance(m.get("model"), dict) else {}
    info = [f"stages: {', '.join(job.stages) or 'unknown'}"]
    if model.get("model_id"):
        info.append(f"model: {model['model_id']}")
    if job.overrides:
        info.append("overrides: `" + " ".join(job.overrides) + "`")
    parts.append(" · ".join(info))

    accs = relation_accuracies(m)
    if accs:
        series = list(dict.fromkeys(s for v in accs.values() for s in v))
        title = "Fine-tuned function vectors" if "train" in job.stages else "Function vectors"
        parts.append(f"{h}# {title}: accuracy per relation\n\n" + markdown_table(
            ["relation", *series], [[n, *[v.get(s) for s in series]] for n, v in accs.items()]))
        show("accuracy per relation", _figure(job.path, "accuracy_by_relation.png",
                                              _accuracy_bars(accs, relation_intervals(m)), refresh, made))
        show("layer sweep", _figure(job.path, "layer_sweep.png", _layer_sweep(job), refresh, made))
    if _aie_dir(job) is not None:
        show("AIE heatmaps", _figure(job.path, "aie_heatmap.png", _aie_heatmap(job), refresh, made))
    if "train" in job.stages and (job.path / "bank").is_dir():
        from fvtrain.artifacts import list_vectors

        parts.append(f"Basis bank: {len(list_vectors(job.path / 'bank'))} fine-tuned vector(s) in `bank/`.")

    if "train" in job.stages and (m.get("zero_shot_acc") or {}).get("intervals"):
        from fvtrain.training.tables import completion_table, differences_table

        t = completion_table(m, per_relation_ci=True)
        parts.append(f"{h}# {t.title}\n\n" + t.markdown())
        d = differences_table(m)
        if d is not None:
            parts.append(f"{h}# {d.title}\n\n" + d.markdown())

    if "train" in job.stages and m.get("zero_shot_exact"):
        from fvtrain.training.tables import exact_table

        t = exact_table(m, compact=False)
        parts.append(f"{h}# {t.title}\n\n" + t.markdown())

    if "compose" in job.stages:
        from fvtrain.composition.tables import ablation_table, analogy_table, differences_table, sets_table
        from fvtrain.composition.tables import exact_table as analogy_exact

        table = analogy_table(m, ci="every")
        parts.append(f"{h}# Composition: {table.title}\n\n" + table.markdown())
        for extra in (sets_table(m), differences_table(m, compact=False), analogy_exact(m),
                      ablation_table(m, compact=False)):
            if extra is not None:
                parts.append(f"{h}# Composition: {extra.title}\n\n" + extra.markdown())
        show("composition schemes", _figure(job.path, "composition_schemes.png",
                                            _composition(analogy_table(m, ci="none"), m.get("methods")),
                                            refresh, made))

    if "eval" in job.stages:
        parts.append(_eval_section(job, base, h, refresh, made, figs))

    # Any other figure the run wrote.
    shown = {f.resolve() for f in figs}
    others = sorted(p for p in (job.path / "figures").glob("*.png") if p.resolve() not in shown) \
        if (job.path / "figures").is_dir() else []
    if others:
        parts.append(f"{h}# Other figures")
        for p in others:
            show(p.stem.replace("_", " "), p)
    return "\n\n".join(parts), figs


def _eval_section(job: Job, base: Path, h: str, refresh: bool, made: list[Path], figs: list[Path]) -> str:
    from fvtrain.evaluation import tables as ev_tables
    from fvtrain.evaluation.job import write_figures

    m = job.metrics
    out = []
    al = m.get("alignment") or {}
    if al:
        t = ev_tables.alignment_table(m, compact=False)
        if t is not None:
            out.append(f"{h}# Alignment with human judgments\n\nCorrelation [95% bootstrap CI]; "
                       f"judgments: `{(al.get('judgments') or {}).get('path')}`\n\n" + t.markdown())
        t = ev_tables.skipped_table(m)
        if t is not None:
            out.append("Skipped items:\n\n" + t.markdown())
    if m.get("decoding"):
        out.append(f"{h}# Decoding (logit lens)\n\n" + ev_tables.word_rank_table(m).markdown())
        out.append(ev_tables.decoding_table(m).markdown())
    points_file = job.path / "alignment_points.json"
    points = json.loads(points_file.read_text()) if points_file.is_file() else {}
    wanted = ["alignment_scatter.png", "prototypicality.png", "decoding_ranks.png"]
    missing = refresh or any(not (job.path / "figures" / w).is_file() for w in wanted)
    if missing:
        try:
            for p in write_figures(m, points, job.path / "figures"):
                made.append(p)
        except Exception as err:  # noqa: BLE001
            log.warning("eval figures not drawn for %s: %s", job.path, err)
    for w in wanted:
        p = job.path / "figures" / w
        if p.is_file():
            figs.append(p)
            out.append(_img(w[:-4].replace("_", " "), p, base))
    return "\n\n".join(out)


def swept_keys(jobs: Sequence[Job]) -> list[str]:
    keys = list(dict.fromkeys(k for j in jobs for k in j.override_values))
    return [k for k in keys if len({j.override_values.get(k) for j in jobs}) > 1]


def build_report(path: str | Path, out: str | Path | None = None, refresh: bool = False) -> Report:
    """Write ``report.md`` and ``metrics.csv`` (into ``out``, default ``path``) and any missing figure."""
    root = Path(path).expanduser()
    kind, jobs, incomplete = find_jobs(root)
    out = Path(out).expanduser() if out is not None else root
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    figs: list[Path] = []
    md = []
    if kind == "run":
        job = jobs[0]
        md.append(f"# fvtrain report: `{root}`")
        text, f = job_section(job, out, 1, refresh, made)
        md.append(text)
        figs += f
    elif kind == "pipeline":
        info = json.loads((root / "pipeline.json").read_text())
        secs = info.get("seconds") or {}
        md.append(f"# fvtrain report: main job `{root}`")
        md.append("Stages, each in its own folder:\n\n" + markdown_table(
            ["stage", "folder", "seconds"],
            [[st, f"[{st}/]({_link(root / st, out)})" if (root / st).is_dir() else "(this report)", secs.get(st)]
             for st in info.get("stages", [])]))
        for j in jobs:
            text, f = job_section(j, out, 3, refresh, made)
            md.append(f"## Stage `{j.name}`\n\n{text}")
            figs += f
    else:
        swept = swept_keys(jobs)
        md.append(f"# fvtrain report: multirun `{root}`")
        md.append(f"{len(jobs)} job(s)" + (f", swept: {', '.join(f'`{k}`' for k in swept)}" if swept else "")
                  + (f"; {len(incomplete)} job folder(s) without metrics.json (failed or still running): "
                     + ", ".join(f"`{p.name}`" for p in incomplete) if incomplete else ""))
        failed = _failed_jobs(root)
        if failed:
            md.append(f"{len(failed)} failed job(s) (from sweep_summary.json):\n\n" + markdown_table(
                ["job", "overrides", "error"],
                [[j.get("num"), " ".join(j.get("overrides") or []), (j.get("error") or "")[:200]] for j in failed]))
        heads = [headline(j.metrics) for j in jobs]
        keys = list(dict.fromkeys(k for h in heads for k in h))[:12]
        md.append("## Summary\n\n" + markdown_table(
            ["job", *swept, "stages", *keys],
            [[j.name, *[j.override_values.get(k) for k in swept], "+".join(j.stages) or "-",
              *[h.get(k) for k in keys]] for j, h in zip(jobs, heads)]))
        seeds = over_seeds(jobs, heads, swept)
        if seeds:
            md.append("## Over seeds (mean ± sd)\n\n" + markdown_table(*seeds))
        if swept and keys:
            sweep_fig = _sweep_figure(jobs, heads, swept, keys, out / "figures" / "sweep.png")
            if sweep_fig is not None:
                made.append(sweep_fig)
                figs.append(sweep_fig)
                md.append(_img("metrics across the sweep", sweep_fig, out))
        for j in jobs:
            text, f = job_section(j, out, 3, refresh, made)
            md.append(f"## Job `{j.name}`\n\n{text}")
            figs += f
    columns, rows = metrics_table(jobs)
    csv_path = write_csv(out / "metrics.csv", columns, rows)
    md.append(f"All metrics, one row per job: [{csv_path.name}]({_link(csv_path, out)})")
    from fvtrain.artifacts import _atomic

    text = "\n\n".join(md) + "\n"
    report_md = _atomic(out / "report.md", lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    return Report(root, kind, jobs, report_md, csv_path, list(dict.fromkeys(figs)), incomplete)


def over_seeds(jobs: Sequence[Job], heads: Sequence[Mapping[str, float]], swept: Sequence[str],
               n_metrics: int = 8) -> tuple[list[str], list[list]] | None:
    """Headline metrics as mean ± sd over the jobs that differ only in ``seed`` (None when the
    multirun swept no seed): one row per setting of the other swept keys."""
    if "seed" not in swept:
        return None
    others = [k for k in swept if k != "seed"]
    groups: dict[tuple, list[int]] = {}
    for i, j in enumerate(jobs):
        groups.setdefault(tuple(j.override_values.get(k) for k in others), []).append(i)
    keys = list(dict.fromkeys(k for h in heads for k in h))[:n_metrics]

    def cell(idx, k):
        vals = [heads[i][k] for i in idx if k in heads[i]]
        if not vals:
            return "-"
        mean = sum(vals) / len(vals)
        sd = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1)) if len(vals) > 1 else 0.0
        return f"{mean:.3f} ± {sd:.3f}"

    rows = [[*g, len(idx), *[cell(idx, k) for k in keys]] for g, idx in groups.items()]
    return [*others, "seeds", *[short_key(k) for k in keys]], rows


def _failed_jobs(root: Path) -> list[dict]:
    """Failed jobs recorded by the sweep callback (``sweep_summary.json``), if any."""
    f = root / "sweep_summary.json"
    if not f.is_file():
        return []
    try:
        jobs = json.loads(f.read_text()).get("jobs", [])
    except (json.JSONDecodeError, AttributeError):
        return []
    return [j for j in jobs if isinstance(j, dict) and j.get("status", "completed") != "completed"]


def _sweep_figure(jobs, heads, swept, keys, path):
    from fvtrain.reporting.figures import metric_lines

    if len(swept) == 1:
        xs = [_typed(j.override_values.get(swept[0], "")) for j in jobs]
        xlabel = swept[0]
        numeric = all(_num(x) for x in xs)
        order = sorted(range(len(jobs)), key=lambda i: xs[i]) if numeric else list(range(len(jobs)))
    else:
        xs = [",".join(f"{k}={j.override_values.get(k)}" for k in swept) for j in jobs]
        xlabel, order = "job", list(range(len(jobs)))
    # Accuracies and correlations share one axis; counts and ranks would flatten them.
    series = {k: [heads[i].get(k) for i in order] for k in keys
              if all(-1 <= heads[i].get(k, 0) <= 1 for i in order)}
    series = dict(list(series.items())[:8])
    if not series:
        return None
    try:
        return metric_lines([xs[i] for i in order], series, path, xlabel, "value",
                            "Headline metrics across the sweep")
    except Exception as err:  # noqa: BLE001
        log.warning("sweep figure not drawn: %s", err)
        return None


def short_key(key: str) -> str:
    """A compact label of a flattened metric key for narrow tables."""
    for pre in ("test.mean.", "mean.", "methods.", "alignment.", "decoding.summary."):
        if key.startswith(pre):
            key = key[len(pre):]
            break
    return key.replace(".all.", ".").replace("zero_shot", "0shot").replace("shuffled_icl", "shuf") \
        .removesuffix(".acc").removesuffix(".spearman")


def summary_rows(report: Report, n_metrics: int = 4) -> tuple[list[str], list[list]]:
    """Columns and rows of the closing rich table: job, stages, a few headline metrics."""
    heads = [headline(j.metrics) for j in report.jobs]
    keys = list(dict.fromkeys(k for h in heads for k in h))[:n_metrics]
    swept = swept_keys(report.jobs) if report.kind == "multirun" else []
    rows = [[j.name, *[j.override_values.get(k) for k in swept], "+".join(j.stages) or "-",
             *[h.get(k, "-") for k in keys]] for j, h in zip(report.jobs, heads)]
    return ["job", *swept, "stages", *[short_key(k) for k in keys]], rows
