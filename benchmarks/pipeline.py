"""Time of each stage of the default study (`fvtrain` with no arguments), slowest first, and the
share of each stage spent in model forwards.

    python benchmarks/pipeline.py [override ...]     # e.g. debug=fast for a seconds-long check

Runs the pipeline in this process into a temporary folder and prints the seconds per stage, the
total, each stage's share, the seconds inside the frozen model (decoder body and unembedding,
timed by forward hooks and around ``vocab_stats``) and the model loads (the main job loads the
model once).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch


class ForwardTimer:
    """Wall time inside the decoder body and the unembedding of every model loaded from now on,
    including the blockwise unembedding of ``FrozenLM.vocab_stats`` (which multiplies by the
    unembedding's weight without calling the module)."""

    def __init__(self) -> None:
        self._sync = lambda: None
        self.seconds = 0.0
        self._depth = 0
        self._t0 = 0.0

    def attach(self, lm) -> None:
        # On a GPU, kernels run after their launch returns: the timer waits for them at each
        # boundary, or it would time launches.
        self._sync = torch.cuda.synchronize if lm.device.type == "cuda" else (lambda: None)
        body = lm.model.get_decoder() if hasattr(lm.model, "get_decoder") else lm.model
        for module in (body, lm.model.get_output_embeddings()):
            module.register_forward_pre_hook(self._start)
            module.register_forward_hook(self._stop)
        vocab_stats = lm.vocab_stats

        def timed_vocab_stats(*args, **kwargs):
            self._start()
            try:
                return vocab_stats(*args, **kwargs)
            finally:
                self._stop()

        lm.vocab_stats = timed_vocab_stats

    def _start(self, *_):
        if self._depth == 0:
            self._sync()
            self._t0 = time.perf_counter()
        self._depth += 1

    def _stop(self, *_):
        self._depth -= 1
        if self._depth == 0:
            self._sync()
            self.seconds += time.perf_counter() - self._t0


def main(argv: list[str]) -> None:
    from fvtrain import runtime
    from fvtrain.composition import job as compose_job
    from fvtrain.config import compose
    from fvtrain.evaluation import job as eval_job
    from fvtrain.extraction import job as extract_job
    from fvtrain.pipeline import pipeline
    from fvtrain.training import job as train_job

    timer = ForwardTimer()
    load = runtime.LazyModel.__call__

    def timed_load(self):
        first = not self.loaded
        lm = load(self)
        if first:
            timer.attach(lm)
        return lm

    runtime.LazyModel.__call__ = timed_load
    in_model: dict[str, float] = {}
    for stage, mod in (("extract", extract_job), ("train", train_job), ("compose", compose_job),
                       ("eval", eval_job)):
        def wrap(run, stage=stage):
            def inner(*args, **kwargs):
                before = timer.seconds
                try:
                    return run(*args, **kwargs)
                finally:
                    in_model[stage] = timer.seconds - before
            return inner
        mod.run = wrap(mod.run)

    out = Path(tempfile.mkdtemp(prefix="fvtrain-pipeline-bench-")) / "run"
    t0 = time.perf_counter()
    cfg = compose("pipeline", argv, output_dir=out)
    res = pipeline(cfg, out)
    total = time.perf_counter() - t0
    secs = res["seconds"]
    print(f"\nstage times of `fvtrain {' '.join(argv)}` (run folder {out}):")
    print(f"  {'stage':8s} {'seconds':>8s} {'share':>6s} {'in model':>9s}")
    for name, s in sorted(secs.items(), key=lambda kv: -kv[1]):
        m = in_model.get(name)
        share = f"{100 * m / s:5.1f}%" if m is not None and s > 0 else "     -"
        print(f"  {name:8s} {s:8.1f} {100 * s / total:5.1f}% {share:>9s}")
    print(f"  {'total':8s} {total:8.1f}  (model loading and set-up included; model loads: {res['model_loads']})")


if __name__ == "__main__":
    main(sys.argv[1:])
