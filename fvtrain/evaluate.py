"""``fvtrain-eval``: alignment with human judgments and logit-lens decoding, FV versus FFV.

    fvtrain-eval vectors.fv=outputs/extract/<run> vectors.ffv=outputs/train/<run> \\
                 judgments.path=../shared/data/relsim_chen2017/relsim
    fvtrain-eval vectors.fv=<run> judgments.path=../shared/data/semeval2012_task2
    fvtrain-eval vectors.fv=<run>                    # decoding only

``vectors.fv`` / ``vectors.ffv`` name run folders (``vectors/`` of an extraction run, ``bank/`` of
a training run) or folders of saved vectors. ``judgments.path`` is a relational-similarity CSV (file
or folder: relation-level and pair-level alignment) or a SemEval-2012 Task 2 folder (prototypicality
per subtype). Writes to the run folder: metrics.json (``alignment`` and ``decoding``),
alignment_points.json (every point of every scatter), figures/alignment_scatter.png,
figures/prototypicality.png, figures/decoding_ranks.png, config.yaml; prints summary tables.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from fvtrain import cli

log = logging.getLogger("fvtrain.evaluate")

KINDS = ("fv", "ffv")
# Where each kind's vectors are looked for inside a run folder, in order (a training run keeps the
# FVs it extracted itself under extraction/vectors, and names FVs it reused in metrics.json fv_source).
SUBDIRS = {"fv": ("vectors", "extraction/vectors"), "ffv": ("bank",)}


@dataclass
class VectorSet:
    """Every vector of one kind: ``vectors[relation]``, its layer and manifest."""

    kind: str
    folder: Path
    run: Path | None
    vectors: dict
    layers: dict[str, int]
    manifests: dict[str, dict]

    @property
    def names(self) -> list[str]:
        return list(self.vectors)

    def splits_file(self) -> Path | None:
        """The ``splits.json`` of the run that made these vectors, if it can be found."""
        for d in ([self.run] if self.run else []) + [self.folder.parent, self.folder.parent.parent]:
            if d is not None and (d / "splits.json").is_file():
                return d / "splits.json"
        return None

    def model_ids(self) -> set:
        return {m.get("model_id") for m in self.manifests.values() if m.get("model_id")}


def resolve_vector_folder(path: str | Path, kind: str) -> tuple[Path, Path | None]:
    """``(folder of vectors, run folder or None)`` for ``vectors.<kind>=path``."""
    from fvtrain.artifacts import list_vectors

    p = Path(str(path)).expanduser()
    if not p.exists():
        raise cli.ConfigError(f"vectors.{kind}={str(path)!r} does not exist")
    if not p.is_dir():
        raise cli.ConfigError(f"vectors.{kind}={str(path)!r} is a file; give a run folder or a folder "
                              "of vectors (NAME.safetensors + NAME.json)")
    for sub in SUBDIRS[kind]:
        if (p / sub).is_dir() and list_vectors(p / sub):
            return p / sub, p
    if kind == "fv" and (p / "metrics.json").is_file() and (p / "bank").is_dir():
        from fvtrain.artifacts import read_json

        src = read_json(p / "metrics.json").get("fv_source")
        if src and Path(src).is_dir() and list_vectors(Path(src)):
            return Path(src), Path(src).parent
    if list_vectors(p):
        run = p.parent if p.name in ("vectors", "bank") else None
        return p, run
    raise cli.ConfigError(
        f"vectors.{kind}={str(path)!r} holds no vectors: expected a run folder with "
        f"{' or '.join(s + '/' for s in SUBDIRS[kind])} or a folder of NAME.safetensors + NAME.json"
    )


def load_vector_set(path: str | Path, kind: str, relations: list[str] | None = None) -> VectorSet:
    from fvtrain.artifacts import list_vectors, load_vector

    folder, run = resolve_vector_folder(path, kind)
    vectors, layers, mans = {}, {}, {}
    for f in list_vectors(folder):
        v, man = load_vector(f)
        name = str(man.get("relation") or f.stem)
        if name in vectors:
            raise cli.ConfigError(f"{folder} holds several vectors for relation {name!r}")
        vectors[name] = v.float()
        layers[name] = int(man["layer"]) if man.get("layer") is not None else None
        mans[name] = man
    if relations:
        missing = [r for r in relations if r not in vectors]
        if missing:
            raise cli.ConfigError(f"vectors.relations names {', '.join(map(repr, missing))}, but "
                                  f"{folder} has no vector for it (it holds {', '.join(vectors)})")
        vectors = {r: vectors[r] for r in relations}
    other = sorted({str(m.get("kind")) for m in mans.values() if m.get("kind") not in (None, kind)})
    if other:
        log.warning("vectors.%s=%s holds vectors of kind %s; they are reported as %s", kind, path,
                    ", ".join(other), kind.upper())
    sizes = {int(v.numel()) for v in vectors.values()}
    if len(sizes) > 1:
        raise cli.ConfigError(f"{folder} mixes vector sizes {sorted(sizes)}: vectors of several models")
    return VectorSet(kind, folder, run, vectors, layers, mans)


def load_vector_sets(cfg: DictConfig) -> dict[str, VectorSet]:
    rels = cli.name_list(cfg.vectors.get("relations"))
    sets = {k: load_vector_set(cfg.vectors[k], k, rels) for k in KINDS if cfg.vectors.get(k)}
    if not sets:
        raise cli.ConfigError(
            "no vectors to evaluate: set vectors.fv=<extraction run folder> and/or "
            "vectors.ffv=<training run folder> (or folders of saved vectors)"
        )
    if cfg.vectors.get("check_model", True):
        for k, s in sets.items():
            ids = s.model_ids()
            if ids and ids != {str(cfg.model.name)}:
                raise cli.ConfigError(
                    f"the {k.upper()} vectors in {s.folder} were made with model {', '.join(sorted(ids))}, "
                    f"but this run loads {cfg.model.name!r}; run with model={sorted(ids)[0]} "
                    "(or vectors.check_model=false if they are the same weights)"
                )
    return sets


def load_judgments(j_cfg: DictConfig):
    from fvtrain.data.readers import read

    if not j_cfg.get("path"):
        return None
    ds = read(j_cfg.path, j_cfg.get("format"), cli.name_list(j_cfg.get("relations")))
    if not ds.judgments and not ds.prototypicality:
        raise cli.ConfigError(
            f"judgments.path={j_cfg.path!r} holds no human judgments ({ds.format} format: "
            f"{len(ds.relations)} relation(s), 0 similarity ratings, 0 prototypicality ratings); give "
            "a relational-similarity CSV (relsim layout) or a SemEval-2012 Task 2 folder"
        )
    return ds


def relation_sources(sets: dict[str, VectorSet], ds) -> dict[str, dict]:
    """Relation metadata (titles, definitions) for deriving relation words: from the judgments'
    data set, else from the data set named in the vectors' run config."""
    from omegaconf import OmegaConf

    from fvtrain.data.readers import read

    names = {n for s in sets.values() for n in s.names}
    out: dict[str, dict] = {}
    if ds is not None:
        out.update({n: dict(r.source) for n, r in ds.relations.items() if n in names})
    for s in sets.values():
        if names <= set(out) or s.run is None or not (s.run / "config.yaml").is_file():
            continue
        try:
            path = OmegaConf.load(s.run / "config.yaml").data.path
            if str(path) == "builtin":
                continue
            data = read(path)
            out.update({n: dict(r.source) for n, r in data.relations.items() if n in names and n not in out})
        except Exception as err:  # noqa: BLE001 - only used to name relations; never fatal
            log.info("relation titles not read from %s: %s", s.run, err)
    return out


def _fmt(v: float | None, compact: bool) -> str:
    if v is None:
        return "-"
    return (f"{v:+.2f}".replace("0.", ".") if compact else f"{v:+.3f}")


def _rho(c: dict | None, kind: str, stat: str = "spearman", compact: bool = False, ci: bool = True) -> str:
    if not c or kind not in c or not c[kind] or c[kind].get(stat) is None:
        return "-"
    lo_hi = c[kind].get(f"{stat}_ci") if ci else None
    text = _fmt(c[kind][stat], compact)
    if lo_hi:
        sep = "," if compact else ", "
        text += f" [{_fmt(lo_hi[0], compact)}{sep}{_fmt(lo_hi[1], compact)}]"
    return text


def _delta(c: dict | None, stat: str = "spearman") -> str:
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


def summary_rows(alignment: dict, kinds: list[str], compact: bool = False) -> list[list]:
    """Rows of the alignment summary: one per analysis and comparison type.

    ``compact`` (the console table): Spearman with its interval per kind and the FFV - FV
    difference (``*``: its paired-bootstrap interval excludes 0). Otherwise Spearman and Pearson
    with intervals, then the difference.
    """
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


def evaluate(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run alignment and decoding for ``cfg`` (a composed ``eval.yaml``) into ``out`` (default:
    the Hydra run folder); returns the metrics."""
    from fvtrain.artifacts import write_json
    from fvtrain.evaluation import alignment as al
    from fvtrain.evaluation import decoding as dec
    from fvtrain.prompts import PromptTemplate

    out = Path(out) if out is not None else cli.output_dir()
    seed = int(cfg.seed)
    a_cfg, d_cfg = cfg.alignment, cfg.decoding
    template = PromptTemplate(cfg.prompt.template)
    n_boot, ci = int(a_cfg.n_boot), float(a_cfg.ci)
    # Everything that can be checked without the model is checked first.
    sets = load_vector_sets(cfg)
    kinds = list(sets)
    geo = cli.check_geometry(cfg, None)
    for k, s in sets.items():
        bad = {n: l for n, l in s.layers.items() if l is None or not 0 <= l < geo["n_layers"]}
        if bad:
            raise cli.ConfigError(f"{k.upper()} vector(s) {', '.join(bad)} in {s.folder} have no valid layer "
                                  f"for {cfg.model.name} ({geo['n_layers']} layers)")
    ds = load_judgments(cfg.judgments)
    user_words = dec.load_words_file(d_cfg.words) if d_cfg.get("words") else None
    vecs = {k: s.vectors for k, s in sets.items()}
    held_out = _train_pairs(sets) if a_cfg.get("held_out", True) else None
    alignment: dict[str, Any] = {}
    points: dict[str, Any] = {}
    if ds is not None:
        alignment["judgments"] = {"path": str(cfg.judgments.path), "format": ds.format,
                                  "n_judgments": len(ds.judgments), "n_prototypicality": len(ds.prototypicality),
                                  "reader_skipped": len(ds.skipped)}
        if held_out is not None:
            alignment["held_out"] = {"splits": held_out[1], "n_train_pairs": len(held_out[0])}
        if ds.judgments and a_cfg.relation_level:
            try:
                alignment["relation"], points["relation"] = al.relation_alignment(
                    vecs, ds.judgments, bool(a_cfg.include_self), n_boot, ci, seed)
            except al.AlignmentError as err:
                # Pair level needs no relation names (any basis works), so it can still run.
                if not (a_cfg.pair_level and al.judged_pairs(ds.judgments)):
                    raise
                log.warning("relation-level alignment skipped: %s", err)
                alignment["relation"] = {"n": 0, "all": None, "error": str(err), "n_skipped": len(ds.judgments),
                                         "skipped": {"no judged relation has a vector": {
                                             "n": len(ds.judgments), "example": ""}}}
    cli.save_resolved_config(cfg, out)
    cli.seed_everything(seed)
    lm = cli.load_model(cfg)
    if lm.d_model != next(iter(next(iter(vecs.values())).values())).numel():
        raise cli.ConfigError(f"the vectors have size {next(iter(next(iter(vecs.values())).values())).numel()}, "
                              f"but {lm.model_id} has d_model {lm.d_model}: they were made for another model")

    with cli.progress() as bar:
        # Decoding: top-k tokens and relation-word ranks.
        decoding = None
        if d_cfg.enabled:
            names = list(dict.fromkeys(n for s in sets.values() for n in s.names))
            words, origin = dec.relation_words(names, relation_sources(sets, ds), user_words,
                                               bool(d_cfg.builtin_words), bool(d_cfg.derive_words))
            decoding = dec.decode_sets(lm, vecs, words, int(d_cfg.k))
            decoding["word_source"] = origin
            if decoding["no_words"]:
                log.warning("no relation words for %d relation(s) (%s): their ranks are not reported; "
                            "give decoding.words=<json>", len(decoding["no_words"]),
                            ", ".join(decoding["no_words"][:6]))

        if ds is not None:
            # Pair level: composite weights of every judged word pair over each kind's basis.
            pairs_all = al.judged_pairs(ds.judgments)
            if pairs_all and a_cfg.pair_level:
                alignment["pair"], points["pair"] = _pair_level(lm, cfg, sets, ds, pairs_all, template,
                                                                 bar, seed, held_out[0] if held_out else None)
            # Prototypicality per subtype.
            if ds.prototypicality and a_cfg.prototypicality:
                rated = {r.relation for r in ds.prototypicality}
                task = bar.add_task("prototypicality", total=len(rated & set.intersection(
                    *(set(s.names) for s in sets.values()))))
                records, skipped = al.prototypicality_records(
                    lm, ds.prototypicality, vecs, {k: s.layers for k, s in sets.items()}, template,
                    bool(a_cfg.baseline), int(a_cfg.batch_size), progress=lambda n: bar.advance(task, n))
                names = (["none"] if a_cfg.baseline else []) + kinds
                alignment["prototypicality"] = al.prototypicality_summary(
                    records, names, n_boot, ci, seed, int(a_cfg.min_pairs), (), skipped)
                if held_out:
                    alignment["prototypicality_held_out"] = al.prototypicality_summary(
                        records, names, n_boot, ci, seed, int(a_cfg.min_pairs), held_out[0], skipped)
                points["prototypicality"] = records

    metrics = {
        "model": lm.describe(),
        "vectors": {k: {"path": str(s.folder), "n": len(s.vectors), "relations": s.names,
                        "layers": sorted({l for l in s.layers.values()})} for k, s in sets.items()},
        "alignment": alignment,
    }
    if decoding is not None:
        metrics["decoding"] = decoding
    write_json(out / "metrics.json", metrics)
    if points:
        write_json(out / "alignment_points.json", points)
    written = write_figures(metrics, points, out / "figures")

    # Closing summary.
    if alignment:
        rows = summary_rows(alignment, kinds, compact=True)
        if rows:
            cli.print_table("Alignment with human judgments (Spearman; Pearson in metrics.json)",
                            summary_columns(kinds, compact=True), rows)
        for what in ("relation", "pair", "prototypicality", "prototypicality_held_out"):
            res = alignment.get(what) or {}
            subs = [res] if what != "pair" else [v for v in res.values() if isinstance(v, dict)]
            for r in subs:
                if r.get("n_skipped"):
                    print(f"{what}: skipped {r['n_skipped']} item(s): "
                          + "; ".join(f"{why} x{v['n']} (e.g. {v['example']})" for why, v in r["skipped"].items()))
    if decoding is not None:
        vocab = next((e[k]["vocab_size"] for e in decoding["relations"].values() for k in kinds if k in e), 0)
        cli.print_table(f"Logit lens: top tokens, best rank of a relation word (of {vocab} tokens)",
                        ["relation"] + [c for k in kinds for c in (f"{k.upper()} top-5", f"{k.upper()} best rank")],
                        dec.table_rows(decoding, kinds))
        s = decoding["summary"]
        if any(s[k]["n"] for k in kinds):
            cli.print_table("Relation-word ranks (relations with words)",
                            ["kind", "n", "median rank", "MRR", "top-10", "top-100"],
                            [[k.upper(), s[k]["n"], s[k]["median_rank"], s[k]["mrr"], s[k]["top10"],
                              s[k]["top100"]] for k in kinds])
    for p in written:
        log.info("figure: %s", p)
    print(f"run folder: {out}")
    return metrics


def _train_pairs(sets: dict[str, VectorSet]) -> tuple[set, list[str]] | None:
    """Every (x, y) in a train split of the runs that made the vectors, and those splits files."""
    from fvtrain.data import load_splits
    from fvtrain.evaluation.alignment import train_pairs

    files = list(dict.fromkeys(f for s in sets.values() if (f := s.splits_file()) is not None))
    if not files:
        log.info("no splits.json beside the vectors: no held-out analyses")
        return None
    pairs: set = set()
    for f in files:
        pairs |= train_pairs(load_splits(f).values())
    return pairs, [str(f) for f in files]


def _pair_level(lm, cfg, sets, ds, pairs_all, template, bar, seed, exclude=None) -> tuple[dict, dict]:
    import torch

    from fvtrain.evaluation import alignment as al

    a_cfg = cfg.alignment
    reps_wanted = cli.name_list(a_cfg.representations) or ["weights"]
    bad = [r for r in reps_wanted if r not in ("weights", "cfv")]
    if bad:
        raise cli.ConfigError(f"alignment.representations may list weights and cfv, got {bad}")
    pairs = al.sample_pairs(pairs_all, a_cfg.get("max_pairs"), seed)
    res: dict = {"n_pairs_judged": len(pairs_all), "n_pairs_scored": len(pairs)}
    # Pairs whose words do not encode are dropped (and counted) rather than failing the run.
    ok, bad_pairs = [], []
    for p in pairs:
        ids_a = lm.tokenizer(" " + p[0], add_special_tokens=False)["input_ids"]
        ids_b = lm.tokenizer(" " + p[1], add_special_tokens=False)["input_ids"]
        (ok if ids_a and ids_b else bad_pairs).append(p)
    if bad_pairs:
        res["not_encodable"] = [":".join(p) for p in bad_pairs]
    reps: dict[str, dict[str, dict]] = {r: {} for r in reps_wanted}
    scores_meta = {}
    for k, s in sets.items():
        layers = sorted({l for l in s.layers.values()})
        if len(layers) != 1:
            log.warning("pair-level alignment skipped for %s: its vectors use several layers %s, but "
                        "composite weights inject every basis vector at one layer", k, layers)
            res.setdefault("skipped_kinds", {})[k] = f"vectors at several layers {layers}"
            continue
        basis = torch.stack([s.vectors[n] for n in s.names])
        task = bar.add_task(f"pair level: scoring {len(ok)} pairs x {len(basis)} {k.upper()}s", total=len(ok))
        sc = al.pair_scores(lm, ok, basis, layers[0], template, int(a_cfg.batch_size), int(a_cfg.max_rows),
                            progress=lambda n: bar.advance(task, n))
        w = al.composite_weights(sc, float(a_cfg.temperature))
        scores_meta[k] = {"basis": s.names, "layer": layers[0],
                          "entropy_mean": float(-(w * w.clamp_min(1e-300).log()).sum(1).mean()),
                          "top_basis_counts": _top_counts(w, s.names),
                          "top_basis_is_pair_relation": _top_hits(w, s.names, ok, ds.judgments, exclude)}
        for r in reps_wanted:
            mat = w if r == "weights" else w @ basis.double()
            reps[r][k] = {p: mat[i] for i, p in enumerate(ok)}
    res["basis"] = scores_meta
    points = {}
    for r in reps_wanted:
        if not reps[r]:
            continue
        res[r], points[r] = al.pair_alignment(reps[r], ds.judgments, int(a_cfg.n_boot), float(a_cfg.ci), seed)
        if exclude:
            # The same, on judgments whose two pairs are in no train split of the vectors.
            res[f"{r}_held_out"], _ = al.pair_alignment(reps[r], ds.judgments, int(a_cfg.n_boot),
                                                        float(a_cfg.ci), seed, exclude)
    return res, points


def _top_hits(w, names, pairs, judgments, exclude=None) -> dict:
    """How often the highest-weighted basis vector is the relation the data labels the pair with
    (chance: 1 / basis size); also on pairs in no train split of the vectors."""
    label: dict = {}
    for j in judgments:
        for pair, rel in ((tuple(j.first), j.first_relation), (tuple(j.second), j.second_relation)):
            if rel and rel in names:
                label.setdefault(pair, rel)
    hits = [(p, names[int(w[i].argmax())] == label[p]) for i, p in enumerate(pairs) if p in label]
    out = {"acc": sum(h for _, h in hits) / len(hits) if hits else None, "n": len(hits),
           "chance": 1 / len(names)}
    if exclude:
        held = [h for p, h in hits if p not in exclude]
        out.update({"acc_held_out": sum(held) / len(held) if held else None, "n_held_out": len(held)})
    return out


def _top_counts(w, names) -> dict:
    from collections import Counter

    c = Counter(names[int(i)] for i in w.argmax(1))
    return dict(c.most_common())


def write_figures(metrics: dict, points: dict, folder: Path) -> list[Path]:
    """The eval run's figures from its metrics and points (also used by ``fvtrain-report``)."""
    from fvtrain.evaluation import figures

    written = []
    panels = scatter_panels(metrics.get("alignment") or {}, points)
    if panels:
        written.append(figures.alignment_scatter(panels, folder / "alignment_scatter.png"))
    proto = (metrics.get("alignment") or {}).get("prototypicality") or {}
    if proto.get("by_subtype"):
        vals = {rel: {k: (c[k]["spearman"] if c.get(k) and c[k]["spearman"] is not None else float("nan"))
                      for k in c if k not in ("n", "difference", "bootstrap")}
                for rel, c in proto["by_subtype"].items()}
        written.append(figures.correlation_bars(
            vals, folder / "prototypicality.png",
            "Spearman: log P(B | A, vector) vs gold prototypicality (SemEval-2012)"))
    dec = metrics.get("decoding")
    if dec and dec.get("relations"):
        kinds = [k for k in ("fv", "ffv") if any(k in e for e in dec["relations"].values())]
        ranks = {rel: {k.upper(): e[k]["best_rank"] for k in kinds if e.get(k) and e[k]["best_rank"]}
                 for rel, e in dec["relations"].items()}
        ranks = {r: v for r, v in ranks.items() if v}
        if ranks:
            written.append(figures.rank_bars(ranks, folder / "decoding_ranks.png",
                                             "Best rank of a relation word in the logit lens (1 = top)"))
    return written


def scatter_panels(alignment: dict, points: dict) -> list[dict]:
    """One panel per (analysis, kind): x = the model's similarity, y = the human rating."""
    panels = []

    def add(title, recs, kind, corr, xlabel, ylabel):
        if not recs or kind not in recs[0]:
            return
        c = (corr or {}).get(kind) or {}
        sub = [title, kind.upper()]
        if c.get("spearman") is not None:
            sub.append(f"rho={c['spearman']:+.2f} r={c['pearson']:+.2f} (n={len(recs)})")
        panels.append({"title": "\n".join([" ".join(sub[:2])] + sub[2:]),
                       "x": [r[kind] for r in recs], "y": [r["rating"] for r in recs],
                       "groups": [r.get("comparison_type") or r.get("relation") or "" for r in recs],
                       "xlabel": xlabel, "ylabel": ylabel})

    kinds = ("fv", "ffv")
    rel = points.get("relation") or []
    for k in kinds:
        add("relation level", rel, k, (alignment.get("relation") or {}).get("all"),
            "cosine between relation vectors", "mean human similarity")
    for rep, recs in (points.get("pair") or {}).items():
        for k in kinds:
            add(f"pair level ({rep})", recs, k, ((alignment.get("pair") or {}).get(rep) or {}).get("all"),
                f"cosine between composite {'weights' if rep == 'weights' else 'vectors'}", "human rating")
    proto = points.get("prototypicality") or []
    if proto:
        # Pooled over subtypes after z-scoring within each subtype (the correlations are per subtype).
        z = _zscore_within(proto, ["rating", "none", *kinds])
        m = (alignment.get("prototypicality") or {}).get("mean") or {}
        for k in kinds:
            if proto and k in proto[0]:
                c = m.get(k) or {}
                t = f"prototypicality {k.upper()}"
                if c.get("spearman") is not None:
                    t += f"\nmean per-subtype rho={c['spearman']:+.2f}"
                panels.append({"title": t, "x": [r[k] for r in z], "y": [r["rating"] for r in z],
                               "groups": [""] * len(z), "xlabel": "log P(B | A, vector), z within subtype",
                               "ylabel": "gold rating, z within subtype"})
    return panels


def _zscore_within(records: list[dict], keys: list[str]) -> list[dict]:
    from collections import defaultdict

    import torch

    groups = defaultdict(list)
    for r in records:
        groups[r["relation"]].append(r)
    out = []
    for rs in groups.values():
        z = {}
        for k in keys:
            if k not in rs[0]:
                continue
            t = torch.tensor([r[k] for r in rs], dtype=torch.float64)
            sd = float(t.std()) if len(t) > 1 else 0.0
            z[k] = ((t - t.mean()) / sd).tolist() if sd > 0 else [0.0] * len(t)
        out += [{k: z[k][i] for k in z} for i in range(len(rs))]
    return out


def main() -> None:
    cli.run("eval", lambda cfg: evaluate(cfg))


if __name__ == "__main__":
    main()
