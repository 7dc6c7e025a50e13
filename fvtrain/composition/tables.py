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


def tables(metrics: Mapping) -> list[Table]:
    return [analogy_table(metrics)]
