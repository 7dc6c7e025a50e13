"""Frozen language models: loading, per-architecture geometry, hooks and the wrapper."""

from fvtrain.models.adapters import ARCHITECTURES, Adapter, ArchSpec, UnsupportedArchitectureError
from fvtrain.models.loading import (
    ModelNotFoundError,
    ModelSource,
    cache_root,
    load_model,
    load_tokenizer,
    resolve_source,
)
from fvtrain.models.wrapper import FrozenLM, Scores, SelfCheckError

__all__ = [
    "ARCHITECTURES",
    "Adapter",
    "ArchSpec",
    "FrozenLM",
    "ModelNotFoundError",
    "ModelSource",
    "Scores",
    "SelfCheckError",
    "UnsupportedArchitectureError",
    "cache_root",
    "load_model",
    "load_tokenizer",
    "resolve_source",
]
