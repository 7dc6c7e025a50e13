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

With ``--shape llama3-8b|qwen3-0.6b|gptj-6b`` it builds a random-weight model of that real shape
on the device (no weights, no network, no tokenizer: prompts are random token ids of the default
study's lengths) and times the AIE (25 prompts x every head; again with each row's copy of the
prefix, as before ``fvtrain.models.shared_prefix``), the FFV step (plain and cached, 32
shuffled 10-shot prompts), composition scoring (a bank of --bank vectors), each beside its FLOP
count, the time that count takes at the device's measured matrix-product rate (a large GEMM in the
same dtype, timed first) and the share of that floor reached, plus peak memory. ``--layers`` and
``--vocab`` shrink the shape (to run the script on a CPU). The whole pipeline needs a tokenizer and
data, so it is not part of this mode: time it on the same random shape with
``benchmarks/pipeline.py model=shape model.name=shape-llama3-8b model.dtype=bfloat16 model.device=cuda``
(README, "Benchmarks").

    python benchmarks/gpu.py --shape llama3-8b --dtype bfloat16
    python benchmarks/gpu.py --shape qwen3-0.6b --device cpu --layers 2 --vocab 4096   # anywhere
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

from fvtrain.models.shapes import SHAPES  # noqa: E402  (after the path set-up above)


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


def shape_model(shape: str, device: torch.device, dtype: torch.dtype, layers: int | None = None,
                vocab: int | None = None):
    """A ``FrozenLM`` of random weights with ``shape``'s config (``layers``/``vocab`` override).
    Prompts are random token ids: the tiny tokenizer only fills the wrapper's slot."""
    from fvtrain.models import shapes
    from fvtrain.models.source import ModelSource
    from fvtrain.models.tiny import tiny_tokenizer
    from fvtrain.models.wrapper import FrozenLM

    model = shapes.shape_model(shape, device, dtype, layers=layers, vocab=vocab)
    return FrozenLM(model, tiny_tokenizer(), ModelSource(f"shape-{shape}", "shape", revision="random:seed0"))


def random_batch(n: int, prompt_len: int, target_len: int, vocab: int, seed: int, relations: int = 1):
    """A PromptBatch of random token ids: ``n`` prompts of ``prompt_len``, targets of ``target_len``."""
    from fvtrain.prompts import PromptBatch

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, (n, prompt_len + target_len), generator=g)
    targets = ids[:, prompt_len:]
    return PromptBatch(ids[:, :-1], torch.ones(n, prompt_len + target_len - 1, dtype=torch.long), prompt_len,
                       targets, torch.ones_like(targets), [[int(t)] for t in targets[:, 0]],
                       {"relation_index": torch.arange(n) % relations})


def gemm_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a large matrix product in ``dtype`` on ``device``: the floor's yardstick."""
    n = 8192 if device.type == "cuda" else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    s = _timed(lambda: a @ a, device, 5)
    return 2 * n**3 / s


def _matrix_flops(module) -> int:
    return 2 * sum(p.numel() for p in module.parameters() if p.dim() == 2)


def flops(lm, tokens: float, rows_from: list[tuple[int, int]] = (), unembed_rows: float = 0,
          prefix_tokens: float = 0) -> float:
    """Matrix-product FLOPs (on the weights; attention scores are small at these lengths) of
    ``tokens`` tokens through every block, rows run from a given block up (``(rows, first
    block)``), ``unembed_rows`` rows through the unembedding, and ``prefix_tokens`` of a prefix
    cache (which leaves out the last block's MLP)."""
    per_block = _matrix_flops(lm.adapter.blocks[0])
    owner, name = lm.adapter.mlp_slot(lm.n_layers - 1)
    L = lm.n_layers
    total = tokens * L * per_block + sum(r * (L - start) * per_block for r, start in rows_from)
    total += prefix_tokens * (L * per_block - _matrix_flops(getattr(owner, name)))
    return total + unembed_rows * 2 * lm.d_model * lm.adapter.unembedding.weight.shape[0]


def run_shape(args, device: torch.device) -> int:
    """The ``--shape`` mode: AIE, FFV steps and composition scoring on a random model of a real shape."""
    from fvtrain.composition.scoring import source_scores
    from fvtrain.extraction import aie_fast
    from fvtrain.models import shared_prefix
    from fvtrain.training.module import FFVModule

    dtype = getattr(torch, args.dtype)
    rate = gemm_rate(device, dtype)
    t0 = time.perf_counter()
    lm = shape_model(args.shape, device, dtype, args.layers, args.vocab)
    _sync(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    L, H, V = lm.n_layers, lm.n_heads, lm.adapter.unembedding.weight.shape[0]
    print(f"device {device} ({name}); random {args.shape} {args.dtype}: {L} layers x {H} heads, "
          f"d_model {lm.d_model}, vocabulary {V}; built in {time.perf_counter() - t0:.1f} s; "
          f"{args.dtype} GEMM {rate / 1e12:.1f} TFLOP/s\n")
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def report(label: str, seconds: float, work: float) -> None:
        floor = work / rate
        print(f"  {label:<34} {seconds * 1e3:10.1f} ms   {work / 1e12:8.2f} TFLOP   floor {floor * 1e3:9.1f} ms"
              f"   {100 * floor / seconds:5.1f}% of floor")

    T = args.prompt_len
    corrupt = random_batch(args.n_corrupt, T, 1, V, args.seed)
    mean = torch.randn(L, H, lm.head_dim, generator=torch.Generator().manual_seed(0))
    rows = lm.resolve_rows(args.max_rows, T)
    s = _timed(lambda: aie_fast(lm, corrupt, mean, max_rows=rows), device, args.repeats)
    N = args.n_corrupt
    work = flops(lm, 0, [(N, 0)] + [(N * H, layer) for layer in range(L)], unembed_rows=N * (L * H + 1),
                 prefix_tokens=N * (T - 1))
    print(f"AIE: {N} prompts x {L * H} heads, T = {T}, max_rows {rows}")
    report("aie_fast", s, work)
    with shared_prefix.disabled():  # the same with the prefix repeated per row (before shared_prefix)
        s = _timed(lambda: aie_fast(lm, corrupt, mean, max_rows=rows), device, args.repeats)
    report("aie_fast, prefix repeated per row", s, work)

    layer = lm.default_layer()
    batch = random_batch(args.ffv_prompts, T, 2, V, args.seed + 1, relations=args.relations)
    module = FFVModule([f"r{i}" for i in range(args.relations)], layer, torch.zeros(args.relations, lm.d_model),
                       lam=0.0).attach_lm(lm)
    module.to(device)
    opt = torch.optim.Adam([module.vectors], lr=1e-3)
    print(f"\nFFV step: {args.ffv_prompts} shuffled 10-shot prompts (T = {T}, 2 target tokens), layer {layer}")
    for impl in ("plain", "cached"):
        prep = module.prepare(batch, impl=impl)

        def step():
            opt.zero_grad(set_to_none=True)
            loss, _, _ = module.loss(prep, impl=impl)
            loss.backward()
            opt.step()

        s = _timed(step, device, args.repeats)
        B = args.ffv_prompts
        # The forward of what runs (plain: every column of prompt and target; cached: the last
        # prompt token and the target alone), then the backward to the vector: input gradients
        # only, about the forward's products again, for the columns from the vector's on (the
        # earlier ones do not depend on it) and from its layer up.
        fwd = flops(lm, B * (T + 1), unembed_rows=B * 2) if impl == "plain" else \
            flops(lm, B * 2, unembed_rows=B * 2)  # the prefix cache is prepared once, outside the step
        work = fwd + flops(lm, 0, [(B * 2, layer)], unembed_rows=B * 2)
        report(f"{impl} step", s, work)

    bank = torch.randn(args.bank, lm.d_model, generator=torch.Generator().manual_seed(1)).to(device, dtype)
    pairs = random_batch(args.score_prompts, 8, 2, V, args.seed + 2)
    score_rows = lm.resolve_rows(args.max_rows, 8)
    s = _timed(lambda: source_scores(lm, pairs, bank, layer, max_rows=score_rows), device, args.repeats)
    B = args.score_prompts
    work = flops(lm, 0, [(B * args.bank * 2, 0)], unembed_rows=B * args.bank * 2, prefix_tokens=B * 7)
    print(f"\ncomposition scoring: {B} source prompts x {args.bank} vectors, max_rows {score_rows}")
    report("source_scores", s, work)
    if device.type == "cuda":
        print(f"\npeak device memory: {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--relation", default="antonym")
    ap.add_argument("--n-corrupt", type=int, default=25, help="shuffled prompts for the AIE")
    ap.add_argument("--max-rows", default="512", help="last-token rows per AIE forward, or auto")
    ap.add_argument("--relations", type=int, default=8, help="relations in the training batch")
    ap.add_argument("--per-relation", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--shape", choices=sorted(SHAPES), help="a random-weight model of this real shape")
    ap.add_argument("--layers", type=int, help="--shape with fewer layers")
    ap.add_argument("--vocab", type=int, help="--shape with a smaller vocabulary")
    ap.add_argument("--prompt-len", type=int, default=87, help="--shape: prompt tokens (10-shot: 87)")
    ap.add_argument("--ffv-prompts", type=int, default=32, help="--shape: prompts per FFV step")
    ap.add_argument("--bank", type=int, default=129, help="--shape: basis vectors scored")
    ap.add_argument("--score-prompts", type=int, default=64, help="--shape: source prompts scored")
    args = ap.parse_args()

    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device on this machine: nothing to measure. This benchmark reports GPU "
              "throughput; on CPU use benchmarks/aie.py and benchmarks/train_step.py "
              "(or run this script with --device cpu).")
        return 0
    if args.shape:
        return run_shape(args, device)

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
    rows = lm.resolve_rows(args.max_rows, batch.prompt_len)
    aie_s = _timed(lambda: aie_fast(lm, batch, mean, max_rows=rows), device, args.repeats)
    n_heads = lm.n_layers * lm.n_heads
    print(f"AIE (fast path, max_rows {rows}): {args.n_corrupt} prompts x {n_heads} heads, "
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
