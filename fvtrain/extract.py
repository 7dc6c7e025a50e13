"""``fvtrain-extract``: function vectors by causal mediation for each selected relation.

    fvtrain-extract                                  # embedded model, built-in relations
    fvtrain-extract data.relations=[antonym] extract.k=5 extract.layer=6
    fvtrain-extract data.path=/data/todd/abstractive model=tiny-llama

Writes to the run folder: vectors/<relation>.safetensors + .json manifests, aie/<relation>.safetensors,
metrics.json, splits.json, config.yaml, figures/aie_heatmap.png and figures/layer_sweep.png.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fvtrain import cli


def extract(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run extraction for ``cfg`` (a composed ``extract.yaml``) into ``out`` (default: the Hydra
    run folder); prints its table and returns the metrics."""
    from fvtrain.extraction import job, tables
    from fvtrain.runtime import LazyModel

    result = job.run(cfg, Path(out) if out is not None else cli.output_dir(), LazyModel(cfg.model))
    for t in tables.tables(result.metrics):
        t.print()
    print(f"run folder: {result.out}")
    return result.metrics


def main() -> None:
    cli.run("extract", lambda cfg: extract(cfg))


if __name__ == "__main__":
    main()
