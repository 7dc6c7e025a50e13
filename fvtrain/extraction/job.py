"""The extraction job: for each relation, mean activations, AIE, top-k heads, FV, evaluation.

:func:`run` is what ``fvtrain-extract`` and the main job call; :func:`extract_relation` is also used
by training runs that extract their own FVs.
"""

from __future__ import annotations

import logging
import math
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch
from omegaconf import DictConfig

from fvtrain import __version__
from fvtrain import runs
from fvtrain.artifacts import file_stem, save_tensors, save_vector
from fvtrain.data.select import name_list
from fvtrain.data.splits import Split, split_hash
from fvtrain.evaluation.relation import completion, completion_methods, first_token_outcomes, layer_sweep
from fvtrain.extraction.activations import mean_head_activations
from fvtrain.extraction.aie import aie_fast, aie_reference
from fvtrain.extraction.fv import FV_BIAS, FV_VARIANTS, centred_function_vector, function_vector, top_heads
from fvtrain.models.wrapper import FrozenLM
from fvtrain.prompts import (
    BOS_POLICIES,
    PromptTemplate,
    bos_policy,
    icl,
    make_batch,
    sample_demos,
    set_bos_policy,
    shuffled_icl,
    zero_shot,
)
from fvtrain.runtime import ModelLike, obtain, seed_everything
from fvtrain.tracking import tracked

log = logging.getLogger(__name__)

MIN_FILTER_CHUNK = 4  # the smallest batch of candidates the ICL filter runs (fewer is mostly overhead)


@dataclass
class Extracted:
    relation: str
    vector: torch.Tensor
    heads: list[tuple[int, int, float]]
    aie: torch.Tensor  # [L, H], mean over corrupted prompts
    mean: torch.Tensor  # [L, H, head_dim]
    layer: int
    metrics: dict = field(default_factory=dict)
    n_corrupt_used: int = 0
    baseline: torch.Tensor | None = None  # [L, H, head_dim] baseline means of a centred FV


def check_shots(split: Split, n_shots: int) -> None:
    """Fail before any model work when a relation's train split cannot supply the demonstrations."""
    if len(split.train) < n_shots + 1:
        raise ValueError(
            f"relation {split.relation!r}: {n_shots}-shot prompts need at least {n_shots + 1} "
            f"train pairs (demonstrations plus a query), but the train split has "
            f"{len(split.train)}; lower extract.n_shots or raise data.n_train"
        )


def check_options(cfg: DictConfig) -> None:
    """Refuse an unknown ``prompt.bos``, ``extract.fv_bias``, ``fv_variant`` or ``heads`` early."""
    from fvtrain.errors import ConfigError

    for key, value, allowed in (("prompt.bos", cfg.prompt.get("bos", "auto"), BOS_POLICIES),
                                ("extract.fv_bias", cfg.extract.get("fv_bias", "none"), FV_BIAS),
                                ("extract.fv_variant", cfg.extract.get("fv_variant", "plain"), FV_VARIANTS),
                                ("extract.heads", cfg.extract.get("heads", "per_relation"),
                                 ("per_relation", "universal"))):
        if value not in allowed:
            raise ConfigError(f"{key}={value!r}: it must be one of {', '.join(allowed)}")


def solved(lm: FrozenLM, batch) -> torch.Tensor:
    """``[B]`` whether the top token after each prompt starts an accepted answer (what
    ``lm.score(batch).correct`` says, from the prompt columns alone)."""
    with torch.no_grad():
        hidden = lm.body(batch.prompt_ids, batch.prompt_mask).last_hidden_state[:, -1]
    return first_token_outcomes(lm, hidden, batch)[1][:, 0]


def aie_rows(lm: FrozenLM, max_rows, batch) -> int:
    """``extract.max_rows`` as a number: ``auto`` sizes it from the device's free memory."""
    rows = lm.resolve_rows(max_rows, batch.prompt_ids.shape[1])
    if str(max_rows) == "auto":
        log.info("extract.max_rows=auto: %d rows per forward (%d-token prompts, %s)", rows,
                 batch.prompt_ids.shape[1], lm.device)
    return rows


def first_solved(cands: list, n: int, batch_size: int, judge) -> list:
    """The first ``n`` candidates, in order, that ``judge`` (a chunk -> one bool each) passes.

    Chunks are never larger than the number still missing (nor than ``batch_size``, nor smaller
    than ``MIN_FILTER_CHUNK``): a candidate after the ``n``-th solved one would be run for nothing.
    """
    ok: list[bool] = []
    while len(ok) < len(cands) and sum(ok) < n:
        size = min(batch_size, max(MIN_FILTER_CHUNK, n - sum(ok)))
        ok += judge(cands[len(ok) : len(ok) + size])
    return [c for c, good in zip(cands, ok) if good][:n]


def baseline_mean(lm: FrozenLM, cfg: DictConfig, template: PromptTemplate, demos: list,
                  queries: list, key: str) -> torch.Tensor | None:
    """Head means over the baseline twins of the clean prompts (None for ``fv_variant=plain``).

    ``centred``: each clean prompt with its demonstration answers permuted (the format without
    the relation); ``centred_zero_shot``: the query alone. The permutations draw from their own
    seeded stream, so the clean prompts, AIE and plain FV are the same under every variant.
    """
    variant = str(cfg.get("fv_variant", "plain"))
    if variant == "plain":
        return None
    if variant == "centred":
        rng = random.Random(f"{key}-baseline")
        prompts = [shuffled_icl(template, d, q.x, rng) for d, q in zip(demos, queries)]
    elif variant == "centred_zero_shot":
        prompts = [zero_shot(template, q.x) for q in queries]
    else:
        raise ValueError(f"extract.fv_variant={variant!r}: it must be one of {', '.join(FV_VARIANTS)}")
    return mean_head_activations(lm, prompts, batch_size=int(cfg.batch_size))


def extract_relation(
    lm: FrozenLM,
    split: Split,
    cfg: DictConfig,
    template: PromptTemplate,
    seed: int,
    layer: int,
    progress=None,
    heads: list[tuple[int, int, float]] | None = None,
) -> Extracted:
    """Mean activations, AIE, top-k heads and FV of one relation (train split only). With
    ``heads`` (the universal set, :func:`universal_heads`) the AIE is skipped and the FV is built
    from this relation's mean activations at those heads."""
    rng = random.Random(f"{seed}-{split.relation}")
    train = list(split.train)
    n_shots = int(cfg.n_shots)
    check_shots(split, n_shots)
    task = progress.add_task(f"{split.relation}: mean activations", total=int(cfg.n_prompts)) \
        if progress else None

    def advance(n):
        if progress:
            progress.advance(task, n)

    # 1. Mean head activations over clean ICL prompts.
    queries = [rng.choice(train) for _ in range(int(cfg.n_prompts))]
    demos = [sample_demos(train, q.x, n_shots, rng) for q in queries]
    clean = [icl(template, d, q.x) for d, q in zip(demos, queries)]
    mean = mean_head_activations(lm, clean, batch_size=int(cfg.batch_size), progress=advance)
    baseline = baseline_mean(lm, cfg, template, demos, queries, f"{seed}-{split.relation}")

    def make_fv(heads):
        bias = str(cfg.get("fv_bias", "none"))
        if baseline is None:
            return function_vector(lm, mean, heads, bias=bias)
        return centred_function_vector(lm, mean, baseline, heads, bias=bias)
    if heads is not None:
        return Extracted(split.relation, make_fv(heads), list(heads), torch.full(mean.shape[:2], math.nan),
                         mean, layer, baseline=baseline)

    # 2. Shuffled-ICL prompts for the AIE; optionally only queries the model solves with clean ICL.
    n_corrupt = int(cfg.n_corrupt)
    n_cand = n_corrupt * (3 if cfg.filter_correct else 1)
    cands = []
    for i in range(n_cand):
        q = train[i % len(train)] if i < len(train) else rng.choice(train)
        demos = sample_demos(train, q.x, n_shots, rng)
        cands.append((q, icl(template, demos, q.x), shuffled_icl(template, demos, q.x, rng)))
    if cfg.filter_correct:
        def judge(chunk):
            b = make_batch(lm.tokenizer, [c[1] for c in chunk], [c[0].answers for c in chunk], template)
            return solved(lm, b).tolist()
        kept = first_solved(cands, n_corrupt, int(cfg.batch_size), judge)
        if not kept:
            log.warning("%s: the model solves none of %d clean ICL prompts; using unfiltered "
                        "shuffled prompts for the AIE", split.relation, len(cands))
            kept = cands[:n_corrupt]
        elif len(kept) < n_corrupt:
            log.warning("%s: only %d of %d candidate queries are solved with clean ICL; AIE uses %d "
                        "prompts", split.relation, len(kept), len(cands), len(kept))
    else:
        kept = cands[:n_corrupt]
    batch = make_batch(lm.tokenizer, [c[2] for c in kept], [c[0].answers for c in kept], template)

    # 3. AIE of every head, top-k heads, FV.
    if progress:
        progress.update(task, description=f"{split.relation}: AIE over heads", completed=0,
                        total=len(kept) * lm.n_layers * lm.n_heads)
    if cfg.aie_impl == "reference":
        effects, _ = aie_reference(lm, batch, mean, progress=advance)
    elif cfg.aie_impl == "fast":
        effects, _ = aie_fast(lm, batch, mean, max_rows=aie_rows(lm, cfg.max_rows, batch), progress=advance,
                              layer_start=bool(cfg.layer_start))
    else:
        raise ValueError(f"extract.aie_impl must be 'fast' or 'reference', got {cfg.aie_impl!r}")
    aie = effects.mean(0)
    heads = top_heads(aie, int(cfg.k))
    fv = make_fv(heads)
    if progress:
        progress.update(task, description=f"{split.relation}: done")
    return Extracted(split.relation, fv, heads, aie, mean, layer, n_corrupt_used=len(kept), baseline=baseline)


def universal_heads(aies: dict[str, torch.Tensor], k: int) -> list[tuple[int, int, float]]:
    """Todd et al.'s universal head set: the top ``k`` heads by AIE averaged over relations."""
    return top_heads(torch.stack(list(aies.values())).mean(0), k)


def evaluate_relation(
    lm: FrozenLM,
    split: Split,
    vector: torch.Tensor | None,
    layer: int,
    template: PromptTemplate,
    n_shots: int,
    seed: int,
    sweep: bool = True,
    pairs: str = "test",
    batch_size: int = 32,
    shuffled: bool = True,
) -> dict:
    """Zero-shot and (``shuffled``) shuffled-ICL accuracy without/with the vector, clean ICL, layer
    sweep. The shuffled prompts are drawn either way, so the other prompts never depend on it."""
    rng = random.Random(f"{seed}-{split.relation}-eval")
    test = list(split[pairs])
    train = list(split.train)
    answers = [p.answers for p in test]
    zs = [zero_shot(template, p.x) for p in test]
    demos = [sample_demos(train, p.x, n_shots, rng) for p in test]
    shuf = [shuffled_icl(template, d, p.x, rng) for d, p in zip(demos, test)]
    clean = [icl(template, d, p.x) for d, p in zip(demos, test)]
    # Without and with the vector in one pass per chunk (they share every token but the last).
    methods = {"none": None} if vector is None else {"none": None, "fv": vector}
    out = {
        "zero_shot": completion_methods(lm, zs, answers, methods, layer, batch_size),
        "shuffled_icl": completion_methods(lm, shuf, answers, methods, layer, batch_size) if shuffled else {},
        "icl": completion(lm, clean, answers, batch_size=batch_size),
        "n": len(test),
    }
    if vector is not None:
        if sweep:
            out["layer_sweep"] = layer_sweep(lm, zs, answers, vector)
    return out


def manifest(lm: FrozenLM, ex: Extracted, split: Split, template: PromptTemplate, cfg: DictConfig,
             seed: int, kind: str = "fv", source: dict | None = None) -> dict:
    return {
        "kind": kind,
        "relation": ex.relation,
        "model_id": lm.model_id,
        "model_revision": lm.source.revision,
        "model_type": lm.model_type,
        "n_layers": lm.n_layers,
        "layer": ex.layer,
        "heads": [{"layer": l, "head": h, "aie": a} for l, h, a in ex.heads],
        "k": len(ex.heads),
        "template": template.template,
        "prompt_bos": bos_policy(lm.tokenizer),
        "fv_bias": str(cfg.get("fv_bias", "none")),
        "fv_variant": str(cfg.get("fv_variant", "plain")),
        "n_shots": int(cfg.n_shots),
        "n_prompts": int(cfg.n_prompts),
        "n_corrupt": ex.n_corrupt_used,
        "split_hash": split_hash(split),
        "seed": seed,
        "metrics": ex.metrics,
        "source": source or {},  # where the relation's pairs come from (data.sources: each of them)
        "fvtrain_version": __version__,
    }


def save_extracted(out: Path, lm: FrozenLM, ex: Extracted, split: Split, template: PromptTemplate,
                   cfg: DictConfig, seed: int, source: dict | None = None) -> None:
    save_vector(out / runs.VECTORS, ex.relation, ex.vector,
                manifest(lm, ex, split, template, cfg, seed, source=source))
    # Relations whose FV uses the universal heads have no AIE of their own: only their means.
    tensors = {"mean": ex.mean} if bool(torch.isnan(ex.aie).all()) else {"aie": ex.aie, "mean": ex.mean}
    if ex.baseline is not None:
        tensors["baseline_mean"] = ex.baseline  # a centred FV = plain FV(mean) - FV(baseline_mean)
    save_tensors(out / runs.AIE / f"{file_stem(ex.relation)}.safetensors", tensors)


def summarise(per_relation: dict[str, dict]) -> dict:
    """Means over relations of each accuracy, under the same keys."""
    def mean(xs):
        xs = [x for x in xs if x is not None]
        return sum(xs) / len(xs) if xs else None

    rels = list(per_relation.values())
    out = {"n_relations": len(rels)}
    for mode in ("zero_shot", "shuffled_icl"):
        out[mode] = {m: mean([r[mode][m]["acc"] for r in rels if m in r[mode]])
                     for m in ("none", "fv")}
    out["icl"] = mean([r["icl"]["acc"] for r in rels])
    out["intervals"] = intervals(per_relation)
    return out


def intervals(per_relation: dict[str, dict]) -> dict:
    """Bootstrap intervals of the means over relations (items resampled within each relation) and
    the paired differences FV - none, from the per-item outcomes :func:`completion` keeps."""
    from fvtrain.evaluation import stats

    out: dict = {}
    for mode in ("zero_shot", "shuffled_icl"):
        rels = [r for r in per_relation.values() if all("correct" in r[mode].get(m, {}) for m in ("none", "fv"))]
        if not rels:
            continue
        groups = [i for i, r in enumerate(rels) for _ in r[mode]["none"]["correct"]]
        res = stats.compare({m: [c for r in rels for c in r[mode][m]["correct"]] for m in ("none", "fv")},
                            groups, [("none", "fv")])
        out[mode] = {"mean": {m: v["acc_ci"] for m, v in res["methods"].items()}, **res["differences"]}
    icl = [r["icl"] for r in per_relation.values() if "correct" in r["icl"]]
    if icl:
        out["icl"] = {"mean": stats.mean_ci([c for r in icl for c in r["correct"]],
                                            [i for i, r in enumerate(icl) for _ in r["correct"]])}
    return out


def write_metrics(out: Path, per_relation: dict, extra: dict | None = None) -> dict:
    return runs.write_metrics(out, "extract", {"relations": per_relation, "mean": summarise(per_relation),
                                               **(extra or {})})


@dataclass
class ExtractResult(runs.StageResult):
    """The extraction run: ``vectors`` is the folder of FVs, ``layer`` their injection layer."""

    vectors: Path = Path()
    layer: int = 0


@runs.owns_folder
@tracked("extract")  # one run per job in each logger of cfg.logger: config, metrics, tables, figures
def run(cfg: DictConfig, out: Path, lm: ModelLike) -> ExtractResult:
    """FVs of every relation of ``cfg.data`` into ``out`` (``cfg`` is a composed ``extract.yaml``).

    Everything that can be checked without the model is checked before ``lm`` is obtained.
    """
    from fvtrain.console import progress
    from fvtrain.data.select import load_relations
    from fvtrain.data.splits import configured_split, save_splits
    from fvtrain.preflight import check_config, check_geometry
    from fvtrain.reporting.figures import aie_heatmaps, layer_sweep_curves

    out = Path(out)
    seed = int(cfg.seed)
    template = PromptTemplate(cfg.prompt.template)
    ex_cfg = cfg.extract
    check_config(cfg)
    check_options(cfg)
    geo = check_geometry(cfg, ex_cfg.layer, ex_cfg.k)
    layer = int(ex_cfg.layer) if ex_cfg.layer is not None else max(0, round(geo["n_layers"] / 3))
    ds = load_relations(cfg.data)
    splits = {name: configured_split(rel, int(cfg.data.n_train), cfg.data.get("n_val"), seed,
                                     cfg.data.get("cv_folds"), cfg.data.get("cv_fold"))
              for name, rel in ds.relations.items()}
    for s in splits.values():
        check_shots(s, int(ex_cfg.n_shots))
    runs.save_config(cfg, out)
    save_splits(out / runs.SPLITS, splits, seed=seed, n_train=int(cfg.data.n_train))

    seed_everything(seed)
    lm = obtain(lm)
    set_bos_policy(lm.tokenizer, str(cfg.prompt.get("bos", "auto")))
    per_relation, aies, tops, sweeps, baselines = {}, {}, {}, {}, {}
    universal, head_rels, first = None, [], {}
    with progress() as bar:
        if ex_cfg.get("heads", "per_relation") == "universal":
            # AIE on the head relations only; every relation's FV then uses their top-k heads.
            head_rels = [r for r in (name_list(ex_cfg.get("head_relations")) or list(splits)) if r in splits]
            task = bar.add_task("AIE of the head relations", total=len(head_rels))
            for name in head_rels:
                first[name] = extract_relation(lm, splits[name], ex_cfg, template, seed, layer, progress=bar)
                aies[name] = first[name].aie
                bar.advance(task)
            universal = universal_heads(aies, int(ex_cfg.k))
            tops = {n: universal for n in aies}
            log.info("universal heads (top %d by mean AIE over %d relations): %s", int(ex_cfg.k),
                     len(head_rels), [(l, h) for l, h, _ in universal])
        rel_task = bar.add_task("relations", total=len(splits))
        for name, split in splits.items():
            if name in first:  # its means are the same seeded prompts' as in the AIE pass
                ex = first.pop(name)
                ex.heads = list(universal)
                bias = str(ex_cfg.get("fv_bias", "none"))
                ex.vector = function_vector(lm, ex.mean, ex.heads, bias=bias) if ex.baseline is None else \
                    centred_function_vector(lm, ex.mean, ex.baseline, ex.heads, bias=bias)
            else:
                ex = extract_relation(lm, split, ex_cfg, template, seed, layer, progress=bar, heads=universal)
            ex.metrics = evaluate_relation(lm, split, ex.vector, layer, template,
                                           int(ex_cfg.n_shots), seed, sweep=bool(ex_cfg.layer_sweep),
                                           shuffled=bool(ex_cfg.get("eval_shuffled", True)))
            ex.metrics["heads"] = [[l, h, a] for l, h, a in ex.heads]
            ex.metrics["layer"] = layer
            save_extracted(out, lm, ex, split, template, ex_cfg, seed, ds.relations[name].source)
            per_relation[name] = ex.metrics
            if universal is None:
                aies[name], tops[name] = ex.aie, ex.heads
            if "layer_sweep" in ex.metrics:
                sweeps[name] = ex.metrics["layer_sweep"]["acc"]
                baselines[name] = ex.metrics["zero_shot"]["none"]["acc"]
            bar.advance(rel_task)
    extra = {"model": lm.describe(), "layer": layer}
    if universal is not None:
        extra["universal_heads"] = {"heads": [[l, h, a] for l, h, a in universal], "relations": head_rels}
    metrics = write_metrics(out, per_relation, extra)
    figures = out / runs.FIGURES
    aie_heatmaps(aies, figures / "aie_heatmap.png", tops)
    if sweeps:
        layer_sweep_curves(sweeps, figures / "layer_sweep.png", baselines, layer)
    return ExtractResult("extract", out, metrics, vectors=out / runs.VECTORS, layer=layer)
