"""The composition stage's tables, from its metrics.json (console, report.md and the pipeline)."""

from __future__ import annotations

from typing import Any, Mapping

from fvtrain.reporting.tables import Table

COLUMNS = ["method", "open all", "open near", "open far", "MC all", "MC near", "MC far"]


def _acc(m: Mapping, mode: str, group: str) -> Any:
    v = ((m.get(mode) or {}).get(group) or {}).get("acc")
    return "-" if v is None else float(v)


def analogy_rows(methods: Mapping) -> list[list]:
    """One row per method: open-ended and multiple-choice accuracy, all / near / far."""
    return [[name, *[_acc(m, mode, g) for mode in ("open", "mc") for g in ("all", "near", "far")]]
            for name, m in methods.items()]


def analogy_table(metrics: Mapping) -> Table:
    """Analogy accuracy of every scheme and baseline (``metrics["methods"]``)."""
    n = (metrics.get("analogies") or {}).get("n")
    bank = metrics.get("bank") or {}
    layer = metrics.get("layer", bank.get("layer"))
    scheme = (metrics.get("scheme") or {}).get("name")
    what = []
    if n is not None:
        what.append(f"{n} items")
    if bank:
        what.append(f"bank of {bank.get('n')} {bank.get('kind')} vectors"
                    + (f" at layer {layer}" if layer is not None else ""))
    if scheme:
        what.append(f"scheme {scheme}")
    title = "Analogies" + (f" ({', '.join(what)})" if what else "") + ": accuracy"
    return Table(title, list(COLUMNS), analogy_rows(metrics.get("methods") or {}))


def exact_table(metrics: Mapping) -> Table | None:
    """Open-ended analogies: first-token accuracy beside exact match of the whole answer (greedy
    decoding, any accepted D), with the exact match's 95% bootstrap interval; ``None`` without it."""
    from fvtrain.evaluation.stats import fmt

    methods = metrics.get("methods") or {}
    rows = []
    for name, m in methods.items():
        ex = m.get("open_exact")
        if not ex:
            continue
        a = ex.get("all") or {}
        rows.append([name, _acc(m, "open", "all"), fmt(a.get("acc"), a.get("acc_ci")),
                     _acc(m, "open_exact", "near"), _acc(m, "open_exact", "far")])
    if not rows:
        return None
    return Table("Open-ended analogies: first-token accuracy vs exact match of the whole answer "
                 "(greedy; [95% bootstrap CI])",
                 ["method", "first-token all", "exact all", "exact near", "exact far"], rows)


def tables(metrics: Mapping) -> list[Table]:
    return [t for t in (analogy_table(metrics), exact_table(metrics)) if t is not None]
