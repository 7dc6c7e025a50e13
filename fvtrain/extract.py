"""``fvtrain-extract``: function vectors by causal mediation for each selected relation.

    fvtrain-extract                                  # embedded model, built-in relations
    fvtrain-extract data.relations=[antonym] extract.k=5 extract.layer=6
    fvtrain-extract data.path=/data/todd/abstractive model=tiny-llama

Writes to the run folder: vectors/<relation>.safetensors + .json manifests, aie/<relation>.safetensors,
metrics.json, splits.json, config.yaml, figures/aie_heatmap.png and figures/layer_sweep.png.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from fvtrain import cli

log = logging.getLogger("fvtrain.extract")


def extract(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run extraction for ``cfg`` (a composed ``extract.yaml``) into ``out`` (default: the Hydra
    run folder); returns the metrics."""
    from fvtrain.data.splits import save_splits, split_relation
    from fvtrain.evaluation.figures import aie_heatmaps, layer_sweep_curves
    from fvtrain.extraction.job import (check_shots, evaluate_relation, extract_relation,
                                        save_extracted, write_metrics)
    from fvtrain.prompts import PromptTemplate

    out = Path(out) if out is not None else cli.output_dir()
    seed = int(cfg.seed)
    template = PromptTemplate(cfg.prompt.template)
    ex_cfg = cfg.extract
    # Everything that can be checked without the model is checked first.
    geo = cli.check_geometry(cfg, ex_cfg.layer, ex_cfg.k)
    layer = int(ex_cfg.layer) if ex_cfg.layer is not None else max(0, round(geo["n_layers"] / 3))
    ds = cli.load_relations(cfg.data)
    splits = {name: split_relation(rel, int(cfg.data.n_train), cfg.data.get("n_val"), seed)
              for name, rel in ds.relations.items()}
    for s in splits.values():
        check_shots(s, int(ex_cfg.n_shots))
    cli.save_resolved_config(cfg, out)
    save_splits(out / "splits.json", splits, seed=seed, n_train=int(cfg.data.n_train))

    cli.seed_everything(seed)
    lm = cli.load_model(cfg)
    per_relation, aies, tops, sweeps, baselines = {}, {}, {}, {}, {}
    with cli.progress() as bar:
        rel_task = bar.add_task("relations", total=len(splits))
        for name, split in splits.items():
            ex = extract_relation(lm, split, ex_cfg, template, seed, layer, progress=bar)
            ex.metrics = evaluate_relation(lm, split, ex.vector, layer, template,
                                           int(ex_cfg.n_shots), seed, sweep=bool(ex_cfg.layer_sweep))
            ex.metrics["heads"] = [[l, h, a] for l, h, a in ex.heads]
            ex.metrics["layer"] = layer
            save_extracted(out, lm, ex, split, template, ex_cfg, seed)
            per_relation[name] = ex.metrics
            aies[name], tops[name] = ex.aie, ex.heads
            if "layer_sweep" in ex.metrics:
                sweeps[name] = ex.metrics["layer_sweep"]["acc"]
                baselines[name] = ex.metrics["zero_shot"]["none"]["acc"]
            bar.advance(rel_task)
    metrics = write_metrics(out, per_relation, {"model": lm.describe(), "layer": layer})
    aie_heatmaps(aies, out / "figures" / "aie_heatmap.png", tops)
    if sweeps:
        layer_sweep_curves(sweeps, out / "figures" / "layer_sweep.png", baselines, layer)
    rows = [(n, m["zero_shot"]["none"]["acc"], m["zero_shot"]["fv"]["acc"],
             m["shuffled_icl"]["none"]["acc"], m["shuffled_icl"]["fv"]["acc"], m["icl"]["acc"])
            for n, m in per_relation.items()]
    mean = metrics["mean"]
    rows.append(("mean", mean["zero_shot"]["none"], mean["zero_shot"]["fv"],
                 mean["shuffled_icl"]["none"], mean["shuffled_icl"]["fv"], mean["icl"]))
    cli.print_table(f"Function vectors at layer {layer} (test accuracy)",
                    ["relation", "0-shot", "0-shot+FV", "shuffled", "shuffled+FV", "ICL"], rows)
    print(f"run folder: {out}")
    return metrics


def main() -> None:
    cli.run("extract", lambda cfg: extract(cfg))


if __name__ == "__main__":
    main()
