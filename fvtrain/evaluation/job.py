"""The evaluation job: alignment of FV / FFV vectors with human judgments, and logit-lens decoding.

:func:`run` is what ``fvtrain-eval`` and the main job call. The vectors of each kind come from the
``vectors`` argument (the main job passes its extraction and training stage folders) or from
``cfg.vectors.fv`` / ``cfg.vectors.ffv``; each is a run folder or a folder of saved vectors, read
through :mod:`fvtrain.runs`. :func:`write_figures` redraws the figures from a finished run's
``metrics.json`` and ``alignment_points.json`` (also used by the report).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from omegaconf import DictConfig

from fvtrain import runs
from fvtrain.data.select import name_list
from fvtrain.errors import ConfigError
from fvtrain.runtime import ModelLike, obtain, seed_everything
from fvtrain.tracking import tracked

log = logging.getLogger(__name__)

KINDS = ("fv", "ffv")
# Where each kind's vectors are looked for inside a run folder, in order (a training run keeps the
# FVs it extracted itself under extraction/vectors, and names FVs it reused in metrics.json fv_source).
FOLDERS = {"fv": runs.FV_FOLDERS, "ffv": runs.FFV_FOLDERS}
POINTS = "alignment_points.json"


@dataclass
class KindVectors:
    """Every vector of one kind: ``vectors[relation]``, its layer and manifest."""

    kind: str
    folder: Path
    run: Path | None
    vectors: dict
    layers: dict[str, int | None]
    manifests: dict[str, dict]

    @property
    def names(self) -> list[str]:
        return list(self.vectors)

    def splits_file(self) -> Path | None:
        """The ``splits.json`` of the run that made these vectors, if it can be found."""
        return runs.find_splits(self.run, self.folder.parent, self.folder.parent.parent)

    def model_ids(self) -> set:
        return {m.get("model_id") for m in self.manifests.values() if m.get("model_id")}


@dataclass
class EvalResult(runs.StageResult):
    """The evaluation run: ``vectors`` maps each kind to the folder of vectors evaluated; ``points``
    is ``alignment_points.json`` (None when no alignment ran); ``figures`` the figures drawn."""

    vectors: dict[str, Path] = field(default_factory=dict)
    points: Path | None = None
    figures: list[Path] = field(default_factory=list)


# -- vectors ------------------------------------------------------------------------------------

def resolve_vector_folder(path: str | Path, kind: str) -> tuple[Path, Path | None]:
    """``(folder of vectors, run folder or None)`` for ``vectors.<kind>=path``."""
    p = Path(str(path)).expanduser()
    if not p.exists():
        raise ConfigError(f"vectors.{kind}={str(path)!r} does not exist")
    if not p.is_dir():
        raise ConfigError(f"vectors.{kind}={str(path)!r} is a file; give a run folder or a folder "
                          "of vectors (NAME.safetensors + NAME.json)")
    found = runs.find_vector_folder(p, FOLDERS[kind])
    if found is not None and found[0] != p:
        return found
    if kind == "fv" and (p / runs.METRICS).is_file() and (p / runs.BANK).is_dir():
        # A training run that reused FVs names them in its metrics.json.
        from fvtrain.artifacts import read_json

        src = read_json(p / runs.METRICS).get("fv_source")
        if src and Path(src).is_dir() and runs.vector_files(Path(src)):
            return Path(src), Path(src).parent
    if found is not None:
        return found
    raise ConfigError(
        f"vectors.{kind}={str(path)!r} holds no vectors: expected a run folder with "
        f"{' or '.join(s + '/' for s in FOLDERS[kind])} or a folder of NAME.safetensors + NAME.json"
    )


def load_kind(path: str | Path, kind: str, relations: list[str] | None = None) -> KindVectors:
    """The vectors of one kind at ``path``, restricted to ``relations`` when given."""
    folder, run = resolve_vector_folder(path, kind)
    vs = runs.load_vectors(folder, run)
    vectors = vs.as_dict()
    mans = dict(zip(vs.names, vs.manifests))
    layers = {n: int(m["layer"]) if m.get("layer") is not None else None for n, m in mans.items()}
    if relations:
        missing = [r for r in relations if r not in vectors]
        if missing:
            raise ConfigError(f"vectors.relations names {', '.join(map(repr, missing))}, but "
                              f"{folder} has no vector for it (it holds {', '.join(vectors)})")
        vectors = {r: vectors[r] for r in relations}
    other = sorted({str(m.get("kind")) for m in mans.values() if m.get("kind") not in (None, kind)})
    if other:
        log.warning("vectors.%s=%s holds vectors of kind %s; they are reported as %s", kind, path,
                    ", ".join(other), kind.upper())
    return KindVectors(kind, folder, run, vectors, layers, mans)


def vector_paths(cfg: DictConfig, vectors: Mapping[str, Path | str | None] | None = None) -> dict[str, Any]:
    """The path of each kind to evaluate: ``vectors[kind]``, else ``cfg.vectors.<kind>``."""
    given = dict(vectors or {})
    unknown = [k for k in given if k not in KINDS]
    if unknown:
        raise ValueError(f"vectors may name {', '.join(KINDS)}, got {unknown}")
    paths = {k: given.get(k) or cfg.vectors[k] for k in KINDS}
    return {k: p for k, p in paths.items() if p}


def load_kinds(cfg: DictConfig, vectors: Mapping[str, Path | str | None] | None = None
               ) -> dict[str, KindVectors]:
    rels = name_list(cfg.vectors.relations)
    sets = {k: load_kind(p, k, rels) for k, p in vector_paths(cfg, vectors).items()}
    if not sets:
        raise ConfigError(
            "no vectors to evaluate: set vectors.fv=<extraction run folder> and/or "
            "vectors.ffv=<training run folder> (or folders of saved vectors)"
        )
    if cfg.vectors.check_model:
        for k, s in sets.items():
            ids = s.model_ids()
            if ids and ids != {str(cfg.model.name)}:
                raise ConfigError(
                    f"the {k.upper()} vectors in {s.folder} were made with model {', '.join(sorted(ids))}, "
                    f"but this run loads {cfg.model.name!r}; run with model={sorted(ids)[0]} "
                    "(or vectors.check_model=false if they are the same weights)"
                )
    return sets


def load_judgments(j_cfg: DictConfig):
    from fvtrain.data.readers import read

    if not j_cfg.path:
        return None
    ds = read(j_cfg.path, j_cfg.format, name_list(j_cfg.relations))
    if not ds.judgments and not ds.prototypicality:
        raise ConfigError(
            f"judgments.path={j_cfg.path!r} holds no human judgments ({ds.format} format: "
            f"{len(ds.relations)} relation(s), 0 similarity ratings, 0 prototypicality ratings); give "
            "a relational-similarity CSV (relsim layout) or a SemEval-2012 Task 2 folder"
        )
    return ds


def relation_sources(sets: dict[str, KindVectors], ds) -> dict[str, dict]:
    """Relation metadata (titles, definitions) for deriving relation words: from the judgments'
    data set, else from the data set named in the vectors' run config."""
    from omegaconf import OmegaConf

    from fvtrain.data.readers import read
    from fvtrain.data.select import load_relations

    names = {n for s in sets.values() for n in s.names}
    out: dict[str, dict] = {}
    if ds is not None:
        out.update({n: dict(r.source) for n, r in ds.relations.items() if n in names})
    for s in sets.values():
        if names <= set(out) or s.run is None or not (s.run / runs.CONFIG).is_file():
            continue
        try:
            data_cfg = OmegaConf.load(s.run / runs.CONFIG).data
            if not data_cfg.get("sources") and str(data_cfg.path) == "builtin":
                continue
            # data.sources too (the paper's bank): every relation keeps its first source's metadata
            data = load_relations(data_cfg) if data_cfg.get("sources") else read(data_cfg.path)
            out.update({n: dict(r.source) for n, r in data.relations.items() if n in names and n not in out})
        except Exception as err:  # noqa: BLE001 - only used to name relations; never fatal
            log.info("relation titles not read from %s: %s", s.run, err)
    return out


# -- the job ------------------------------------------------------------------------------------

@runs.owns_folder
@tracked("eval")  # one run per job in each logger of cfg.logger: config, metrics, tables, figures
def run(cfg: DictConfig, out: Path, lm: ModelLike,
        vectors: Mapping[str, Path | str | None] | None = None) -> EvalResult:
    """Alignment and decoding of the FV / FFV vectors into ``out`` (``cfg``: a composed ``eval.yaml``
    or the main job's config). ``vectors`` (``{"fv": ..., "ffv": ...}``) overrides ``cfg.vectors``
    per kind. Everything that can be checked without the model is checked before ``lm`` is obtained;
    ``cfg`` is never modified."""
    from fvtrain.console import progress
    from fvtrain.evaluation import alignment as al
    from fvtrain.evaluation import decoding as dec
    from fvtrain.preflight import check_config, check_geometry
    from fvtrain.prompts import PromptTemplate, set_bos_policy

    out = Path(out)
    seed = int(cfg.seed)
    a_cfg, d_cfg = cfg.alignment, cfg.decoding
    template = PromptTemplate(cfg.prompt.template)
    n_boot, ci = int(a_cfg.n_boot), float(a_cfg.ci)
    sets = load_kinds(cfg, vectors)
    kinds = list(sets)
    check_config(cfg)
    geo = check_geometry(cfg, None)
    for k, s in sets.items():
        bad = {n: l for n, l in s.layers.items() if l is None or not 0 <= l < geo["n_layers"]}
        if bad:
            raise ConfigError(f"{k.upper()} vector(s) {', '.join(bad)} in {s.folder} have no valid layer "
                              f"for {cfg.model.name} ({geo['n_layers']} layers)")
    ds = load_judgments(cfg.judgments)
    user_words = dec.load_words_file(d_cfg.words) if d_cfg.words else None
    vecs = {k: s.vectors for k, s in sets.items()}
    held_out = _train_pairs(sets) if a_cfg.held_out else None
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
    runs.save_config(cfg, out)
    seed_everything(seed)
    lm = obtain(lm)
    set_bos_policy(lm.tokenizer, str(cfg.prompt.get("bos", "auto")))  # prompt.bos for every prompt here
    size = next(iter(next(iter(vecs.values())).values())).numel()
    if lm.d_model != size:
        raise ConfigError(f"the vectors have size {size}, but {lm.model_id} has d_model {lm.d_model}: "
                          "they were made for another model")

    with progress() as bar:
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
                alignment["pair"], points["pair"] = _pair_level(lm, a_cfg, sets, ds, pairs_all, template,
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

    from fvtrain.artifacts import write_json

    metrics = {
        "model": lm.describe(),
        "vectors": {k: {"path": str(s.folder), "n": len(s.vectors), "relations": s.names,
                        "layers": sorted({l for l in s.layers.values()})} for k, s in sets.items()},
        "alignment": alignment,
    }
    if decoding is not None:
        metrics["decoding"] = decoding
    metrics = runs.write_metrics(out, "eval", metrics)
    points_file = None
    if points:
        points_file = out / POINTS
        write_json(points_file, points)
    written = write_figures(metrics, points, out / runs.FIGURES)
    for p in written:
        log.info("figure: %s", p)
    return EvalResult("eval", out, metrics, vectors={k: s.folder for k, s in sets.items()},
                      points=points_file, figures=written)


def _train_pairs(sets: dict[str, KindVectors]) -> tuple[set, list[str]] | None:
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


def _pair_level(lm, a_cfg, sets, ds, pairs_all, template, bar, seed, exclude=None) -> tuple[dict, dict]:
    import torch

    from fvtrain.evaluation import alignment as al

    reps_wanted = name_list(a_cfg.representations) or ["weights"]
    bad = [r for r in reps_wanted if r not in ("weights", "cfv")]
    if bad:
        raise ConfigError(f"alignment.representations may list weights and cfv, got {bad}")
    pairs = al.sample_pairs(pairs_all, a_cfg.max_pairs, seed)
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


# -- figures ------------------------------------------------------------------------------------

def write_figures(metrics: Mapping, points: Mapping, folder: Path) -> list[Path]:
    """The eval run's figures from its metrics and points (also used by the report)."""
    from fvtrain.reporting import figures

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
        kinds = [k for k in KINDS if any(k in e for e in dec["relations"].values())]
        ranks = {rel: {k.upper(): e[k]["best_rank"] for k in kinds if e.get(k) and e[k]["best_rank"]}
                 for rel, e in dec["relations"].items()}
        ranks = {r: v for r, v in ranks.items() if v}
        if ranks:
            written.append(figures.rank_bars(ranks, folder / "decoding_ranks.png",
                                             "Best rank of a relation word in the logit lens (1 = top)"))
    return written


def scatter_panels(alignment: Mapping, points: Mapping) -> list[dict]:
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

    rel = points.get("relation") or []
    for k in KINDS:
        add("relation level", rel, k, (alignment.get("relation") or {}).get("all"),
            "cosine between relation vectors", "mean human similarity")
    for rep, recs in (points.get("pair") or {}).items():
        for k in KINDS:
            add(f"pair level ({rep})", recs, k, ((alignment.get("pair") or {}).get(rep) or {}).get("all"),
                f"cosine between composite {'weights' if rep == 'weights' else 'vectors'}", "human rating")
    proto = points.get("prototypicality") or []
    if proto:
        # Pooled over subtypes after z-scoring within each subtype (the correlations are per subtype).
        z = _zscore_within(proto, ["rating", "none", *KINDS])
        m = (alignment.get("prototypicality") or {}).get("mean") or {}
        for k in KINDS:
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
