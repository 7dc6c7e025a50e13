"""The training stage's tables, from its metrics.json (console, report.md and the main job)."""

from __future__ import annotations

from typing import Mapping

from fvtrain.reporting.tables import Table


def _v(x):
    return x if x is not None else "-"


def completion_table(metrics: Mapping, title: str | None = None) -> Table:
    """Zero-shot test accuracy per relation and method (none, FV, FFV, ..., ICL), then the mean."""
    t = metrics["zero_shot_acc"]
    cols = list(t["methods"])
    rows = [[r, *[_v(d.get(m)) for m in cols]] for r, d in t["relations"].items()]
    rows.append(["mean", *[_v(t["mean"].get(m)) for m in cols]])
    return Table(title or f"Zero-shot test accuracy, vectors injected at layer {metrics['layer']}",
                 ["relation", *cols], rows)


def shuffled_table(metrics: Mapping) -> Table | None:
    sm = metrics["mean"].get("shuffled_icl")
    if not sm:
        return None
    return Table("Shuffled-ICL test accuracy (mean over relations)", list(sm), [[_v(sm[m]) for m in sm]])


def tables(metrics: Mapping) -> list[Table]:
    return [t for t in (completion_table(metrics), shuffled_table(metrics)) if t is not None]
