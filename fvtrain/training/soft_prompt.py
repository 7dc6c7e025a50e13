"""The soft-prompt baseline: k learned input embeddings per relation, trained like the FFV.

Where an FFV is one ``d_model`` vector added to the residual stream at one layer and token, a soft
prompt (Lester et al. 2021) is ``k`` vectors in the *input embedding* space, inserted before the
prompt's first text token (after the BOS when the prompt starts with one). Everything else is the
FFV's recipe, so the comparison measures the parameterisation only: the same training prompts and
fixed batches (the same :class:`~fvtrain.data.datamodules.RelationDataModule`), the same loss
target (first or full), the same optimiser and scheduler, the same epochs (so the same number of
optimisation steps), the LM frozen, and per-relation model selection on the validation split.
Trainable parameters: ``relations x k x d_model`` against the FFV's ``relations x d_model``.

The learning rate follows ``ffv.lr_scale`` like the FFV's, with the unit of the space it moves in:
``rms`` makes it relative to the RMS per coordinate of the input embeddings of the training
prompts (the FFV's unit is the residual stream's RMS at its layer).

Initialisation (``ffv.soft_prompt.init``): ``text`` (default) takes the embeddings of the first
``k`` tokens of a neutral instruction (``init_text``, cycled when shorter), so training starts
from a real, harmless prompt as Lester et al. recommend over random starts; ``random`` draws a
seeded Gaussian per relation scaled to the embedding RMS.

The prefix changes with every step, so the FFV's prefix cache cannot serve: each forward is a plain
forward on ``inputs_embeds`` (:meth:`FrozenLM.forward_embeds`), and gradients reach the soft
prompt only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import nn

from fvtrain.errors import ConfigError
from fvtrain.prompts import (
    DEFAULT_TEMPLATE,
    PromptBatch,
    PromptTemplate,
    encode_prompt,
    make_batch,
    zero_shot,
)
from fvtrain.training.metrics import (
    RelationScores,
    item_keys,
    relation_scores,
)
from fvtrain.training.module import LOSS_TARGETS, FFVModule

log = logging.getLogger("fvtrain.soft_prompt")

NAME = "soft_prompt"  # the ffv.baselines entry, the test-table column and the checkpoint subfolder
INITS = ("text", "random")
FOLDER = "soft_prompt"  # run-folder subfolder: prompts.safetensors, prompts.json, test_outcomes.json


def check_soft_prompt(f) -> None:
    """``cfg.ffv.soft_prompt``, checked before any model is loaded (a :class:`ConfigError`)."""
    sp = f.get("soft_prompt")
    if sp is None:
        return
    if int(sp.n_tokens) < 1:
        raise ConfigError(f"ffv.soft_prompt.n_tokens must be >= 1, got {sp.n_tokens}")
    if sp.init not in INITS:
        raise ConfigError(f"ffv.soft_prompt.init={sp.init!r}: use one of {', '.join(INITS)}")
    if sp.init == "text" and not str(sp.get("init_text") or "").strip():
        raise ConfigError("ffv.soft_prompt.init=text needs a non-empty ffv.soft_prompt.init_text")


def insert_soft_prompt(embeds: torch.Tensor, mask: torch.Tensor, soft: torch.Tensor,
                       at: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``embeds`` ``[B, T, d]`` with ``soft`` ``[B, k, d]`` inserted at column ``at[b]`` of each row;
    returns ``([B, T + k, d], mask [B, T + k])``. Columns from ``at[b]`` on move right by ``k``, so
    a left-padded batch stays left-padded and every row's last column stays aligned."""
    B, T, _ = embeds.shape
    k = soft.shape[1]
    if k == 0:
        return embeds, mask
    j = torch.arange(T + k, device=embeds.device)[None].expand(B, -1)
    a = at.to(embeds.device)[:, None]
    # Source column in cat([embeds, soft]): before the insertion itself, then the soft rows (at
    # T..T+k-1), then the rest shifted by k.
    src = torch.where(j < a, j, torch.where(j < a + k, T + j - a, j - k))
    full = torch.cat([embeds, soft.to(embeds.dtype)], 1)
    out = full.gather(1, src[..., None].expand(-1, -1, full.shape[-1]))
    full_mask = torch.cat([mask.to(embeds.device), torch.ones(B, k, dtype=mask.dtype, device=embeds.device)], 1)
    return out, full_mask.gather(1, src)


def insertion_columns(input_ids: torch.Tensor, mask: torch.Tensor, bos_id: int | None) -> torch.Tensor:
    """``[B]`` column of each row's first text token: its first real column, plus one when that
    column holds the BOS (the soft prompt goes after the BOS, as every trained prompt starts)."""
    first = mask.long().argmax(1)  # left padding: the first 1
    if bos_id is None:
        return first
    starts_bos = input_ids.gather(1, first[:, None]).squeeze(1) == int(bos_id)
    return first + starts_bos.long()


def embedding_rms(lm, splits: Mapping, template: PromptTemplate, n: int = 64) -> float:
    """RMS per coordinate of the input embeddings over the tokens of up to ``n`` zero-shot training
    prompts: the scale of random initial soft prompts and the unit of ``ffv.lr_scale=rms``."""
    pairs = [p for s in splits.values() for p in s.train]
    pairs = pairs[:: max(1, len(pairs) // n)][:n]
    ids = [t for p in pairs for t in encode_prompt(lm.tokenizer, zero_shot(template, p.x))]
    if not ids:
        raise ValueError("no training prompt to measure the embedding scale on")
    e = lm.embed(torch.tensor([ids])).float()
    return float(e.pow(2).mean().sqrt())


def initial_prompts(lm, relations: Sequence[str], n_tokens: int, init: str, text: str, seed: int,
                    rms: float) -> torch.Tensor:
    """``[relations, n_tokens, d_model]`` initial soft prompts (see the module's docstring)."""
    R, d, k = len(relations), lm.d_model, int(n_tokens)
    if init == "text":
        ids = lm.tokenizer(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"ffv.soft_prompt.init_text={text!r} encodes to no token")
        ids = [ids[i % len(ids)] for i in range(k)]
        e = lm.embed(torch.tensor([ids], dtype=torch.long))[0].float().cpu() if k else torch.zeros(0, d)
        return e[None].expand(R, -1, -1).clone()
    if init == "random":
        out = torch.zeros(R, k, d)
        for i, r in enumerate(relations):
            g = torch.Generator().manual_seed(hash_seed(seed, r))
            out[i] = torch.randn(k, d, generator=g) * rms
        return out
    raise ValueError(f"ffv.soft_prompt.init={init!r}: use one of {', '.join(INITS)}")


def hash_seed(seed: int, relation: str) -> int:
    """A per-relation seed stable across processes (``hash()`` of a str is not)."""
    import zlib

    return (int(seed) * 1_000_003 + zlib.crc32(relation.encode())) % (2 ** 63)


class SoftPromptModule(LightningModule):
    """One soft prompt (``[k, d_model]``) per relation, trained with the LM frozen."""

    def __init__(
        self,
        relations: Sequence[str],
        init_prompts: torch.Tensor,
        lm_factory: Callable[..., Any] | None = None,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        scheduler_interval: str = "epoch",
        lr_scale: float = 1.0,
        loss_target: str = "first",
        lam: float = 0.0,
        template: str | PromptTemplate = DEFAULT_TEMPLATE,
        val_modes: Sequence[str] = ("zero_shot",),
        test_modes: Sequence[str] = ("zero_shot",),
        log_prefix: str = f"{NAME}/",
        log_per_relation: bool = True,
        hparams: dict | None = None,
    ):
        super().__init__()
        if loss_target not in LOSS_TARGETS:
            raise ValueError(f"loss target {loss_target!r}: use one of {', '.join(LOSS_TARGETS)}")
        self.relations = list(relations)
        R = len(self.relations)
        if init_prompts.dim() != 3 or init_prompts.shape[0] != R:
            raise ValueError(f"init_prompts must be [{R}, k, d_model], got {tuple(init_prompts.shape)}")
        if not bool(torch.isfinite(init_prompts).all()):
            raise ValueError("initial soft prompts have NaN or infinite entries")
        _, k, d = init_prompts.shape
        self.n_tokens, self.d_model = int(k), int(d)
        self.loss_target, self.lam = loss_target, float(lam)
        self.template = template if isinstance(template, PromptTemplate) else PromptTemplate(template)
        self.val_modes, self.test_modes = tuple(val_modes), tuple(m for m in test_modes if m != "icl")
        self.log_prefix, self.log_per_relation = log_prefix, bool(log_per_relation)
        self.lm_factory, self.optimizer_factory, self.scheduler_factory = lm_factory, optimizer, scheduler
        self.scheduler_interval, self.lr_scale = scheduler_interval, float(lr_scale)

        # The FFV's names for the trainable rows (here [relations, k, d_model]) and their
        # per-relation best validation epoch, so that its selection code serves both.
        init = init_prompts.detach().float().clone()
        self.vectors = nn.Parameter(init.clone())
        self.register_buffer("v0", init.clone())
        self.register_buffer("best_vectors", init.clone())
        self.register_buffer("best_score", torch.full((R,), -math.inf, dtype=torch.float64))
        self.register_buffer("best_epoch", torch.full((R,), -1, dtype=torch.long))
        self.register_buffer("best_val_acc", torch.full((R,), math.nan, dtype=torch.float64))
        self.register_buffer("best_val_prob", torch.full((R,), math.nan, dtype=torch.float64))
        self.val_metrics = nn.ModuleDict({m: RelationScores(R) for m in self.val_modes})
        self.test_metrics = nn.ModuleDict({m: RelationScores(R) for m in self.test_modes})
        hp = {"relations": self.relations, "n_relations": R, "d_model": self.d_model, "n_tokens": self.n_tokens,
              "loss_target": loss_target, "lambda": self.lam, "template": self.template.template,
              "params_trainable": R * self.n_tokens * self.d_model, "lr_scale": self.lr_scale}
        hp.update(hparams or {})
        self.save_hyperparameters(hp)
        self._lm = None
        self._store: dict = {}
        self.test_results: dict[str, dict[str, torch.Tensor]] = {}
        self.outcomes_file: str | None = None  # rank 0 writes the test scores and outcomes here

    # -- the frozen LM ---------------------------------------------------------------------------
    @property
    def lm(self):
        if self._lm is None:
            raise RuntimeError("SoftPromptModule has no language model: attach_lm(lm) or give an lm_factory")
        return self._lm

    def attach_lm(self, lm) -> SoftPromptModule:
        if lm.d_model != self.d_model:
            raise ValueError(f"the soft prompts have d_model {self.d_model} but {lm.model_id} has {lm.d_model}")
        self._lm = lm
        return self

    # The FFV's: the LM built in each process (ddp_spawn) or moved to the trainer's device, and
    # private copies of the shared CPU tensors that ddp_spawn hands each process.
    configure_model = FFVModule.configure_model
    setup = FFVModule.setup

    def __getstate__(self) -> dict:
        state = dict(super().__getstate__())
        state["_lm"] = None
        state["_store"] = {}
        return state

    # -- forward ---------------------------------------------------------------------------------
    def prepare(self, item: dict) -> tuple[PromptBatch, torch.Tensor, str]:
        """Tokenise a data-module item (train and val batches are fixed: kept after the first use)."""
        key = (item["stage"], item["index"])
        prompts = tuple(e.prompt for e in item["examples"])
        hit = self._store.get(key)
        if hit is not None and hit[0] == prompts:
            return hit[1]
        ex = item["examples"]
        ridx = torch.tensor([e.relation_index for e in ex], dtype=torch.long)
        b = make_batch(self.lm.tokenizer, list(prompts), [list(e.answers) for e in ex], self.template).to(self.lm.device)
        out = (b, ridx.to(self.lm.device), item["mode"])
        if item["stage"] in ("train", "val"):
            self._store[key] = (prompts, out)
        return out

    def logits(self, batch: PromptBatch, prompts: torch.Tensor, n_new: int = 1) -> torch.Tensor:
        """``[B, n_new, vocab]`` logits of the columns predicting the first ``n_new`` target tokens,
        with ``prompts`` (``[B, k, d]``) inserted after each prompt's BOS."""
        lm = self.lm
        end = batch.prompt_len - 1 + n_new
        ids, mask = batch.input_ids[:, :end], batch.attention_mask[:, :end]
        at = insertion_columns(ids, mask, lm.tokenizer.bos_token_id)
        embeds, mask = insert_soft_prompt(lm.embed(ids), mask.to(lm.device), prompts.to(lm.device), at)
        return lm.forward_embeds(embeds, mask, logits_to_keep=n_new).logits

    def loss(self, batch: PromptBatch, ridx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch loss, per-example NLL)``: the FFV's loss with the soft prompt as the parameter."""
        p = self.vectors[ridx.to(self.vectors.device)]
        n = 1 if self.loss_target == "first" else batch.target_ids.shape[1]
        nll = FFVModule.target_nll(self.logits(batch, p, n), batch, n)
        reg = (p - self.v0[ridx.to(self.v0.device)]).pow(2).sum((-1, -2))
        return (nll + self.lam * reg).mean(), nll

    def _scores(self, batch: PromptBatch, ridx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.logits(batch, self.vectors[ridx.to(self.vectors.device)], 1)[:, -1]
        return FFVModule.first_token_scores(logits, batch)

    # -- training --------------------------------------------------------------------------------
    def training_step(self, item, batch_idx):
        batch, ridx, _ = self.prepare(item)
        loss, nll = self.loss(batch, ridx)
        if not bool(torch.isfinite(loss)):
            raise FloatingPointError(f"non-finite soft-prompt training loss ({float(loss.detach())}) at step "
                                     f"{self.global_step}; lower the learning rate (optim.optimizer.lr)")
        B, p = len(batch), self.log_prefix
        self.log(f"{p}train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=B)
        self.log(f"{p}train/nll", nll.mean(), on_step=False, on_epoch=True, batch_size=B)
        return loss

    def configure_optimizers(self):
        # The FFV's optimiser and scheduler; lr_scale is the embeddings' RMS here (module docstring).
        return FFVModule.scaled_optimizers(self, [self.vectors])

    # -- validation: per-relation model selection, as the FFV's ----------------------------------
    def validation_step(self, item, batch_idx):
        if not item["examples"]:
            return
        batch, ridx, mode = self.prepare(item)
        correct, prob = self._scores(batch, ridx)
        self.val_metrics[mode].update(ridx, correct, prob)

    # The FFV's: logging, each relation's best validation epoch (accuracy, then probability), and
    # the selection of ffv.select=per_relation|last (``best`` reads the monitored checkpoint).
    on_validation_epoch_end = FFVModule.on_validation_epoch_end
    _log_scores = FFVModule._log_scores
    selected_vectors = FFVModule.selected_vectors

    # -- test ------------------------------------------------------------------------------------
    def test_step(self, item, batch_idx):
        if not item["examples"] or item["mode"] not in self.test_metrics:  # ICL items: no soft prompt
            return
        batch, ridx, mode = self.prepare(item)
        correct, prob = self._scores(batch, ridx)
        self.test_metrics[mode].update(ridx, correct, prob, item_keys(item["examples"]))

    def on_test_epoch_end(self) -> None:
        self.test_results = {}
        for mode, metric in self.test_metrics.items():
            res = relation_scores(metric)
            metric.reset()
            self._log_scores(f"{self.log_prefix}test/{mode}", res)
            self.test_results[f"{mode}/{NAME}"] = {k: v.detach().cpu() for k, v in res.items()}
        if self.outcomes_file is not None and self.global_rank == 0:
            from fvtrain.artifacts import write_json

            # A file: under ddp_spawn the test loop runs in other processes.
            write_json(Path(self.outcomes_file), {
                "relations": self.relations,
                "results": {name: {k: [float(x) for x in v] for k, v in res.items()}
                            for name, res in self.test_results.items()}})


def add_column(metrics: dict, outcomes_path: Path, scores_path: Path, relations: Sequence[str]) -> None:
    """The ``soft_prompt`` column: per relation and mean in ``metrics`` (``zero_shot_acc``, and
    ``relations[r][mode]`` / ``mean[mode]`` for every tested mode), and its per-item outcomes in
    ``test_outcomes.json`` under ``<mode>/soft_prompt``, so intervals and paired differences cover it."""
    from fvtrain.artifacts import read_json, write_json

    results = read_json(scores_path)["results"]
    table = metrics["zero_shot_acc"]
    for name, res in results.items():
        mode = name.split("/", 1)[0]
        per = {}
        for i, r in enumerate(relations):
            n = int(res["count"][i])
            acc, prob = (res["acc"][i], res["prob"][i]) if n else (None, None)
            # float32, as the test loop's logged numbers of the other columns
            per[r] = {"acc": None if acc is None else float(torch.tensor(acc, dtype=torch.float32)),
                      "prob": None if prob is None else float(torch.tensor(prob, dtype=torch.float32)), "n": n}
            metrics["relations"][r].setdefault(mode, {})[NAME] = per[r]
        for key, stat in ((mode, "acc"), (f"{mode}_prob", "prob")):
            vals = [per[r][stat] for r in relations if per[r][stat] is not None]
            metrics["mean"].setdefault(key, {})[NAME] = sum(vals) / len(vals) if vals else None
        if mode == "zero_shot":
            at = table["methods"].index("icl") if "icl" in table["methods"] else len(table["methods"])
            table["methods"].insert(at, NAME)
            for r in relations:
                table["relations"][r][NAME] = per[r]["acc"]
            table["mean"][NAME] = metrics["mean"]["zero_shot"][NAME]
    data = read_json(outcomes_path) if Path(outcomes_path).is_file() else {
        "relations": list(relations), "key": "relation_index * 1e6 + pair", "outcomes": {}}
    for name, res in results.items():
        if res.get("item_key"):
            data["outcomes"][name] = {"key": [int(k) for k in res["item_key"]], "correct": res["item_correct"]}
    write_json(outcomes_path, data)


def fit_soft_prompt(cfg, lm, dm, splits: Mapping, template: PromptTemplate, out: Path, *, optimizer,
                    scheduler, factory, loggers: list, resume: Path | None, hparams: dict,
                    select_fn: Callable[[Any, Any, str], torch.Tensor]) -> dict:
    """Train and test the soft prompts of ``cfg.ffv.soft_prompt`` on the FFV's data module ``dm``
    with a Trainer of ``cfg.trainer`` (checkpoints in ``checkpoints/soft_prompt/``); saves
    ``soft_prompt/prompts.safetensors`` + ``.json`` and ``soft_prompt/test_outcomes.json`` (read by
    :func:`add_column`). ``select_fn`` is the FFV's model selection (:func:`fvtrain.training.job.select`).
    Returns what ``metrics.json`` says about them."""
    from fvtrain import runs
    from fvtrain.artifacts import save_tensors, write_json
    from fvtrain.training.trainer import build_trainer, instantiate_callbacks

    f, sp = cfg.ffv, cfg.ffv.soft_prompt
    relations = list(splits)
    rms = embedding_rms(lm, splits, template)
    lr_scale = rms if f.lr_scale == "rms" else float(f.lr_scale)
    init = initial_prompts(lm, relations, int(sp.n_tokens), str(sp.init), str(sp.init_text), int(cfg.seed), rms)
    module = SoftPromptModule(
        relations, init, lm_factory=factory, optimizer=optimizer, scheduler=scheduler,
        scheduler_interval=cfg.optim.get("interval", "epoch"), lr_scale=lr_scale, loss_target=f.loss.target,
        lam=float(f.loss["lambda"]), template=template, val_modes=list(f.val_modes), test_modes=list(f.test_modes),
        log_per_relation=bool(f.log_per_relation),
        hparams={**hparams, "init": str(sp.init), "variant": NAME}).attach_lm(lm)
    ckpt_dir = out / runs.CHECKPOINTS
    sresume = resume.parent / NAME / "last.ckpt" if resume is not None else None
    callbacks = instantiate_callbacks(cfg, variant=NAME, has_logger=bool(loggers), checkpoint_dir=ckpt_dir)
    trainer = build_trainer(cfg, loggers, callbacks)
    trainer.fit(module, datamodule=dm, ckpt_path=str(sresume) if sresume is not None and sresume.is_file() else None,
                weights_only=True)
    selected = select_fn(module, trainer, f.select)
    with torch.no_grad():
        module.vectors.copy_(selected.to(module.vectors))
    folder = out / FOLDER
    module.outcomes_file = str(folder / runs.OUTCOMES)
    ttrainer = build_trainer(cfg, loggers, instantiate_callbacks(cfg, variant=NAME, has_logger=bool(loggers),
                                                                 checkpoints=False))
    ttrainer.test(module, datamodule=dm, verbose=False)
    val = {r: {"acc": float(module.best_val_acc[i]), "prob": float(module.best_val_prob[i]),
               "best_epoch": int(module.best_epoch[i])} for i, r in enumerate(relations)}
    info = {"about": f"{int(sp.n_tokens)} learned input embeddings per relation inserted after the BOS, trained "
                     "on the FFV's batches, loss, optimiser and epochs; column soft_prompt of the test table",
            "n_tokens": int(sp.n_tokens), "init": str(sp.init), "init_text": str(sp.init_text) if sp.init == "text" else None,
            "embedding_rms": rms, "lr_scale": lr_scale, "select": f.select, "epochs": int(trainer.current_epoch),
            "steps": int(trainer.global_step),
            "params": {"trainable": len(relations) * int(sp.n_tokens) * lm.d_model,
                       "per_relation": int(sp.n_tokens) * lm.d_model, "ffv_per_relation": lm.d_model},
            "val": val}
    save_tensors(folder / "prompts.safetensors", {"prompts": selected.float()})
    write_json(folder / "prompts.json", {"relations": relations, "model_id": lm.model_id, "d_model": lm.d_model,
                                         "template": template.template, "seed": int(cfg.seed),
                                         **{k: v for k, v in info.items() if k != "about"}})
    return info
