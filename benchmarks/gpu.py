"""AIE and FFV-training throughput on a GPU.

    python benchmarks/gpu.py                                   # embedded model on cuda:0
    python benchmarks/gpu.py --model meta-llama/Llama-3.2-1B --dtype bfloat16 --max-rows 1024
    python benchmarks/gpu.py --device cpu --model tiny-llama   # the script itself, anywhere

Without a CUDA device (and no --device cpu) it says so and exits 0: CI never needs a GPU. On the
device it measures, after one warm-up each:

- AIE: the fast path (cached prefix, heads batched as rows) over shuffled 10-shot prompts,
  as patched heads per second and seconds per prompt for every head of the model;
- FFV training: cached-path steps (forward, loss, backward, Adam) on zero-shot and shuffled
  10-shot batches, as steps and prompts per second, with the one-off prefix-cache time;
- peak device memory.
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
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device, repeats: int) -> float:
    fn()  # warm-up: kernels, allocator, autotuning
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--relation", default="antonym")
    ap.add_argument("--n-corrupt", type=int, default=25, help="shuffled prompts for the AIE")
    ap.add_argument("--max-rows", type=int, default=512, help="last-token rows per AIE forward")
    ap.add_argument("--relations", type=int, default=8, help="relations in the training batch")
    ap.add_argument("--per-relation", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing to measure. This benchmark reports GPU "
              "throughput; on CPU use benchmarks/aie.py and benchmarks/train_step.py "
              "(or run this script with --device cpu).")
        return 0

    from train_step import build_batches

    from fvtrain.data.readers import read
    from fvtrain.data.splits import split_relation
    from fvtrain.extraction import aie_fast
    from fvtrain.models import load_model
    from fvtrain.training.module import FFVModule
    from fvtrain.prompts import PromptTemplate, make_batch, sample_icl_prompts

    t0 = time.perf_counter()
    lm = load_model(args.model, dtype=args.dtype, device=str(device))
    load_s = time.perf_counter() - t0
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device {device} ({name}); model {lm.model_id} {args.dtype}, {lm.n_layers} layers x "
          f"{lm.n_heads} heads, d_model {lm.d_model}; loaded in {load_s:.1f}s\n")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # -- AIE ---------------------------------------------------------------------------------
    rng = random.Random(args.seed)
    t = PromptTemplate()
    split = split_relation(read("builtin", relations=[args.relation]).relations[args.relation], seed=args.seed)
    train = list(split.train)
    corrupt = sample_icl_prompts(t, train, [rng.choice(train) for _ in range(args.n_corrupt)], 10, rng,
                                 shuffled=True)
    batch = make_batch(lm.tokenizer, [p for p, _ in corrupt], [a for _, a in corrupt], t)
    mean = torch.randn(lm.n_layers, lm.n_heads, lm.head_dim, generator=torch.Generator().manual_seed(0))
    aie_s = _timed(lambda: aie_fast(lm, batch, mean, max_rows=args.max_rows), device, args.repeats)
    n_heads = lm.n_layers * lm.n_heads
    print(f"AIE (fast path, max_rows {args.max_rows}): {args.n_corrupt} prompts x {n_heads} heads, "
          f"T = {batch.prompt_len} tokens")
    print(f"  {aie_s:8.3f} s   {args.n_corrupt * n_heads / aie_s:10.0f} patched heads/s   "
          f"{aie_s / args.n_corrupt:7.3f} s per prompt (all heads)\n")

    # -- FFV training ------------------------------------------------------------------------
    layer = lm.default_layer()
    names, batches = build_batches(lm, args.relations, args.per_relation, 10, args.seed)
    module = FFVModule(names, layer, torch.zeros(len(names), lm.d_model), lam=0.0)
    module.attach_lm(lm)
    module.to(device)
    opt = torch.optim.Adam([module.vectors], lr=1e-3)

    def step(prep):
        opt.zero_grad(set_to_none=True)
        loss, _, _ = module.loss(prep, impl="cached")
        loss.backward()
        opt.step()

    print(f"FFV training (cached path), layer {layer}, batch {args.relations} relations x "
          f"{args.per_relation} prompts")
    for mode, b in batches.items():
        _sync(device)
        t0 = time.perf_counter()
        prep = module.prepare(b, impl="cached")
        _sync(device)
        prefix_s = time.perf_counter() - t0
        s = _timed(lambda: step(prep), device, args.repeats)
        print(f"  {mode:<12} T = {b.prompt_len:>3}: {s:8.4f} s/step   {1 / s:8.1f} steps/s   "
              f"{len(b) / s:8.0f} prompts/s   prefix cache once {prefix_s:.3f} s")
    if device.type == "cuda":
        print(f"\npeak device memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
