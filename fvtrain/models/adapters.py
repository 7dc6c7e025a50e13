"""Per-architecture geometry: where the blocks, attention output projections and heads are.

Everything outside ``fvtrain.models`` asks an :class:`Adapter` instead of reaching into a Hugging
Face model. Supporting a new architecture means adding one :class:`ArchSpec` to ``ARCHITECTURES``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


class UnsupportedArchitectureError(ValueError):
    """The model's ``config.model_type`` has no adapter."""


@dataclass(frozen=True)
class ArchSpec:
    """Dotted attribute paths inside a ``*ForCausalLM`` model.

    ``blocks`` is the ModuleList of decoder blocks, ``out_proj`` the attention output projection
    relative to one block, ``final_norm`` the norm applied before the unembedding.
    ``conv1d`` marks GPT-2's ``Conv1D`` whose weight is stored ``[in, out]``. ``attn_out_norm``
    names a norm applied to the attention output before the residual add (Gemma 2/3, OLMo 2).
    ``mlp`` is the feed-forward module relative to one block (``d_model`` in and out).
    """

    blocks: str
    out_proj: str
    final_norm: str
    conv1d: bool = False
    attn_out_norm: str | None = None
    mlp: str = "mlp"


_LLAMA_LIKE = ArchSpec("model.layers", "self_attn.o_proj", "model.norm")
_POST_NORM = ArchSpec("model.layers", "self_attn.o_proj", "model.norm",
                      attn_out_norm="post_attention_layernorm")

ARCHITECTURES: dict[str, ArchSpec] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _POST_NORM,
    "gemma3_text": _POST_NORM,
    "phi3": _LLAMA_LIKE,
    "olmo2": _POST_NORM,
    "gpt2": ArchSpec("transformer.h", "attn.c_proj", "transformer.ln_f", conv1d=True),
    "gptj": ArchSpec("transformer.h", "attn.out_proj", "transformer.ln_f"),
    "gpt_neox": ArchSpec("gpt_neox.layers", "attention.dense", "gpt_neox.final_layer_norm"),
}

HOW_TO_ADD = (
    "to add one, register an ArchSpec(blocks=..., out_proj=..., final_norm=...) for it in "
    "fvtrain.models.adapters.ARCHITECTURES (see the README section 'Adding an architecture')"
)


def _get(root: nn.Module, dotted: str) -> nn.Module:
    obj = root
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _cfg(config, *names: str, default=None):
    for n in names:
        v = getattr(config, n, None)
        if v is not None:
            return v
    return default


class Adapter:
    """Geometry and module access for one loaded causal LM."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        model_type = getattr(config, "model_type", None)
        if model_type not in ARCHITECTURES:
            raise UnsupportedArchitectureError(
                f"unsupported architecture model_type={model_type!r}; supported: "
                f"{', '.join(sorted(ARCHITECTURES))}; {HOW_TO_ADD}"
            )
        self.model_type: str = model_type
        self.spec = ARCHITECTURES[model_type]
        self.model = model
        self.blocks: nn.ModuleList = _get(model, self.spec.blocks)
        self.n_layers: int = len(self.blocks)
        self.n_heads: int = int(_cfg(config, "num_attention_heads", "n_head"))
        self.n_kv_heads: int = int(_cfg(config, "num_key_value_heads", default=self.n_heads))
        self.d_model: int = int(_cfg(config, "hidden_size", "n_embd"))
        self.d_intermediate: int = int(_cfg(config, "intermediate_size", "n_inner", default=None)
                                       or 4 * self.d_model)  # GPT-2/J: n_inner None means 4 * d_model
        # The projection's input width is the truth: Gemma and Qwen3 have head_dim * heads != d_model.
        in_features = self._out_proj_in_features(self.out_proj(0))
        if in_features % self.n_heads:
            raise ValueError(
                f"{model_type}: attention output projection takes {in_features} features, "
                f"not a multiple of {self.n_heads} heads"
            )
        self.head_dim: int = in_features // self.n_heads
        declared = getattr(config, "head_dim", None)
        if declared is not None and int(declared) != self.head_dim:
            raise ValueError(
                f"{model_type}: config.head_dim={declared} but the output projection implies "
                f"{self.head_dim}"
            )
        self.final_norm: nn.Module = _get(model, self.spec.final_norm)
        self.unembedding: nn.Module = model.get_output_embeddings()
        self.logit_softcap: float | None = _cfg(config, "final_logit_softcapping")

    # -- modules ---------------------------------------------------------------------------
    def block(self, layer: int) -> nn.Module:
        return self.blocks[self.check_layer(layer)]

    def out_proj(self, layer: int) -> nn.Module:
        return _get(self.blocks[layer], self.spec.out_proj)

    def mlp_slot(self, layer: int) -> tuple[nn.Module, str]:
        """The module holding block ``layer``'s MLP and its attribute name (to swap it out)."""
        *parents, name = self.spec.mlp.split(".")
        owner = _get(self.block(layer), ".".join(parents)) if parents else self.block(layer)
        return owner, name

    def _out_proj_in_features(self, proj: nn.Module) -> int:
        if self.spec.conv1d:
            return int(proj.weight.shape[0])
        return int(proj.weight.shape[1])

    # -- geometry --------------------------------------------------------------------------
    def check_layer(self, layer: int) -> int:
        if not isinstance(layer, int) or isinstance(layer, bool):
            raise TypeError(f"layer must be an int, got {layer!r}")
        if not 0 <= layer < self.n_layers:
            raise ValueError(
                f"layer {layer} is out of range for this {self.model_type} model with "
                f"{self.n_layers} layers (valid: 0..{self.n_layers - 1})"
            )
        return layer

    def check_head(self, head: int) -> int:
        if not 0 <= head < self.n_heads:
            raise ValueError(
                f"head {head} is out of range for this {self.model_type} model with "
                f"{self.n_heads} heads per layer (valid: 0..{self.n_heads - 1})"
            )
        return head

    def out_proj_weight(self, layer: int) -> torch.Tensor:
        """``W_O`` of ``layer`` as ``[d_model, n_heads * head_dim]`` (the ``y = W x`` form)."""
        w = self.out_proj(self.check_layer(layer)).weight
        return w.t() if self.spec.conv1d else w

    def out_proj_bias(self, layer: int) -> torch.Tensor | None:
        return getattr(self.out_proj(self.check_layer(layer)), "bias", None)

    def head_slice(self, head: int) -> slice:
        self.check_head(head)
        return slice(head * self.head_dim, (head + 1) * self.head_dim)

    def head_contribution(self, layer: int, head: int, value: torch.Tensor) -> torch.Tensor:
        """``W_O[:, slice(head)] @ value``: one head's write into the residual stream (no bias)."""
        w = self.out_proj_weight(layer)[:, self.head_slice(head)]
        return value.to(w.dtype).to(w.device) @ w.t()

    def residual_contributions(self, layer: int, values: torch.Tensor) -> torch.Tensor:
        """Each head's write into the residual stream, ``[n_heads, d_model]``.

        ``values`` are all heads' o_proj inputs at ``layer`` (``[n_heads, head_dim]``, e.g. their
        means). Without a norm on the attention output this is ``W_O[:, slice(h)] @ v_h``. With
        one (Gemma 2/3, OLMo 2) the residual receives ``norm(o_proj(v))``; that RMSNorm is
        linearised around the whole layer's output, ``gain * W_O[:, h] v_h / rms(o_proj(v))``,
        so the contributions of all heads sum exactly to what the residual stream receives.
        """
        raw, scale = self._raw_and_scale(layer, values)
        return raw if scale is None else (raw.float() * scale).to(raw.dtype)

    def residual_bias(self, layer: int, values: torch.Tensor) -> torch.Tensor:
        """The o_proj bias's write into the residual stream, ``[d_model]`` (zeros without one).

        Under the same linearisation as :meth:`residual_contributions` (``values`` fix it), so
        heads plus bias sum to what the residual stream receives.
        """
        raw, scale = self._raw_and_scale(layer, values)
        bias = self.out_proj_bias(layer)
        if bias is None:
            return torch.zeros(self.d_model, dtype=raw.dtype, device=raw.device)
        bias = bias.to(raw.device, raw.dtype)
        return bias if scale is None else (bias.float() * scale).to(raw.dtype)

    def _raw_and_scale(self, layer: int, values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-head ``W_O`` writes and the attention-output norm's linearised per-channel scale."""
        w = self.out_proj_weight(self.check_layer(layer))
        v = values.to(w.device, w.dtype)
        raw = torch.stack([v[h] @ w[:, self.head_slice(h)].t() for h in range(self.n_heads)])
        if self.spec.attn_out_norm is None:
            return raw, None
        norm = _get(self.blocks[layer], self.spec.attn_out_norm)
        eps = float(getattr(norm, "eps", getattr(norm, "variance_epsilon", 1e-6)))
        total = raw.sum(0)
        bias = self.out_proj_bias(layer)
        if bias is not None:
            total = total + bias
        rms = (total.float().pow(2).mean() + eps).sqrt()
        # The norm's per-channel gain, whatever its parameterisation (w or 1 + w).
        gain = norm(torch.ones_like(total)).float() * (1.0 + eps) ** 0.5
        return raw, gain / rms

    def unembed(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits of residual-stream vectors: final norm, unembedding, and any logit soft-cap."""
        return self.logits(self.final_norm(hidden))

    def logits(self, normed: torch.Tensor) -> torch.Tensor:
        """Logits of final-normed hidden states: unembedding and any logit soft-cap."""
        logits = self.unembedding(normed)
        if self.logit_softcap:
            logits = torch.tanh(logits / self.logit_softcap) * self.logit_softcap
        return logits

    def describe(self) -> dict:
        return {
            "model_type": self.model_type,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "head_dim": self.head_dim,
            "d_model": self.d_model,
        }
