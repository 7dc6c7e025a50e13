"""Time of each stage of the default study (`fvtrain` with no arguments), slowest first.

    python benchmarks/pipeline.py [override ...]     # e.g. debug=fast for a seconds-long check

Runs the pipeline in this process into a temporary folder (or $FVTRAIN_OUTPUT_DIR) and prints the
seconds per stage, the total, and each stage's share, so the slowest stage is visible.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path


def main(argv: list[str]) -> None:
    from fvtrain.cli import compose
    from fvtrain.pipeline import pipeline

    out = Path(tempfile.mkdtemp(prefix="fvtrain-pipeline-bench-"))
    t0 = time.perf_counter()
    cfg = compose("pipeline", argv, output_dir=out)
    res = pipeline(cfg)
    total = time.perf_counter() - t0
    secs = res["seconds"]
    print(f"\nstage times of `fvtrain {' '.join(argv)}` (run folder {out}):")
    for name, s in sorted(secs.items(), key=lambda kv: -kv[1]):
        print(f"  {name:8s} {s:8.1f} s  {100 * s / total:5.1f}%")
    print(f"  {'total':8s} {total:8.1f} s  (model loading and set-up included)")


if __name__ == "__main__":
    main(sys.argv[1:])
