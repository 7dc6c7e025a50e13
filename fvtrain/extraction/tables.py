"""The extraction stage's tables, from its metrics.json (console, report.md and metrics.csv)."""

from __future__ import annotations

from typing import Mapping

from fvtrain.reporting.tables import Table


def fv_table(metrics: Mapping) -> Table:
    """Test accuracy per relation: zero-shot and shuffled ICL without/with the FV, clean ICL."""
    rows = [[n, m["zero_shot"]["none"]["acc"], m["zero_shot"]["fv"]["acc"],
             m["shuffled_icl"]["none"]["acc"], m["shuffled_icl"]["fv"]["acc"], m["icl"]["acc"]]
            for n, m in metrics["relations"].items()]
    mean = metrics["mean"]
    rows.append(["mean", mean["zero_shot"]["none"], mean["zero_shot"]["fv"],
                 mean["shuffled_icl"]["none"], mean["shuffled_icl"]["fv"], mean["icl"]])
    return Table(f"Function vectors at layer {metrics['layer']} (test accuracy)",
                 ["relation", "0-shot", "0-shot+FV", "shuffled", "shuffled+FV", "ICL"], rows)


def tables(metrics: Mapping) -> list[Table]:
    return [fv_table(metrics)]
