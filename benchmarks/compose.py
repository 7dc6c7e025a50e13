"""Batched basis scoring versus the reference loop, for a 30-vector bank on the embedded model.

    python benchmarks/compose.py                 # random 30-vector bank at layer 6
    python benchmarks/compose.py --bank outputs/extract/.../vectors --reps 5

Scores ``s_i = log P(B | prompt(A), basis_i)`` for every basis vector: batched (the prompt's prefix
once, then the last prompt token and the target tokens as one row per vector, in one forward) and
the reference (one full forward per vector, ``FrozenLM.score``). Prints both times, their ratio
(bar: 5x) and the largest difference between the two, absolute and relative to the largest score.
The tests hold the two paths to 1e-5 on tiny models; here the scores are float32 log-probabilities
of tens of nats computed in batches of different shapes, so round-off alone reaches a few 1e-5
absolute (about 1e-6 relative).
"""

from __future__ import annotations

import argparse
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--bank", default=None, help="a bank folder (default: random vectors)")
    ap.add_argument("--n", type=int, default=30, help="random bank size")
    ap.add_argument("--layer", type=int, default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from fvtrain.composition import load_bank, source_scores, source_scores_loop
    from fvtrain.models import load_model
    from fvtrain.prompts import PromptTemplate, make_batch, zero_shot

    lm = load_model(args.model)
    t = PromptTemplate()
    if args.bank:
        bank = load_bank(args.bank)
        vectors, layer = bank.vectors, bank.layer
    else:
        layer = lm.default_layer() if args.layer is None else args.layer
        g = torch.Generator().manual_seed(0)
        vectors = torch.randn(args.n, lm.d_model, generator=g)
        # Norms like the residual stream's, so the vectors really move the scores.
        probe = make_batch(lm.tokenizer, [zero_shot(t, "hot")], ["cold"], t)
        with torch.no_grad():
            h = lm.model(input_ids=probe.prompt_ids, attention_mask=probe.prompt_mask,
                         output_hidden_states=True).hidden_states[layer + 1][0, -1]
        vectors = vectors / vectors.norm(dim=1, keepdim=True) * float(h.norm())
    N = len(vectors)
    print(f"model {lm.model_id}, {N} basis vectors at layer {layer}, torch threads {torch.get_num_threads()}")

    for a, b in [("hot", "cold"), ("caterpillar", "butterfly")]:
        batch = make_batch(lm.tokenizer, [zero_shot(t, a)], [b], t)
        # Warm-up (allocator, kernels), then the median of reps.
        fast = source_scores(lm, batch, vectors, layer, max_rows=N)
        ref = source_scores_loop(lm, batch, vectors, layer)
        tf, tr = [], []
        for _ in range(args.reps):
            t0 = time.perf_counter()
            fast = source_scores(lm, batch, vectors, layer, max_rows=N)
            tf.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            ref = source_scores_loop(lm, batch, vectors, layer)
            tr.append(time.perf_counter() - t0)
        tf.sort()
        tr.sort()
        f, r = tf[len(tf) // 2], tr[len(tr) // 2]
        diff = float((fast - ref).abs().max())
        rel = diff / float(ref.abs().max())
        print(f"{a}:{b} ({batch.target_ids.shape[1]} target token(s), prompt {batch.prompt_len} tokens): "
              f"batched {f * 1000:8.1f} ms   loop {r * 1000:8.1f} ms   ratio {r / f:5.1f}x (bar: 5x)   "
              f"max |batched - loop| {diff:.2e} (relative {rel:.1e})   score spread {float(ref.std()):.2f} nats")


if __name__ == "__main__":
    main()
