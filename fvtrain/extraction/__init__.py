"""Function-vector extraction by causal mediation: mean head activations, AIE, top-k heads, FV."""

from fvtrain.extraction.activations import mean_head_activations
from fvtrain.extraction.aie import aie_fast, aie_reference
from fvtrain.extraction.fv import centred_function_vector, function_vector, top_heads

__all__ = ["aie_fast", "aie_reference", "centred_function_vector", "function_vector", "mean_head_activations", "top_heads"]
