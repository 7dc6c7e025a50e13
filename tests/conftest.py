"""Shared fixtures: tiny random models of several architectures and the embedded model."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

# Tests never reach a model hub or a wandb server.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"

# GQA (llama, gemma3 with one KV head) and head_dim * heads != d_model (qwen3, gemma, gemma3),
# Conv1D with bias (gpt2), tuple-returning blocks (gptj), parallel residual with bias (gpt_neox).
FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "gpt2",
            "gptj", "gpt_neox"]


@functools.lru_cache(maxsize=None)
def _tiny(family: str):
    from fvtrain.models import load_model

    return load_model(f"tiny-{family}")


@functools.lru_cache(maxsize=None)
def _tiny_sdpa(family: str):
    from fvtrain.models import load_model

    return load_model(f"tiny-{family}", attn_implementation="sdpa")


# Families whose transformers class runs sdpa attention (Gemma 2 soft-caps its attention logits).
SDPA_FAMILIES = [f for f in FAMILIES if f != "gemma2"]


@pytest.fixture(params=SDPA_FAMILIES)
def tiny_sdpa_lm(request):
    """A tiny model of each family on sdpa attention, the implementation real models load with."""
    return _tiny_sdpa(request.param)


@pytest.fixture(params=FAMILIES)
def tiny_lm(request):
    return _tiny(request.param)


@pytest.fixture
def tiny_llama():
    return _tiny("llama")


@pytest.fixture(scope="session")
def embedded_lm():
    from fvtrain.models import load_model

    return load_model("gemma3-270m", self_check=True)
