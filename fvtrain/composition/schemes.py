"""Weight schemes: from source scores ``s [B, N]`` to composition weights ``w [B, N]``.

``CFV_b = sum_i w[b, i] * basis_i``. The schemes (Hydra group ``composition/``):

* ``uniform``: ``w_i = 1 / N`` (ignores the source pair);
* ``softmax``: ``w = softmax(s / tau)``;
* ``top1``: all weight on the best-scoring basis vector;
* ``affine``: ``w = W softmax(s / tau) + b`` with W (identity at start) and b (zero at start)
  learned on training analogies: see :class:`fvtrain.composition.combiner.AffineCombiner`.
"""

from __future__ import annotations

import torch


class WeightScheme:
    """A fixed (untrained) scheme; subclasses implement :meth:`weights`."""

    name = "scheme"
    trainable = False

    def __init__(self, n_basis: int | None = None, **_: object) -> None:
        self.n_basis = n_basis

    def weights(self, scores: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, scores: torch.Tensor) -> torch.Tensor:
        return self.weights(scores)

    def describe(self) -> dict:
        return {"name": self.name}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.describe().items() if k != "name")
        return f"{type(self).__name__}({args})"


class Uniform(WeightScheme):
    name = "uniform"

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.full_like(scores.float(), 1.0 / scores.shape[-1])


class Softmax(WeightScheme):
    name = "softmax"

    def __init__(self, temperature: float = 1.0, n_basis: int | None = None, **kw: object) -> None:
        super().__init__(n_basis)
        if not temperature > 0:
            raise ValueError(f"softmax temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        return torch.softmax(scores.float() / self.temperature, dim=-1)

    def describe(self) -> dict:
        return {"name": self.name, "temperature": self.temperature}


class Top1(WeightScheme):
    name = "top1"

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        w = torch.zeros_like(scores.float())
        return w.scatter_(-1, scores.argmax(-1, keepdim=True), 1.0)


def affine_weights(scores: torch.Tensor, W: torch.Tensor, b: torch.Tensor, temperature: float) -> torch.Tensor:
    """``w = W softmax(s / tau) + b`` for a batch of score rows."""
    p = torch.softmax(scores.to(W.dtype) / temperature, dim=-1)
    return p @ W.T + b


def compose(weights: torch.Tensor, bank: torch.Tensor) -> torch.Tensor:
    """``[B, d]`` composite vectors ``weights @ bank``."""
    return weights.to(bank.dtype) @ bank


FIXED_SCHEMES: dict[str, type[WeightScheme]] = {"uniform": Uniform, "softmax": Softmax, "top1": Top1}


def make_scheme(name: str, temperature: float = 1.0) -> WeightScheme:
    """An untrained scheme by name (``uniform``, ``softmax``, ``top1``)."""
    if name not in FIXED_SCHEMES:
        raise ValueError(f"unknown fixed weight scheme {name!r}; available: {', '.join(FIXED_SCHEMES)} "
                         "(affine is trained: select it with composition=affine)")
    return Softmax(temperature) if name == "softmax" else FIXED_SCHEMES[name]()
