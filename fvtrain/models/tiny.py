"""Tiny randomly initialised models of real architectures, for tests and smoke runs.

``model=tiny-llama`` (or any ``tiny-<family>``) builds a seeded, few-layer transformers model of
that architecture with a byte-level BPE tokenizer built in memory: no download, seconds to load,
and the same hooks and geometry code paths as a real checkpoint.
"""

from __future__ import annotations

import torch

TINY_PREFIX = "tiny-"
_CORPUS = (
    "Q: hot\nA: cold\n\nQ: big\nA: small\n\nQ: France\nA: Paris\n\n"
    "the quick brown fox jumps over the lazy dog. cat dog bird fish tree house car road "
    "up down left right good bad happy sad fast slow light dark open close begin end "
) * 4


def tiny_tokenizer(add_bos: bool = True):
    """A deterministic byte-level BPE tokenizer (~320 tokens) with a BOS it adds itself.

    ``add_bos=False`` keeps the BOS token but never adds it, like GPT-2's, GPT-J's and NeoX's
    tokenizers (for tests of ``prompt.bos``).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=320,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS], trainer=trainer)
    bos = tok.token_to_id("<bos>")
    if add_bos:
        tok.post_processor = processors.TemplateProcessing(
            single="<bos> $A", pair="<bos> $A $B", special_tokens=[("<bos>", bos)]
        )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_config(family: str, vocab_size: int):
    """A small config of ``family``; Qwen3 and Gemma use head_dim * heads != d_model."""
    import transformers as tf

    common = dict(vocab_size=vocab_size, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    llama_like = dict(hidden_size=48, intermediate_size=64, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      **common)
    if family == "llama":
        return tf.LlamaConfig(**llama_like)
    if family == "mistral":
        return tf.MistralConfig(**llama_like, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**llama_like)
    if family == "qwen3":
        return tf.Qwen3Config(**{**llama_like, "hidden_size": 40}, head_dim=16)
    if family == "gemma":
        return tf.GemmaConfig(**{**llama_like, "hidden_size": 40}, head_dim=16)
    if family == "gemma2":
        return tf.Gemma2Config(**{**llama_like, "hidden_size": 40}, head_dim=16,
                               sliding_window=8, query_pre_attn_scalar=16)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**{**llama_like, "hidden_size": 40, "num_key_value_heads": 1},
                                   head_dim=16, sliding_window=8, query_pre_attn_scalar=16)
    if family == "phi3":
        return tf.Phi3Config(**llama_like)
    if family == "gpt2":
        return tf.GPT2Config(n_embd=48, n_layer=4, n_head=4, n_positions=256, **common)
    if family == "gptj":
        return tf.GPTJConfig(n_embd=48, n_layer=4, n_head=4, n_positions=256, rotary_dim=8, **common)
    if family == "gpt_neox":
        return tf.GPTNeoXConfig(hidden_size=48, num_hidden_layers=4, num_attention_heads=4,
                                intermediate_size=64, max_position_embeddings=256, **common)
    raise ValueError(f"no tiny config for {family!r}; known: {', '.join(TINY_FAMILIES)}")


TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3",
                 "gpt2", "gptj", "gpt_neox")


def tiny_model(family: str = "llama", seed: int = 0, dtype: torch.dtype = torch.float32,
               attn_implementation: str = "eager"):
    """(model, tokenizer) for a seeded tiny random ``family`` model."""
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    cfg = tiny_config(family, vocab_size=len(tok))
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, dtype=dtype)
    # Random biases are zero by default; make them non-zero so "bias added once" is tested.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model, tok
