"""``fvtrain-compose``: composite function vectors (CFV) from a basis bank, and analogy solving.

    fvtrain-compose basis.path=outputs/train/2026-01-01/12-00-00          # affine (default)
    fvtrain-compose basis.path=... composition=softmax composition.scheme.temperature=0.5
    fvtrain-compose -m basis.path=... composition=uniform,softmax,top1,affine
    fvtrain-compose basis.path=... analogies.path=/data/sat/test.jsonl

Writes to the run folder (see :mod:`fvtrain.composition.job`): metrics.json, predictions.jsonl,
scores.safetensors, figures/analogy_accuracy.png, config.yaml, and for ``affine``
combiner.safetensors, checkpoints/combiner-best.ckpt and combiner/metrics.csv.
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from fvtrain import cli


def compose(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run composition and analogy evaluation for ``cfg`` (a composed ``compose.yaml``) into ``out``
    (default: the Hydra run folder); prints its tables and returns the metrics."""
    from fvtrain.composition import job, tables
    from fvtrain.runtime import LazyModel

    result = job.run(cfg, Path(out) if out is not None else cli.output_dir(), LazyModel(cfg.model))
    for t in tables.tables(result.metrics):
        t.print()
    print(f"run folder: {result.out}")
    return result.metrics


def main() -> None:
    cli.run("compose", lambda cfg: compose(cfg))


if __name__ == "__main__":
    main()
