"""Evaluation of several methods on the same prompts: one pass for all of them versus one per method.

    python benchmarks/eval_passes.py               # 64 built-in test prompts x 6 vectors, embedded model
    python benchmarks/eval_passes.py --n 32 --methods 4 --reps 3

Two measurements, both on zero-shot prompts of built-in relations with random vectors of the
residual stream's norm (plus "none"):

* first-token completion: ``completion_methods`` (each chunk's prefix once, the last token once per
  method, one unembedded column) against ``FrozenLM.score`` once per method (the prompt and its
  target tokens in one forward, logits at every target column);
* greedy exact match: ``exact_match_methods`` (one prefix, every method's rows decoded together,
  finished rows leave the batch) against the reference decoder below, one method at a time with
  every row kept to the end (what exact match did before).

Prints each time, the ratio and whether the outcomes agree.
"""

from __future__ import annotations

import argparse
import time

import torch


def reference_greedy(lm, prompts, answers, vector, layer, template, batch_size):
    """One method: prefix cache, the edited last token, then greedy steps over all rows to the end."""
    from fvtrain.evaluation.relation import EXTRA_TOKENS
    from fvtrain.prompts import encode_target, make_batch

    tok = lm.tokenizer
    texts = []
    for i in range(0, len(prompts), batch_size):
        chunk = answers[i : i + batch_size]
        b = make_batch(tok, prompts[i : i + batch_size], chunk, template)
        budget = [max(len(encode_target(tok, template, a)) for a in c) + EXTRA_TOKENS for c in chunk]
        new = [[] for _ in budget]
        done = [False] * len(budget)
        vec = None if vector is None else (vector if vector.dim() == 1 else vector[i : i + batch_size])
        ids, mask = b.prompt_ids, b.prompt_mask
        with torch.no_grad():
            cache = lm.prefix_cache(ids, mask)
            if vec is None:
                out = lm.continue_from(cache, ids[:, -1:], mask)
            else:
                with lm.inject(vec, layer, positions=0):
                    out = lm.continue_from(cache, ids[:, -1:], mask)
            for _ in range(max(budget)):
                nxt = out.logits[:, -1].argmax(-1).cpu()
                for r, t in enumerate(nxt.tolist()):
                    if done[r]:
                        continue
                    if t == tok.eos_token_id:
                        done[r] = True
                        continue
                    new[r].append(t)
                    if len(new[r]) >= budget[r] or "\n" in tok.decode(new[r], skip_special_tokens=True):
                        done[r] = True
                if all(done):
                    break
                mask = torch.cat([mask, torch.ones(len(budget), 1, dtype=mask.dtype)], 1)
                out = lm.continue_from(out.cache, nxt.unsqueeze(1), mask)
        texts += [tok.decode(n, skip_special_tokens=True) for n in new]
    return texts


def best_of(reps, fn):
    times, out = [], None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gemma3-270m")
    ap.add_argument("--n", type=int, default=64, help="prompts")
    ap.add_argument("--methods", type=int, default=6, help="vectors besides 'none'")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()

    from fvtrain.data.select import load_relations
    from fvtrain.evaluation.relation import completion_methods, exact_match_methods
    from fvtrain.models import load_model
    from fvtrain.prompts import PromptTemplate, make_batch, zero_shot
    from omegaconf import OmegaConf

    lm = load_model(args.model)
    T = PromptTemplate()
    ds = load_relations(OmegaConf.create({"path": "builtin", "relations": None, "format": None}))
    pairs = [p for rel in ds.relations.values() for p in rel.pairs[:3]][: args.n]
    prompts = [zero_shot(T, p.x) for p in pairs]
    answers = [list(p.answers) for p in pairs]
    layer = lm.default_layer()
    probe = make_batch(lm.tokenizer, prompts[:8], [a[0] for a in answers[:8]], T)
    norm = float(lm.block_output(probe.prompt_ids, probe.prompt_mask, layer).norm(dim=-1).mean())
    g = torch.Generator().manual_seed(0)
    vecs = torch.randn(args.methods, lm.d_model, generator=g)
    methods = {"none": None, **{f"v{i}": v / v.norm() * norm for i, v in enumerate(vecs)}}
    bs = args.batch_size
    print(f"model {lm.model_id}: {len(prompts)} zero-shot prompts x {len(methods)} methods, layer {layer}, "
          f"batch {bs}, torch threads {torch.get_num_threads()}, best of {args.reps}")

    def per_method_score():
        out = {}
        for n, v in methods.items():
            correct = []
            for i in range(0, len(prompts), bs):
                b = make_batch(lm.tokenizer, prompts[i : i + bs], answers[i : i + bs])
                correct += lm.score(b, vector=v, layer=layer if v is not None else None).correct.int().tolist()
            out[n] = correct
        return out

    completion_methods(lm, prompts[:4], answers[:4], methods, layer, bs)  # warm-up
    t_fast, fast = best_of(args.reps, lambda: completion_methods(lm, prompts, answers, methods, layer, bs))
    t_ref, ref = best_of(args.reps, per_method_score)
    same = all(fast[n]["correct"] == ref[n] for n in methods)
    print(f"first-token completion: one pass {t_fast:7.2f} s   per method {t_ref:7.2f} s   "
          f"ratio {t_ref / t_fast:5.2f}x   same outcomes: {same}")

    t_fast, fast = best_of(args.reps, lambda: exact_match_methods(lm, prompts, answers, methods, layer,
                                                                  batch_size=bs, template=T))
    t_ref, ref = best_of(args.reps, lambda: {n: reference_greedy(lm, prompts, answers, v, layer, T, bs)
                                             for n, v in methods.items()})
    same = all(fast[n].raw == ref[n] for n in methods)
    print(f"greedy exact match:     one pass {t_fast:7.2f} s   per method {t_ref:7.2f} s   "
          f"ratio {t_ref / t_fast:5.2f}x   same texts: {same}")


if __name__ == "__main__":
    main()
