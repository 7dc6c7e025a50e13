"""The composition stage's tables, from its metrics.json (console, report.md and the pipeline)."""

from __future__ import annotations

from typing import Any, Mapping

from fvtrain.reporting.tables import Table

COLUMNS = ["method", "open all", "open near", "open far", "MC all", "MC near", "MC far"]


def _acc(m: Mapping, mode: str, group: str, ci: bool = False, compact: bool = True) -> Any:
    from fvtrain.evaluation.stats import fmt

    g = (m.get(mode) or {}).get(group) or {}
    v = g.get("acc")
    if v is None:
        return "-"
    return fmt(float(v), g.get("acc_ci"), compact=compact) if ci and g.get("acc_ci") else float(v)


def analogy_rows(methods: Mapping, ci: str = "all") -> list[list]:
    """One row per method: open-ended and multiple-choice accuracy, all / near / far; intervals on
    ``ci="all"`` columns (the console), on every column (``"every"``, report.md) or none."""
    return [[name, *[_acc(m, mode, g, ci == "every" or (ci == "all" and g == "all"), ci != "every")
                     for mode in ("open", "mc") for g in ("all", "near", "far")]]
            for name, m in methods.items()]


def differences_table(metrics: Mapping, compact: bool = True) -> Table | None:
    """Paired differences between the main scheme and each alternative (``*``: CI excludes 0)."""
    from fvtrain.evaluation.stats import fmt_diff

    diffs = metrics.get("differences") or {}
    if not diffs:
        return None
    groups = [g for g in ("all", "near", "far") if any(g in (d.get("open") or {}) for d in diffs.values())]
    cols = [f"{mode} {g}" for mode in ("open", "mc") for g in groups]
    rows = [[k, *[fmt_diff((d.get(mode) or {}).get(g), 2 if compact else 3) for mode in ("open", "mc") for g in groups]]
            for k, d in diffs.items()]
    return Table("Analogy accuracy differences, paired on the same items (95% bootstrap CI)", ["comparison", *cols],
                 rows)


def sets_table(metrics: Mapping) -> Table | None:
    """Accuracy per analogy test set (``analogies.sets``): open-ended and multiple choice."""
    sets = [s["name"] for s in (metrics.get("analogies") or {}).get("sets") or []]
    if not sets:
        return None
    methods = metrics.get("methods") or {}
    cols = [f"{s} {mode}" for s in sets for mode in ("open", "MC")]
    rows = [[n, *[_acc(m, mode, f"set:{s}", True) for s in sets for mode in ("open", "mc")]] for n, m in methods.items()]
    return Table("Analogies per test set: accuracy [95% bootstrap CI]", ["method", *cols], rows)


def ablation_table(metrics: Mapping, compact: bool = True) -> Table | None:
    """Each ablation variant against the reference scheme: what it changes, its accuracy and the
    paired difference from the reference (``*``: the 95% CI excludes 0)."""
    from fvtrain.evaluation.stats import fmt, fmt_diff

    ab = metrics.get("ablations")
    if not ab:
        return None
    rows = []
    for name, v in ab["variants"].items():
        m = ab["methods"].get(name) or {}
        d = ab["differences"].get(f"{name} - reference") or {}
        change = ", ".join(f"{k}={v[k]}" for k in ("form", "learn_temperature", "identity_reg")
                           if name != "reference" and v.get(k) not in (None, False, 0, 0.0, "full"))
        rows.append([name, v.get("n_basis"), v.get("n_train_analogies"), v.get("score_tokens"), change or "-",
                     *[fmt((m.get(mode) or {}).get("all", {}).get("acc"), (m.get(mode) or {}).get("all", {}).get("acc_ci"),
                           compact=compact) for mode in ("open", "mc")],
                     *[fmt_diff((d.get(mode) or {}).get("all"), 2 if compact else 3) for mode in ("open", "mc")]])
    return Table("Ablations of the affine map on the held-out analogies (paired differences vs the reference)",
                 ["variant", "basis", "train analogies", "score", "map", "open", "MC", "open - ref", "MC - ref"],
                 rows)


def analogy_table(metrics: Mapping, ci: str = "all") -> Table:
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
    return Table(title, list(COLUMNS), analogy_rows(metrics.get("methods") or {}, ci))


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
    return [t for t in (analogy_table(metrics), sets_table(metrics), differences_table(metrics), exact_table(metrics),
                        ablation_table(metrics)) if t is not None]
