"""Random-weight models of real architectures' shapes, for timing at scale without weights.

``model.name=shape-llama3-8b`` (or ``shape-qwen3-0.6b``, ``shape-gptj-6b``) builds that model's
published config with seeded random weights on the target device: no download, so the whole study
runs at the real widths, depths and head counts on a machine that cannot fetch checkpoints (a GPU
box without network, a CI runner). Its numbers mean nothing; its times are the real model's, up to
the vocabulary: prompts are tokenised with the embedded Gemma 3 tokenizer (or ``model.tokenizer``),
so the vocabulary is the larger of the shape's and the tokenizer's (Gemma's 262,144 rows: twice
Llama 3's unembedding).
"""

from __future__ import annotations

import torch

# From the models' published configs (config.json on the hub).
SHAPES = {
    "llama3-8b": ("llama", dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                                num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                                rope_theta=500000.0, max_position_embeddings=8192)),
    "qwen3-0.6b": ("qwen3", dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                                 num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                                 vocab_size=151936, tie_word_embeddings=True, max_position_embeddings=40960)),
    "gptj-6b": ("gptj", dict(n_embd=4096, n_layer=28, n_head=16, rotary_dim=64, vocab_size=50400,
                             n_positions=2048)),
}


def shape_config(shape: str, layers: int | None = None, vocab: int | None = None,
                 attn_implementation: str | None = None):
    """The transformers config of ``shape``, with ``layers`` blocks and ``vocab`` rows if given."""
    from transformers import AutoConfig

    family, kw = SHAPES[shape]
    kw = dict(kw)
    if layers:
        kw["n_layer" if family == "gptj" else "num_hidden_layers"] = int(layers)
    if vocab:
        kw["vocab_size"] = int(vocab)
    cfg = AutoConfig.for_model(family, **kw)
    if attn_implementation:
        cfg._attn_implementation = attn_implementation
    return cfg


def shape_bytes(shape: str, dtype: torch.dtype = torch.float32, layers: int | None = None,
                vocab: int | None = None) -> int:
    """Bytes of ``shape``'s weights in ``dtype``, counted on the meta device (nothing allocated)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(shape_config(shape, layers, vocab), dtype=dtype)
    return sum(p.numel() for p in model.parameters()) * torch.empty(0, dtype=dtype).element_size()


def shape_model(shape: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                layers: int | None = None, vocab: int | None = None, attn_implementation: str | None = None,
                seed: int = 0):
    """A frozen, eval-mode causal LM of ``shape`` with seeded random weights, built on ``device``."""
    from transformers import AutoModelForCausalLM

    cfg = shape_config(shape, layers, vocab, attn_implementation)
    torch.manual_seed(seed)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    return model.eval().requires_grad_(False)
