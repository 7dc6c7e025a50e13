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

from pathlib import Path

from omegaconf import DictConfig

from fvtrain import cli


def evaluate(cfg: DictConfig, out: Path | None = None) -> dict:
    """Run alignment and decoding for ``cfg`` (a composed ``eval.yaml``) into ``out`` (default: the
    Hydra run folder); prints its tables and returns the metrics."""
    from fvtrain.evaluation import job, tables
    from fvtrain.runtime import LazyModel

    result = job.run(cfg, Path(out) if out is not None else cli.output_dir(), LazyModel(cfg.model))
    for t in tables.tables(result.metrics):
        t.print()
    for line in tables.skipped_lines(result.metrics):
        print(line)
    print(f"run folder: {result.out}")
    return result.metrics


def main() -> None:
    cli.run("eval", lambda cfg: evaluate(cfg))


if __name__ == "__main__":
    main()
