"""The evaluation stage's tables, from its metrics.json (console and report.md).

``compact`` alignment tables (the console) show Spearman with its interval per kind and the FFV - FV
difference (``*``: its paired-bootstrap interval excludes 0); the full ones (report.md) show Spearman
and Pearson with intervals, then the difference.
"""

from __future__ import annotations

from typing import Mapping

from fvtrain.reporting.tables import Table

KINDS = ("fv", "ffv")
ANALYSES = ("relation", "prototypicality", "prototypicality_held_out", "pair")


def kinds_of(metrics: Mapping) -> list[str]:
    """The kinds of vectors the run evaluated, in order."""
    return [k for k in KINDS if k in (metrics.get("vectors") or {})] or list(KINDS)


def _fmt(v: float | None, compact: bool) -> str:
    if v is None:
        return "-"
    return (f"{v:+.2f}".replace("0.", ".") if compact else f"{v:+.3f}")


def _rho(c: Mapping | None, kind: str, stat: str = "spearman", compact: bool = False, ci: bool = True) -> str:
    if not c or kind not in c or not c[kind] or c[kind].get(stat) is None:
        return "-"
    lo_hi = c[kind].get(f"{stat}_ci") if ci else None
    text = _fmt(c[kind][stat], compact)
    if lo_hi:
        sep = "," if compact else ", "
        text += f" [{_fmt(lo_hi[0], compact)}{sep}{_fmt(lo_hi[1], compact)}]"
    return text


def _delta(c: Mapping | None, stat: str = "spearman") -> str:
    d = (c or {}).get("difference")
    if not d or d.get(stat) is None:
        return "-"
    lo_hi = d.get(f"{stat}_ci")
    star = "*" if lo_hi and (lo_hi[0] > 0 or lo_hi[1] < 0) else ""
    return f"{d[stat]:+.3f}{star}"


def summary_columns(kinds: list[str], compact: bool = False) -> list[str]:
    if compact:
        cols = ["analysis", "n"] + [f"rho {k.upper()} [95% CI]" for k in kinds]
        return cols + (["d rho"] if len(kinds) > 1 else [])
    cols = ["analysis", "n"] + [f"{s} {k.upper()}" for s in ("Spearman", "Pearson") for k in kinds]
    return cols + (["FFV - FV (Spearman)"] if len(kinds) > 1 else [])


def summary_rows(alignment: Mapping, kinds: list[str], compact: bool = False) -> list[list]:
    """Rows of the alignment summary: one per analysis and comparison type."""
    rows = []
    stats = ("spearman",) if compact else ("spearman", "pearson")

    def add(label, corr, n, names=None):
        if not corr:
            return
        names = names or kinds
        row = [label, n] + [_rho(corr, k, s, compact) if k in names else "" for s in stats for k in kinds]
        if len(kinds) > 1:
            row.append(_delta(corr))
        rows.append(row)

    rel = alignment.get("relation") or {}
    add("relation level", rel.get("all"), rel.get("n"))
    for t, c in (rel.get("by_comparison_type") or {}).items():
        add(f"  {t}", c, c["n"])
    for rep, res in (alignment.get("pair") or {}).items():
        if not isinstance(res, dict) or "all" not in res:
            continue
        add(f"pair level ({rep})", res.get("all"), res.get("n"))
        for t, c in (res.get("by_comparison_type") or {}).items():
            add(f"  {t}", c, c["n"])
    for key, label in (("prototypicality", "prototypicality"), ("prototypicality_held_out", "  held-out pairs")):
        proto = alignment.get(key) or {}
        m = proto.get("mean") or {}
        if m:
            add(f"{label} (mean of {proto['n_subtypes']})", m, proto["n_pairs"])
            if "none" in m:
                rows.append(["    no vector" if "held" in key else "  no vector", proto["n_pairs"]]
                            + [_rho(m, "none", s, compact) if i == 0 else "" for s in stats
                               for i, _ in enumerate(kinds)] + ([""] if len(kinds) > 1 else []))
    return rows


def alignment_table(metrics: Mapping, compact: bool = True) -> Table | None:
    """The alignment summary, or None when no analysis produced a correlation."""
    kinds = kinds_of(metrics)
    rows = summary_rows(metrics.get("alignment") or {}, kinds, compact)
    if not rows:
        return None
    title = ("Alignment with human judgments (Spearman; Pearson in metrics.json)" if compact
             else "Alignment with human judgments (correlation [95% bootstrap CI])")
    return Table(title, summary_columns(kinds, compact), rows)


def _skipped(metrics: Mapping) -> list[tuple[str, Mapping]]:
    """``(analysis label, result)`` of every alignment result that may have skipped items."""
    al = metrics.get("alignment") or {}
    out = []
    for what in ANALYSES:
        if what == "pair":
            out += [(f"pair ({rep})", r) for rep, r in (al.get("pair") or {}).items() if isinstance(r, dict)]
        else:
            out.append((what, al.get(what) or {}))
    return out


def skipped_table(metrics: Mapping) -> Table | None:
    """Every reason an alignment analysis skipped items, or None when none did."""
    rows = [[what, why, v.get("n"), v.get("example")]
            for what, r in _skipped(metrics) for why, v in (r.get("skipped") or {}).items()]
    return Table("Skipped items", ["analysis", "why", "n", "example"], rows) if rows else None


def skipped_lines(metrics: Mapping) -> list[str]:
    """One console line per alignment analysis that skipped items."""
    return [f"{what}: skipped {r['n_skipped']} item(s): "
            + "; ".join(f"{why} x{v['n']} (e.g. {v['example']})" for why, v in r["skipped"].items())
            for what, r in _skipped(metrics) if r.get("n_skipped")]


def decoding_table(metrics: Mapping) -> Table | None:
    """Logit lens per relation: top tokens and the best rank of a relation word, per kind."""
    from fvtrain.evaluation.decoding import table_rows

    dec = metrics.get("decoding")
    if not dec:
        return None
    kinds = kinds_of(metrics)
    vocab = next((e[k]["vocab_size"] for e in dec["relations"].values() for k in kinds if k in e), 0)
    return Table(f"Logit lens: top tokens, best rank of a relation word (of {vocab} tokens)",
                 ["relation"] + [c for k in kinds for c in (f"{k.upper()} top-5", f"{k.upper()} best rank")],
                 table_rows(dec, kinds))


def word_rank_table(metrics: Mapping) -> Table | None:
    """Relation-word rank summary per kind (relations with words only)."""
    dec = metrics.get("decoding")
    if not dec:
        return None
    s = dec.get("summary") or {}
    rows = [[k.upper(), s[k].get("n"), s[k].get("median_rank"), s[k].get("mrr"), s[k].get("top10"),
             s[k].get("top100")] for k in kinds_of(metrics) if k in s]
    title = "Relation-word ranks (relations with words)"
    whole = dec.get("whole_word")
    if whole:
        # Whole words: single-token spellings only (a shared first token cannot inflate these).
        w = whole.get("summary") or {}
        rows += [[f"{k.upper()} whole word", w[k].get("n"), w[k].get("median_rank"), w[k].get("mrr"),
                  w[k].get("top10"), w[k].get("top100")] for k in kinds_of(metrics) if k in w]
        title += (f"; whole-word rows rank single-token words only, {whole.get('n_skipped')} of "
                  f"{whole.get('n_words')} words skipped as multi-token")
    return Table(title, ["kind", "relations", "median best rank", "MRR", "top-10", "top-100"], rows)


def tables(metrics: Mapping, compact: bool = True) -> list[Table]:
    """The eval run's tables in print order (the word-rank table only when a relation has words)."""
    out = [alignment_table(metrics, compact), decoding_table(metrics)]
    ranks = word_rank_table(metrics)
    if ranks is not None and any(r[1] for r in ranks.rows):
        out.append(ranks)
    return [t for t in out if t is not None]
