"""The training stage's tables, from its metrics.json (console, report.md and the main job)."""

from __future__ import annotations

from typing import Mapping

from fvtrain.evaluation.stats import fmt, fmt_diff
from fvtrain.reporting.tables import Table


def _v(x):
    return x if x is not None else "-"


def completion_table(metrics: Mapping, title: str | None = None, per_relation_ci: bool = False) -> Table:
    """Zero-shot test accuracy per relation and method (none, FV, FFV, ..., ICL), then the mean with
    its 95% bootstrap interval (``per_relation_ci``, for report.md: every cell with its own; the
    console's compact form otherwise)."""
    t = metrics["zero_shot_acc"]
    ci = t.get("intervals") or {}
    cols = list(t["methods"])

    def cell(v, lo_hi):
        return _v(v) if v is None or not lo_hi else fmt(v, lo_hi, compact=not per_relation_ci)

    rows = [[r, *[cell(d.get(m), (ci.get("relations", {}).get(r, {}).get(m) if per_relation_ci else None))
                  for m in cols]] for r, d in t["relations"].items()]
    rows.append(["mean", *[cell(t["mean"].get(m), ci.get("mean", {}).get(m)) for m in cols]])
    return Table(title or f"Zero-shot test accuracy, vectors injected at layer {metrics['layer']}"
                 + (" (mean [95% bootstrap CI])" if ci else ""), ["relation", *cols], rows)


def differences_table(metrics: Mapping) -> Table | None:
    """Paired differences between methods on the same test items (``*``: the CI excludes 0)."""
    diffs = (metrics["zero_shot_acc"].get("intervals") or {}).get("differences") or {}
    if not diffs:
        return None
    return Table("Zero-shot accuracy differences, paired on the same items (95% bootstrap CI)",
                 ["comparison", "items", "difference"],
                 [[k, d.get("n"), fmt_diff(d)] for k, d in diffs.items()])


def shuffled_table(metrics: Mapping) -> Table | None:
    sm = metrics["mean"].get("shuffled_icl")
    if not sm:
        return None
    return Table("Shuffled-ICL test accuracy (mean over relations)", list(sm), [[_v(sm[m]) for m in sm]])


def exact_table(metrics: Mapping, compact: bool = True) -> Table | None:
    """Zero-shot exact match of the whole answer (greedy) per relation and method, then its mean with
    a 95% bootstrap interval (``compact`` on the console) and, for comparison, the first-token mean
    of ``zero_shot_acc``."""
    from fvtrain.evaluation.stats import fmt

    ex = metrics.get("zero_shot_exact")
    if not ex:
        return None
    cols = list(ex["methods"])
    first = (metrics.get("zero_shot_acc") or {}).get("mean") or {}
    rows = [[r, *[_v(d.get(m)) for m in cols]] for r, d in ex["relations"].items()]
    rows.append(["mean exact", *[fmt(ex["mean"].get(m), (ex.get("acc_ci") or {}).get(m), compact=compact)
                                 for m in cols]])
    rows.append(["mean first-token", *[_v(first.get(m)) for m in cols]])
    return Table("Zero-shot exact match of the whole answer (greedy decoding, any accepted answer; "
                 "mean [95% bootstrap CI])", ["relation", *cols], rows)


def tables(metrics: Mapping) -> list[Table]:
    return [t for t in (completion_table(metrics), differences_table(metrics), shuffled_table(metrics),
                        exact_table(metrics))
            if t is not None]
