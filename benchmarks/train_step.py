"""FFV training step: the plain path (full forward with the hook) against the cached path
(prefix keys/values computed once, only the last prompt token run with gradient).

    python benchmarks/train_step.py                         # embedded Gemma 3 270M, CPU
    python benchmarks/train_step.py --model tiny-llama --repeats 3

One step = forward with the vectors injected, first-token cross-entropy (+ lambda penalty),
backward into the [relations, d_model] parameter, Adam update; the same batch of prompts drawn
from the built-in relations' train pairs for both paths. Prints absolute times (median over
repeats, the two paths interleaved so that a busy machine slows both alike), the ratio plain /
cached against its bar, the one-off cost of the prefix cache, and the relative difference of
loss and gradient between the paths.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fvtrain.data import builtin_sets  # noqa: E402
from fvtrain.models import load_model  # noqa: E402
from fvtrain.training.module import FFVModule  # noqa: E402
from fvtrain.prompts import PromptTemplate, make_batch, sample_demos, shuffled_icl, zero_shot  # noqa: E402

BARS = {"zero_shot": 3.0, "shuffled_10": 10.0}


def build_batches(lm, n_relations: int, per_relation: int, shots: int, seed: int):
    ds = builtin_sets.load_builtin()
    names = sorted(ds.relations)[:n_relations]
    rng = random.Random(seed)
    t = PromptTemplate()
    zs, sh, ans, rows = [], [], [], []
    for i, name in enumerate(names):
        pairs = list(ds.relations[name].pairs)
        rng.shuffle(pairs)
        train = pairs[:20]
        for p in train[:per_relation]:
            demos = sample_demos(train, p.x, shots, rng)
            zs.append(zero_shot(t, p.x))
            sh.append(shuffled_icl(t, demos, p.x, rng))
            ans.append(list(p.answers))
            rows.append(i)
    meta = {"relation_index": torch.tensor(rows)}
    return names, {
        "zero_shot": make_batch(lm.tokenizer, zs, ans, t, dict(meta)),
        f"shuffled_{shots}": make_batch(lm.tokenizer, sh, ans, t, dict(meta)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--relations", type=int, default=8)
    ap.add_argument("--per-relation", type=int, default=4, help="prompts per relation (batch = both)")
    ap.add_argument("--shots", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    t0 = time.perf_counter()
    lm = load_model(args.model)
    print(f"model {lm.model_id} loaded in {time.perf_counter() - t0:.1f}s; {lm.n_layers} layers, "
          f"d_model {lm.d_model}, {torch.get_num_threads()} threads")
    layer = lm.default_layer() if args.layer is None else args.layer
    names, batches = build_batches(lm, args.relations, args.per_relation, args.shots, args.seed)
    g = torch.Generator().manual_seed(args.seed)
    probe = batches["zero_shot"]
    scale = float(lm.residual_norm(probe.prompt_ids, probe.prompt_mask, layer).mean())
    init = torch.randn(len(names), lm.d_model, generator=g)
    init = init / init.norm(dim=-1, keepdim=True) * scale
    module = FFVModule(names, layer, init, lam=1e-8)
    module.attach_lm(lm)
    with torch.no_grad():  # away from v0 so the penalty has a gradient too
        module.vectors.add_(torch.randn(init.shape, generator=g) * scale / lm.d_model ** 0.5 * 0.1)
    opt = torch.optim.Adam([module.vectors], lr=1e-3)

    def step(prep, impl):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = module.loss(prep, impl=impl)
        loss.backward()
        g = module.vectors.grad.detach().clone()
        opt.step()
        return loss.detach(), g

    print(f"layer {layer}; batch {len(probe)} prompts ({args.relations} relations x {args.per_relation}); "
          f"median of {args.repeats} steps after one warm-up\n")
    header = f"{'prompts':<12} {'tokens':>6} {'plain s/step':>13} {'cached s/step':>14} {'prefix once s':>14} " \
             f"{'ratio':>7} {'bar':>5}  {'loss rel diff':>13} {'grad rel diff':>13}"
    print(header)
    print("-" * len(header))
    ok = True
    for mode, batch in batches.items():
        state = module.vectors.detach().clone()
        t0 = time.perf_counter()
        cached = module.prepare(batch, impl="cached")
        prefix_s = time.perf_counter() - t0
        plain = module.prepare(batch, impl="plain")
        # Same vectors for the equality check: both paths from the same state.
        with torch.no_grad():
            module.vectors.copy_(state)
        lp, gp = step(plain, "plain")
        with torch.no_grad():
            module.vectors.copy_(state)
        lc, gc = step(cached, "cached")
        dl = float((lp - lc).abs() / lp.abs().clamp(min=1e-12))
        dg = float((gp - gc).norm() / gp.norm().clamp(min=1e-30))
        tp, tc = [], []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            step(plain, "plain")
            tp.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            step(cached, "cached")
            tc.append(time.perf_counter() - t0)
        mp, mc = statistics.median(tp), statistics.median(tc)
        ratio = mp / mc
        bar = BARS.get(mode, BARS["shuffled_10"] if mode.startswith("shuffled") else 1.0)
        ok &= ratio >= bar
        print(f"{mode:<12} {batch.prompt_len:>6} {mp:>13.3f} {mc:>14.3f} {prefix_s:>14.3f} {ratio:>6.1f}x "
              f"{bar:>4.0f}x  {dl:>13.2e} {dg:>13.2e}")
    print(f"\nall ratios at or above their bars: {'yes' if ok else 'NO'}")


if __name__ == "__main__":
    main()
