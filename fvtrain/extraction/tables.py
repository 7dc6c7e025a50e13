"""The extraction stage's tables, from its metrics.json (console, report.md and metrics.csv)."""

from __future__ import annotations

from typing import Mapping

from fvtrain.reporting.tables import Table


def fv_table(metrics: Mapping) -> Table:
    """Test accuracy per relation: zero-shot and shuffled ICL without/with the FV, clean ICL; the
    mean with its 95% bootstrap interval (items resampled within relations)."""
    from fvtrain.evaluation.stats import fmt

    def acc(m, mode, method):
        return ((m.get(mode) or {}).get(method) or {}).get("acc")  # extract.eval_shuffled=false: none

    rows = [[n, acc(m, "zero_shot", "none"), acc(m, "zero_shot", "fv"), acc(m, "shuffled_icl", "none"),
             acc(m, "shuffled_icl", "fv"), m["icl"]["acc"]] for n, m in metrics["relations"].items()]
    mean = metrics["mean"]
    ci = mean.get("intervals") or {}

    def cell(value, mode, method=None):
        lo_hi = (ci.get(mode) or {}).get("mean")
        lo_hi = lo_hi.get(method) if isinstance(lo_hi, dict) and method else lo_hi
        return fmt(value, lo_hi, compact=True) if lo_hi and value is not None else value

    rows.append(["mean", cell(mean["zero_shot"]["none"], "zero_shot", "none"),
                 cell(mean["zero_shot"]["fv"], "zero_shot", "fv"),
                 cell(mean["shuffled_icl"]["none"], "shuffled_icl", "none"),
                 cell(mean["shuffled_icl"]["fv"], "shuffled_icl", "fv"), cell(mean["icl"], "icl")])
    return Table(f"Function vectors at layer {metrics['layer']} (test accuracy"
                 + ("; mean [95% bootstrap CI])" if ci else ")"),
                 ["relation", "0-shot", "0-shot+FV", "shuffled", "shuffled+FV", "ICL"], rows)


def tables(metrics: Mapping) -> list[Table]:
    return [fv_table(metrics)]
