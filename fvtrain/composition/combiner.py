"""The affine combiner: ``w = W softmax(s / tau) + b``, learned on training analogies.

For a training analogy A:B :: C:D the source scores ``s`` (log P(B | prompt(A), basis_i), computed
once: the LM and the basis are frozen, so they never change) give weights ``w``; the composite
vector ``CFV = w @ basis`` is injected at the last token of the zero-shot prompt of C, and the loss
is the negative log-probability of D. W and b are the module's only trainable state (and, with
the temperature, all that its checkpoints hold): the frozen LM is a plain attribute and the basis a
non-persistent buffer.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from lightning.pytorch import LightningModule
from torch import nn

from fvtrain.composition.schemes import affine_weights, compose
from fvtrain.composition.scoring import target_logprob


FORMS = ("full", "diagonal")


class AffineCombiner(LightningModule):
    """Learns W (``[N, N]``, identity at start) and b (``[N]``, zero at start).

    The map's form is an ablation axis: ``form="diagonal"`` learns only W's diagonal (a per-basis
    gain, N parameters instead of N^2); ``learn_temperature`` makes tau a parameter (log-scale);
    ``identity_reg`` adds ``lambda * ||W - I||^2`` to the loss, pulling the map to plain softmax.
    """

    name = "affine"
    trainable = True

    def __init__(
        self,
        n_basis: int,
        temperature: float = 1.0,
        tokens: str = "all",
        form: str = "full",
        learn_temperature: bool = False,
        identity_reg: float = 0.0,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        interval: str = "epoch",
        lm: Any = None,
        basis: torch.Tensor | None = None,
        layer: int | None = None,
    ) -> None:
        super().__init__()
        if n_basis < 1:
            raise ValueError(f"the affine combiner needs at least one basis vector, got n_basis={n_basis}")
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if tokens not in ("all", "first"):
            raise ValueError(f"tokens must be 'all' or 'first', got {tokens!r}")
        if form not in FORMS:
            raise ValueError(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        if identity_reg < 0:
            raise ValueError(f"identity_reg must be >= 0, got {identity_reg}")
        self.save_hyperparameters(ignore=["optimizer", "scheduler", "lm", "basis", "layer"])
        self.tokens, self.form, self.identity_reg = tokens, form, float(identity_reg)
        self.learn_temperature = bool(learn_temperature)
        if self.form == "diagonal":
            self.W_diag = nn.Parameter(torch.ones(n_basis))
        else:
            self.W = nn.Parameter(torch.eye(n_basis))
        self.b = nn.Parameter(torch.zeros(n_basis))
        log_tau = torch.tensor(float(temperature)).log()
        if self.learn_temperature:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau, persistent=False)  # a hyperparameter then
        # The project's optim group: ``optimizer`` and ``scheduler`` are Hydra ``_partial_`` nodes.
        self.optimizer_factory, self.scheduler_factory, self.interval = optimizer, scheduler, interval
        # Not an nn.Module: never enters the state dict, the optimiser or a checkpoint.
        self.lm = lm
        self.layer = layer
        self.register_buffer("basis", torch.zeros(0), persistent=False)
        if basis is not None:
            self.attach(lm, basis, layer)

    def matrix(self) -> torch.Tensor:
        """W as an ``[N, N]`` matrix (the diagonal form's is diagonal)."""
        return torch.diag(self.W_diag) if self.form == "diagonal" else self.W

    @property
    def temperature(self) -> float:
        return float(self.log_tau.detach().exp())

    # -- the scheme interface -------------------------------------------------------------
    def attach(self, lm, basis: torch.Tensor, layer: int) -> "AffineCombiner":
        """Give the module the frozen LM, the (frozen) basis ``[N, d]`` and the injection layer."""
        if basis.dim() != 2 or basis.shape[0] != len(self.b):
            raise ValueError(f"basis must be [{len(self.b)}, d_model], got {tuple(basis.shape)}")
        self.lm, self.layer = lm, int(layer)
        self.basis = basis.detach().float().clone().to(self.b.device)
        return self

    def weights(self, scores: torch.Tensor) -> torch.Tensor:
        return affine_weights(scores.to(self.b.device), self.matrix(), self.b, self.log_tau.exp())

    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return self.weights(scores)

    def describe(self) -> dict:
        eye = torch.eye(len(self.b), device=self.b.device)
        return {"name": self.name, "temperature": self.temperature, "tokens": self.tokens, "form": self.form,
                "learn_temperature": self.learn_temperature, "identity_reg": self.identity_reg,
                "W_minus_identity_norm": float((self.matrix().detach() - eye).norm()),
                "b_norm": float(self.b.detach().norm())}

    # -- training ---------------------------------------------------------------------------
    def _loss(self, batch: dict) -> torch.Tensor:
        if self.lm is None or self.basis.numel() == 0:
            raise RuntimeError("AffineCombiner has no LM/basis: call attach(lm, basis, layer) first")
        w = self.weights(batch["scores"])
        cfv = compose(w, self.basis).to(self.lm.dtype)
        lp = target_logprob(self.lm, batch["target"], cfv, self.layer, self.tokens, batch.get("cache"))
        loss = -lp.mean()
        if self.identity_reg > 0:
            eye = torch.eye(len(self.b), device=self.b.device)
            loss = loss + self.identity_reg * (self.matrix() - eye).pow(2).sum()
        return loss

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("train/loss", loss, prog_bar=True, batch_size=len(batch["scores"]))
        return loss

    def validation_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)
        self.log("val/loss", loss, prog_bar=True, batch_size=len(batch["scores"]))
        return loss

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=0.01)
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": self.interval}}

    def transfer_batch_to_device(self, batch: dict, device: torch.device, dataloader_idx: int) -> dict:
        # The prompt batch and its prefix cache (if any) stay on the frozen LM's device.
        return {**batch, "scores": batch["scores"].to(device)}
