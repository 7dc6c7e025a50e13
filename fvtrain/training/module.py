"""The FFV trainer: function vectors fine-tuned with the language model frozen.

The only trainable state is one ``[relations, d_model]`` parameter, ``vectors``: each example
indexes its relation's row, so many relations train in one run. The loss of an example is the
cross-entropy of its target's first token (``loss_target="first"``) or of every target token
(``"full"``) with the row injected at the last prompt token of block ``layer``, plus
``lam * ||v - v0||^2`` towards the initial vector. The batch loss is the mean over examples.

Two implementations of the same forward pass:

* ``impl="plain"`` (the reference): a full forward of the prompt (and target) with the vector
  hook at column ``P - 1``;
* ``impl="cached"``: every column before the last prompt token is independent of the vector, so
  its keys/values are computed once per fixed batch (:mod:`fvtrain.data.datamodules`) and kept; each
  step runs only the new columns against that cache, with gradient.

The frozen LM (:class:`~fvtrain.models.wrapper.FrozenLM`, not an ``nn.Module``) is a plain
attribute: it never enters ``state_dict``, the optimiser or a checkpoint. It is attached by the
caller or built by ``lm_factory`` in :meth:`configure_model` (in each process under
``ddp_spawn``), and dropped when the module is pickled.
"""

from __future__ import annotations

import logging
import math
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from torch import nn

from fvtrain.training.metrics import RelationScores, item_keys, mean_over_relations, relation_scores
from fvtrain.prompts import DEFAULT_TEMPLATE, PromptBatch, PromptTemplate, make_batch

log = logging.getLogger("fvtrain.ffv")

# Methods of the test table, in column order ("icl" is a prompt mode of its own).
METHODS = ("none", "fv", "ffv", "ffv_random")
IMPLS = ("cached", "plain")
LOSS_TARGETS = ("first", "full")
SELECT = ("per_relation", "best", "last")


@dataclass
class Prepared:
    """A tokenised batch with its relation rows and (cached path) the prefix keys/values."""

    batch: PromptBatch
    relation_index: torch.Tensor
    mode: str
    cache: Any = None
    prompts: tuple[str, ...] = ()


class LMFactory:
    """Builds the frozen LM from a model config node (picklable, for spawned processes)."""

    def __init__(self, model_cfg: dict, bos: str = "auto"):
        self.model_cfg, self.bos = dict(model_cfg), bos

    def __call__(self, device: torch.device | str | None = None):
        from hydra.utils import instantiate

        from fvtrain.prompts import set_bos_policy

        cfg = dict(self.model_cfg)
        if device is not None and cfg.get("device_map") is None:
            cfg["device"] = str(device)
        lm = instantiate(cfg)
        set_bos_policy(lm.tokenizer, self.bos)  # a spawned process builds its own tokenizer
        return lm


class FFVModule(LightningModule):
    """Fine-tuned function vectors of several relations (one row each)."""

    def __init__(
        self,
        relations: Sequence[str],
        layer: int,
        init_vectors: torch.Tensor,
        fv_vectors: torch.Tensor | None = None,
        lm_factory: Callable[..., Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        lr_scale: float = 1.0,
        loss_target: str = "first",
        lam: float = 0.0,
        impl: str = "cached",
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        val_modes: Sequence[str] = ("zero_shot",),
        test_modes: Sequence[str] = ("zero_shot",),
        log_prefix: str = "",
        log_per_relation: bool = True,
        hparams: dict | None = None,
    ):
        super().__init__()
        if loss_target not in LOSS_TARGETS:
            raise ValueError(f"loss target {loss_target!r}: use one of {', '.join(LOSS_TARGETS)}")
        if impl not in IMPLS:
            raise ValueError(f"impl {impl!r}: use one of {', '.join(IMPLS)}")
        self.relations = list(relations)
        R = len(self.relations)
        if init_vectors.dim() != 2 or init_vectors.shape[0] != R:
            raise ValueError(f"init_vectors must be [{R}, d_model], got {tuple(init_vectors.shape)}")
        d = init_vectors.shape[1]
        if not torch.isfinite(init_vectors).all():
            bad = [self.relations[i] for i in range(R) if not torch.isfinite(init_vectors[i]).all()]
            raise ValueError(f"initial vector of relation(s) {', '.join(bad)} has NaN or infinite entries")
        self.layer = int(layer)
        self.d_model = int(d)
        self.loss_target, self.lam, self.impl = loss_target, float(lam), impl
        self.template = template if isinstance(template, PromptTemplate) else PromptTemplate(template)
        self.val_modes, self.test_modes = tuple(val_modes), tuple(test_modes)
        self.log_prefix, self.log_per_relation = log_prefix, bool(log_per_relation)
        self.lm_factory, self.optimizer_factory, self.scheduler_factory = lm_factory, optimizer, scheduler
        self.scheduler_interval = scheduler_interval
        self.lr_scale = float(lr_scale)

        init = init_vectors.detach().float().clone()
        self.vectors = nn.Parameter(init.clone())
        self.register_buffer("v0", init.clone())
        self.register_buffer("fv", torch.zeros(R, d) if fv_vectors is None else fv_vectors.detach().float().clone())
        self.register_buffer("has_fv", torch.tensor(fv_vectors is not None))
        self.register_buffer("random_vectors", torch.zeros(R, d))
        self.register_buffer("has_random", torch.tensor(False))
        # Named baseline vectors (set_baselines), tested as extra methods after the FFVs.
        self.baseline_names: list[str] = []
        # Per-relation model selection: the vector of each relation's best validation epoch.
        self.register_buffer("best_vectors", init.clone())
        self.register_buffer("best_score", torch.full((R,), -math.inf, dtype=torch.float64))
        self.register_buffer("best_epoch", torch.full((R,), -1, dtype=torch.long))
        self.register_buffer("best_val_acc", torch.full((R,), math.nan, dtype=torch.float64))
        self.register_buffer("best_val_prob", torch.full((R,), math.nan, dtype=torch.float64))

        self.val_metrics = nn.ModuleDict({m: RelationScores(R) for m in self.val_modes})
        self.test_metrics = nn.ModuleDict({
            f"{mode}__{meth}": RelationScores(R) for mode in self.test_modes for meth in METHODS
        })
        self.test_metrics["icl__none"] = RelationScores(R)

        hp = {
            "relations": self.relations, "n_relations": R, "d_model": self.d_model, "layer": self.layer,
            "loss_target": loss_target, "lambda": self.lam, "impl": impl,
            "template": self.template.template, "val_modes": list(self.val_modes),
            "test_modes": list(self.test_modes), "params_trainable": R * d, "lr_scale": self.lr_scale,
        }
        hp.update(hparams or {})
        self.save_hyperparameters(hp)
        self._lm = None
        self._store: dict = {}
        # {"<mode>/<method>" or "icl": {acc, prob, count}} per relation, set by the test loop.
        self.test_results: dict[str, dict[str, torch.Tensor]] = {}
        # Where rank 0 writes every test item's outcome per mode and method (the job sets it).
        self.outcomes_file: str | None = None

    # -- the frozen LM -----------------------------------------------------------------------
    @property
    def lm(self):
        if self._lm is None:
            raise RuntimeError("FFVModule has no language model: attach_lm(lm) or run it in a Trainer "
                               "with an lm_factory")
        return self._lm

    def attach_lm(self, lm) -> "FFVModule":
        if lm.d_model != self.d_model:
            raise ValueError(f"the vectors have d_model {self.d_model} but {lm.model_id} has {lm.d_model}")
        lm.check_layer(self.layer)
        self._lm = lm
        return self

    def share_from(self, other: "FFVModule") -> "FFVModule":
        """Use ``other``'s LM and prefix caches (same prompts, e.g. the random-init baseline)."""
        self._lm, self._store = other._lm, other._store
        return self

    def setup(self, stage: str) -> None:
        # Processes started by ddp_spawn receive CPU tensors in memory shared with their siblings:
        # give every metric state (and any shared parameter or buffer) a private copy, or the
        # processes would add into each other's counts.
        for metric in [*self.val_metrics.values(), *self.test_metrics.values()]:
            metric.reset()
        with torch.no_grad():
            for p in self.parameters():
                if p.is_shared():
                    p.data = p.data.clone()
            for mod in self.modules():
                for name, buf in list(mod._buffers.items()):
                    if buf is not None and buf.is_shared():
                        mod._buffers[name] = buf.clone()

    def configure_model(self) -> None:
        device = self.trainer.strategy.root_device if self._trainer is not None else None
        if self._lm is None:
            if self.lm_factory is None:
                raise RuntimeError("FFVModule needs an LM: pass lm_factory or call attach_lm()")
            self.attach_lm(self.lm_factory(device))
        elif device is not None and self._lm.device != device and not self._lm.device_mapped:
            self._lm.to(device)
            self._store.clear()

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_lm"] = None
        state["_store"] = {}
        return state

    # -- batches -----------------------------------------------------------------------------
    def prepare(self, item: dict | PromptBatch, store: bool = True, impl: str | None = None) -> Prepared:
        """Tokenise a data-module item (and compute its prefix cache on the cached path)."""
        impl = impl or self.impl
        lm = self.lm
        if isinstance(item, PromptBatch):
            b = item.to(lm.device)
            ridx = b.meta["relation_index"].to(lm.device)
            cache = lm.prefix_cache(b.prompt_ids, b.prompt_mask) if impl == "cached" else None
            return Prepared(b, ridx, b.meta.get("mode", "zero_shot"), cache)
        examples = item["examples"]
        prompts = tuple(e.prompt for e in examples)
        key = (item["stage"], item["index"], impl)
        hit = self._store.get(key)
        if hit is not None and hit.prompts == prompts:
            return hit
        ridx = torch.tensor([e.relation_index for e in examples], dtype=torch.long)
        b = make_batch(lm.tokenizer, list(prompts), [list(e.answers) for e in examples], self.template,
                       {"relation_index": ridx, "mode": item["mode"]}).to(lm.device)
        cache = None
        if impl == "cached" and item["mode"] != "icl":
            cache = lm.prefix_cache(b.prompt_ids, b.prompt_mask)
        prep = Prepared(b, ridx.to(lm.device), item["mode"], cache, prompts)
        if store and item["stage"] in ("train", "val"):
            self._store[key] = prep
        return prep

    # -- forward passes ----------------------------------------------------------------------
    def n_new(self, prep: Prepared) -> int:
        """Columns run per step: the last prompt token (first-token loss) or the whole target."""
        return 1 if self.loss_target == "first" else prep.batch.target_ids.shape[1]

    def logits(self, prep: Prepared, vectors: torch.Tensor | None, n_new: int = 1, repeat: int = 1,
               impl: str | None = None) -> torch.Tensor:
        """``[B * repeat, n_new, vocab]`` logits of the columns predicting the first ``n_new``
        target tokens, with ``vectors`` (``[B * repeat, d]``, prompt-major rows) injected at the
        last prompt token. Logits are computed for those columns only."""
        impl = impl or self.impl
        lm, b = self.lm, prep.batch
        P = b.prompt_len
        end = P - 1 + n_new
        if impl == "cached":
            if prep.cache is None:
                raise RuntimeError("the cached path needs a batch prepared with impl='cached'")
            ctx = lm.inject(vectors, self.layer, positions=0) if vectors is not None else nullcontext()
            with ctx:
                out = lm.continue_from(prep.cache, b.input_ids[:, P - 1:end], b.attention_mask[:, :end],
                                       repeat=repeat, logits_to_keep=n_new, keep_cache=False)
        else:
            ids, mask = b.input_ids[:, :end], b.attention_mask[:, :end]
            if repeat > 1:
                ids, mask = ids.repeat_interleave(repeat, 0), mask.repeat_interleave(repeat, 0)
            ctx = lm.inject(vectors, self.layer, positions=P - 1) if vectors is not None else nullcontext()
            with ctx:
                out = lm.forward(ids, mask, logits_to_keep=n_new)
        return out.logits

    @staticmethod
    def target_nll(logits: torch.Tensor, batch: PromptBatch, n_new: int) -> torch.Tensor:
        """Per-example negative log-likelihood of the first ``n_new`` target tokens."""
        tgt = batch.target_ids[:, :n_new].to(logits.device)
        mask = batch.target_mask[:, :n_new].to(logits.device).float()
        ce = F.cross_entropy(logits.float().flatten(0, 1), tgt.flatten(), reduction="none")
        return (ce.view_as(mask) * mask).sum(-1)

    def loss(self, prep: Prepared, impl: str | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(loss, nll, reg)``: batch loss, per-example NLL and per-example ``||v - v0||^2``."""
        r = prep.relation_index.to(self.vectors.device)
        v = self.vectors[r]
        n = self.n_new(prep)
        nll = self.target_nll(self.logits(prep, v, n, impl=impl), prep.batch, n)
        reg = (v - self.v0[r]).pow(2).sum(-1)
        loss = (nll + self.lam * reg).mean()
        return loss, nll, reg

    @staticmethod
    def first_token_scores(logits: torch.Tensor, batch: PromptBatch, repeat: int = 1):
        """Top-1 correctness (any accepted answer's first token) and P(first target token)."""
        lf = logits.float()
        tgt = batch.target_ids[:, 0].to(lf.device)
        firsts = batch.first_token_matrix().to(lf.device)
        if repeat > 1:
            tgt, firsts = tgt.repeat_interleave(repeat), firsts.repeat_interleave(repeat, 0)
        prob = (lf.gather(-1, tgt[:, None]).squeeze(-1) - lf.logsumexp(-1)).exp()
        correct = (lf.argmax(-1)[:, None] == firsts).any(-1)
        return correct, prob

    # -- training ----------------------------------------------------------------------------
    def training_step(self, item, batch_idx):
        prep = self.prepare(item)
        loss, nll, reg = self.loss(prep)
        self._check_finite(loss, nll, prep)
        B = len(prep.batch)
        p = self.log_prefix
        self.log(f"{p}train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=B)
        self.log(f"{p}train/nll", nll.mean(), on_step=False, on_epoch=True, batch_size=B)
        self.log(f"{p}train/reg", reg.mean(), on_step=False, on_epoch=True, batch_size=B)
        return loss

    def _check_finite(self, loss: torch.Tensor, nll: torch.Tensor, prep: Prepared) -> None:
        if bool(torch.isfinite(loss)):
            return
        rows = prep.relation_index.tolist()
        bad = [self.relations[r] for r, x in zip(rows, nll.tolist()) if not math.isfinite(x)]
        bad += [self.relations[r] for r in set(rows) if not bool(torch.isfinite(self.vectors[r]).all())]
        bad = sorted(set(bad)) or sorted({self.relations[r] for r in rows})
        raise FloatingPointError(
            f"non-finite training loss ({float(loss.detach())}) at step {self.global_step} (epoch "
            f"{self.current_epoch}) for relation(s) {', '.join(bad)}; lower the learning rate "
            "(optim.optimizer.lr), check the initial vectors, or add a λ penalty (ffv.loss.lambda)"
        )

    def configure_optimizers(self):
        return self.scaled_optimizers([self.vectors])

    def scaled_optimizers(self, params: list[torch.Tensor]):
        """The configured optimiser (and scheduler) over ``params``, learning rates times ``lr_scale``."""
        opt = self.optimizer_factory(params) if self.optimizer_factory else torch.optim.Adam(params, lr=0.05)
        # Learning rates are relative to the residual stream's scale at the injection layer
        # (lr_scale = its RMS per coordinate), so one setting fits models whose hidden states
        # differ by orders of magnitude.
        for group in opt.param_groups:
            group["lr"] = group["lr"] * self.lr_scale
        if self.scheduler_factory is None:
            return opt
        return {"optimizer": opt,
                "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": self.scheduler_interval}}

    # -- validation --------------------------------------------------------------------------
    def validation_step(self, item, batch_idx):
        if not item["examples"]:
            return
        prep = self.prepare(item)
        r = prep.relation_index.to(self.vectors.device)
        logits = self.logits(prep, self.vectors[r], 1)[:, -1]
        correct, prob = self.first_token_scores(logits, prep.batch)
        self.val_metrics[prep.mode].update(prep.relation_index, correct, prob)

    def on_validation_epoch_end(self) -> None:
        p = self.log_prefix
        selection = None
        for mode, metric in self.val_metrics.items():
            res = relation_scores(metric)
            metric.reset()
            self._log_scores(f"{p}val/{mode}", res)
            if selection is None:
                selection = res
        if selection is None or self.trainer.sanity_checking:
            return
        # Per-relation best epoch: accuracy first, mean target probability breaks ties.
        score = (selection["acc"] + 1e-3 * selection["prob"]).to(self.best_score.device)
        score = torch.nan_to_num(score, nan=-math.inf)
        better = score > self.best_score
        if bool(better.any()):
            with torch.no_grad():
                self.best_vectors[better] = self.vectors.detach()[better].to(self.best_vectors.dtype)
                self.best_score[better] = score[better]
                self.best_epoch[better] = self.current_epoch
                self.best_val_acc[better] = selection["acc"].to(self.best_val_acc)[better]
                self.best_val_prob[better] = selection["prob"].to(self.best_val_prob)[better]

    def _log_scores(self, prefix: str, res: dict[str, torch.Tensor], count: bool = False) -> None:
        for stat in ("acc", "prob"):
            self.log(f"{prefix}/{stat}", mean_over_relations(res[stat]), sync_dist=True,
                     prog_bar=stat == "acc" and "val" in prefix)
            if self.log_per_relation:
                for i, name in enumerate(self.relations):
                    if res["count"][i] > 0:
                        self.log(f"{prefix}/{stat}/{name}", float(res[stat][i]), sync_dist=True)
        if count:
            for i, name in enumerate(self.relations):
                self.log(f"{prefix}/n/{name}", float(res["count"][i]), sync_dist=True)

    # -- test: every method side by side -----------------------------------------------------
    def methods(self) -> list[str]:
        out = ["none"]
        if bool(self.has_fv):
            out.append("fv")
        out.append("ffv")
        if bool(self.has_random):
            out.append("ffv_random")
        return out + list(self.baseline_names)

    def method_vectors(self, relation_index: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """``[B * methods, d]`` rows (prompt-major) for the methods of :meth:`methods`."""
        r = relation_index.to(self.vectors.device)
        table = {"none": torch.zeros_like(self.vectors[r]), "fv": self.fv[r], "ffv": self.vectors[r],
                 "ffv_random": self.random_vectors[r]}
        table.update({n: getattr(self, f"baseline_{n}")[r] for n in self.baseline_names})
        names = self.methods()
        return names, torch.stack([table[n] for n in names], 1).flatten(0, 1)

    def test_step(self, item, batch_idx):
        if not item["examples"]:
            return
        prep = self.prepare(item, store=False)
        keys = item_keys(item["examples"])
        if prep.mode == "icl":
            logits = self.logits(prep, None, 1, impl="plain")[:, -1]  # no vector: one plain pass
            correct, prob = self.first_token_scores(logits, prep.batch)
            self.test_metrics["icl__none"].update(prep.relation_index, correct, prob, keys)
            return
        names, vecs = self.method_vectors(prep.relation_index)
        V = len(names)
        logits = self.logits(prep, vecs, 1, repeat=V)[:, -1]
        correct, prob = self.first_token_scores(logits, prep.batch, repeat=V)
        correct, prob = correct.view(-1, V), prob.view(-1, V)
        for j, name in enumerate(names):
            self.test_metrics[f"{prep.mode}__{name}"].update(prep.relation_index, correct[:, j], prob[:, j], keys)

    def on_test_epoch_end(self) -> None:
        # Results are kept on the module (``test_results``) for the job to read, and logged.
        self.test_results = {}
        for key, metric in self.test_metrics.items():
            mode, method = key.split("__")
            if mode == "icl":
                # No ICL batch when its numbers come from extraction. Every rank still computes
                # (a distributed compute is collective); only torchmetrics' warning is dropped.
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=r"The ``compute`` method of metric")
                    res = relation_scores(metric)
                if bool((res["count"] > 0).any()):
                    self._log_scores("test/icl", res, count=True)
                    self.test_results["icl"] = {k: v.detach().cpu() for k, v in res.items()}
            elif method in self.methods():
                res = relation_scores(metric)
                self._log_scores(f"test/{mode}/{method}", res, count=method == "ffv")
                self.test_results[f"{mode}/{method}"] = {k: v.detach().cpu() for k, v in res.items()}
            metric.reset()
        if self.outcomes_file is not None and self.global_rank == 0:
            self._write_outcomes(Path(self.outcomes_file))

    def _write_outcomes(self, path: Path) -> None:
        # A file, not only an attribute: under ddp_spawn the test loop runs in other processes, and
        # the per-item outcomes are what paired bootstrap intervals (and later re-analysis) need.
        from fvtrain.artifacts import write_json

        data = {"relations": list(self.relations), "key": "relation_index * 1e6 + pair", "outcomes": {}}
        for name, res in self.test_results.items():
            keys = res.get("item_key")
            if keys is None or not len(keys):
                continue
            data["outcomes"][name] = {"key": [int(k) for k in keys],
                                      "correct": [float(c) for c in res["item_correct"]]}
        write_json(path, data)

    # -- results -----------------------------------------------------------------------------
    def set_random_baseline(self, vectors: torch.Tensor) -> None:
        with torch.no_grad():
            self.random_vectors.copy_(vectors.to(self.random_vectors))
            self.has_random.fill_(True)

    def set_baselines(self, vectors: Mapping[str, torch.Tensor]) -> None:
        """Named ``[relations, d_model]`` vectors (e.g. ``task_vector``) tested beside the FFVs, one
        column each, injected like them. Their buffers are not persistent: checkpoints keep the
        trained vectors only and load with or without baselines."""
        R = len(self.relations)
        for name, v in vectors.items():
            if name in METHODS or name == "icl" or not str(name).isidentifier():
                raise ValueError(f"baseline name {name!r} is taken or not an identifier")
            if tuple(v.shape) != (R, self.d_model) or not bool(torch.isfinite(v).all()):
                raise ValueError(f"baseline {name!r} must be finite [{R}, {self.d_model}], got {tuple(v.shape)}")
            self.register_buffer(f"baseline_{name}", v.detach().float().clone().to(self.vectors.device),
                                 persistent=False)
            if name not in self.baseline_names:
                self.baseline_names.append(name)
            for mode in self.test_modes:
                if f"{mode}__{name}" not in self.test_metrics:
                    self.test_metrics[f"{mode}__{name}"] = RelationScores(R).to(self.vectors.device)

    @property
    def best_val(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Validation accuracy and probability of each relation at its best epoch."""
        return self.best_val_acc.cpu(), self.best_val_prob.cpu()

    def selected_vectors(self, how: str = "per_relation") -> torch.Tensor:
        """The vectors to keep: each relation's best validation epoch, or the last epoch."""
        if how not in ("per_relation", "last"):
            raise ValueError(f"selection {how!r}: use per_relation or last here")
        v = self.vectors.detach().clone()
        if how == "per_relation":
            seen = self.best_epoch >= 0
            v[seen] = self.best_vectors[seen]
        return v.cpu()
