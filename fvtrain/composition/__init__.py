"""Composite function vectors: the basis bank, batched source scoring and weight schemes.

The affine combiner (``combiner``), its training data (``training``), the stage job (``job``) and its
tables (``tables``) are imported from their modules (they pull in Lightning and Hydra)."""

from fvtrain.composition.bank import BankError, BasisBank, load_bank, resolve_bank_folder
from fvtrain.composition.schemes import (
    FIXED_SCHEMES,
    Softmax,
    Top1,
    Uniform,
    WeightScheme,
    affine_weights,
    compose,
    make_scheme,
)
from fvtrain.composition.scoring import score_pairs, source_scores, source_scores_loop, target_logprob

__all__ = [
    "BankError", "BasisBank", "FIXED_SCHEMES", "Softmax", "Top1", "Uniform", "WeightScheme",
    "affine_weights", "compose", "load_bank", "make_scheme", "resolve_bank_folder", "score_pairs",
    "source_scores", "source_scores_loop", "target_logprob",
]
