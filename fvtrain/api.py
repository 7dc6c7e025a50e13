"""fvtrain from Python (notebooks, scripts): the same functions the command-line jobs call.

Single vectors, in memory::

    >>> from fvtrain import api
    >>> lm = api.load_model("tiny-llama")                       # or "gemma3-270m" (the default)
    >>> fv = api.extract_fv(lm, "antonym", n_prompts=4, n_corrupt=3, n_shots=3, k=3)
    >>> api.complete(lm, "hot", fv)                              # zero-shot prompt + the FV

Whole stage runs, written to a run folder exactly as ``fvtrain-extract`` / ``fvtrain-train`` /
``fvtrain-compose`` / ``fvtrain-eval`` write it (each composes that command's Hydra config with
the given overrides and calls the stage's ``job.run``)::

    >>> ffv = api.finetune(lm, ["antonym", "plural"], "runs/train", max_epochs=2,
    ...                    overrides={"extract.n_prompts": 4, "extract.n_corrupt": 3})
    >>> bank = api.load_bank(ffv)                                # its bank/ folder
    >>> cfv = api.cfv(lm, bank, "hot", "cold")                   # composite FV for hot:cold
    >>> api.complete(lm, "tall", cfv)                            # ... applied to tall

``overrides`` are Hydra overrides, as a mapping (``{"trainer.max_epochs": 2}``) or as strings
(``["trainer=ddp_sim", "ffv.init=zeros"]``); they are applied last, so they win. This module is
library code: it imports no entry point (``fvtrain.extract``, ...) and no CLI plumbing.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence, Union

import torch

if TYPE_CHECKING:  # pragma: no cover - for type checkers only
    from omegaconf import DictConfig

    from fvtrain.composition.bank import BasisBank
    from fvtrain.composition.job import ComposeResult
    from fvtrain.data.splits import Split
    from fvtrain.data.types import DataSet, Relation
    from fvtrain.evaluation.job import EvalResult
    from fvtrain.extraction.job import ExtractResult
    from fvtrain.models.wrapper import FrozenLM
    from fvtrain.prompts import PromptTemplate
    from fvtrain.training.job import TrainResult

__all__ = [
    "FunctionVector", "CompositeVector", "load_model", "read_data", "split", "job_config",
    "override_strings",
    "extract_fv", "evaluate_fv", "save_fv", "extract", "finetune", "load_bank", "cfv", "solve_analogies",
    "evaluate", "complete", "generate",
]

Overrides = Union[Mapping[str, Any], Sequence[str], None]
# The config each stage job reads (conf/<name>.yaml) and its task name (run folder outputs/<task>/...).
CONFIGS = {"extract": "extract", "train": "train", "compose": "compose", "eval": "eval"}


# -- results that live in memory --------------------------------------------------------------------

@dataclass
class FunctionVector:
    """A vector with the layer it is injected at. ``heads`` (``(layer, head, AIE)``), ``aie``
    (``[layers, heads]``), ``split`` and ``metrics`` are set when it was extracted here."""

    relation: str
    vector: torch.Tensor
    layer: int
    heads: list[tuple[int, int, float]] = field(default_factory=list)
    aie: torch.Tensor | None = None
    split: "Split | None" = None
    metrics: dict = field(default_factory=dict)
    mean: torch.Tensor | None = None         # [layers, heads, head_dim] mean head activations
    seed: int = 0
    template: str | None = None
    config: dict = field(default_factory=dict)  # the extract.* settings it was made with
    n_corrupt_used: int = 0


@dataclass
class CompositeVector:
    """A composite FV for one source pair ``a:b``: ``vector = sum_i weights[i] * bank[i]``.

    ``scores[i]`` is ``log P(b | zero-shot prompt of a, basis vector i injected)``."""

    a: str
    b: str
    vector: torch.Tensor
    layer: int
    names: list[str]
    scores: torch.Tensor
    weights: torch.Tensor

    def top(self, n: int = 3) -> list[tuple[str, float]]:
        """The ``n`` basis relations with the largest weights, as ``(name, weight)``."""
        idx = self.weights.argsort(descending=True)[:n]
        return [(self.names[int(i)], float(self.weights[i])) for i in idx]


# -- model and data ---------------------------------------------------------------------------------

def load_model(name: str = "gemma3-270m", **kw: Any) -> "FrozenLM":
    """The frozen LM, loaded as every job loads it (:func:`fvtrain.models.load_model`).

    ``name``: ``gemma3-270m`` (embedded), ``tiny-<family>``, a hub id, a local folder or a
    ``.gguf`` file; ``kw``: ``dtype``, ``device``, ``device_map``, ``revision``, ``self_check`` ...

    >>> lm = load_model("tiny-llama")         # a seeded random 4-layer Llama, for smoke runs
    >>> lm.n_layers, lm.d_model
    """
    from fvtrain.models import load_model as _load

    return _load(name, **kw)


def read_data(path: str | Path = "builtin", relations: str | Iterable[str] | None = None,
              format: str | None = None) -> "DataSet":
    """Relations, analogies and judgments of ``path`` (``"builtin"``: the shipped set), as
    ``data.path`` / ``data.relations`` / ``data.format`` read them.

    >>> ds = read_data(relations=["antonym"])
    >>> ds.relations["antonym"].pairs[:3]        # Pair(x, answers)
    """
    from fvtrain.data import load

    return load(path, format, relations)


def split(relation: "Relation", n_train: int = 20, n_val: int | None = None, seed: int = 0) -> "Split":
    """The seeded train / val / test split every job makes (:func:`fvtrain.data.split_relation`)."""
    from fvtrain.data.splits import split_relation

    return split_relation(relation, n_train, n_val, seed)


# -- configs ----------------------------------------------------------------------------------------

_PLAIN = re.compile(r"^[A-Za-z0-9_./:+~@-]*[A-Za-z0-9_/~@-]$|^$")


def _value(v: Any) -> str:
    """A Python value as a Hydra override value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, Path):
        v = str(v)
    if isinstance(v, str):
        if _PLAIN.match(v) and v.lower() not in ("null", "true", "false") and not _is_number(v):
            return v
        return "'" + v.replace("\\", "\\\\").replace("'", "\\'") + "'"
    if isinstance(v, Mapping):
        return "{" + ",".join(f"{k}:{_value(x)}" for k, x in v.items()) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} ({type(v).__name__}) as a Hydra override value")


def _is_number(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


def override_strings(overrides: Overrides) -> list[str]:
    """Hydra override strings from a mapping (``{"trainer.max_epochs": 2}``) or strings."""
    if overrides is None:
        return []
    if isinstance(overrides, str):
        return [overrides]
    if isinstance(overrides, Mapping):
        return [f"{k}={_value(v)}" for k, v in overrides.items()]
    return [str(o) for o in overrides]


def _model_overrides(lm: Any, stage: str) -> list[str]:
    """Overrides that make the config describe ``lm`` (a loaded model or a model name)."""
    if lm is None:
        return []
    if isinstance(lm, (str, Path)):
        return [f"model={_value(str(lm))}"]
    from fvtrain.runtime import LazyModel

    if isinstance(lm, LazyModel):
        return []
    out = [f"model={_value(lm.model_id)}"]
    device = getattr(lm, "device", None)
    if isinstance(device, torch.device) and device.type == "cuda":
        index = device.index or 0
        out.append(f"model.device=cuda:{index}")
        if stage == "train":  # the trainer moves the frozen LM to its own device
            out += ["trainer.accelerator=gpu", f"trainer.devices=[{index}]"]
    return out


def job_config(stage: str, overrides: Overrides = None, lm: Any = None,
               out: str | Path | None = None) -> "DictConfig":
    """The config the ``stage`` command would run with (``extract``, ``train``, ``compose``,
    ``eval``): ``conf/<stage>.yaml`` composed with ``model=<lm>`` then ``overrides``.

    >>> cfg = job_config("train", {"trainer.max_epochs": 2}, lm="tiny-llama")
    >>> cfg.trainer.max_epochs, cfg.model.name
    """
    from fvtrain.config import compose

    if stage not in CONFIGS:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(CONFIGS)}")
    return compose(CONFIGS[stage], _model_overrides(lm, stage) + override_strings(overrides),
                   output_dir=out)


def _run_folder(stage: str, out: str | Path | None) -> Path:
    """``out``, or a new ``$FVTRAIN_OUTPUT_DIR/<stage>/<date>/<time>`` (default root: outputs/)."""
    if out is not None:
        return Path(out)
    root = Path(os.environ.get("FVTRAIN_OUTPUT_DIR", "outputs")) / stage / time.strftime("%Y-%m-%d")
    base = root / time.strftime("%H-%M-%S")
    folder, n = base, 1
    while folder.exists():
        folder, n = base.with_name(f"{base.name}_{n}"), n + 1
    return folder


def _prepare(stage: str, lm: Any, out: str | Path | None, overrides: Overrides):
    """(config, run folder, model-like) for a stage job."""
    from fvtrain.runtime import LazyModel

    folder = _run_folder(stage, out)
    cfg = job_config(stage, overrides, lm, folder)
    model = LazyModel(cfg.model) if isinstance(lm, (str, Path)) or lm is None else lm
    return cfg, folder, model


def _folder(x: Any) -> Path:
    """A run folder from a path or a stage result (its ``out``)."""
    return Path(getattr(x, "out", x))


def _template(template: "PromptTemplate | str | None") -> "PromptTemplate":
    from fvtrain.prompts import PromptTemplate

    if template is None:
        return PromptTemplate()
    return template if isinstance(template, PromptTemplate) else PromptTemplate(str(template))


# -- function vectors -------------------------------------------------------------------------------

def _as_split(relation: Any, data: str | Path, n_train: int, n_val: int | None, seed: int) -> "Split":
    from fvtrain.data.splits import Split, split_relation
    from fvtrain.data.types import Pair, Relation

    if isinstance(relation, Split):
        return relation
    if isinstance(relation, str):
        relation = read_data(data, [relation]).relations[relation]
    elif not isinstance(relation, Relation):
        pairs = [p if isinstance(p, Pair) else
                 Pair(p[0], tuple(p[1]) if isinstance(p[1], (list, tuple)) else tuple(str(p[1]).split("/")))
                 for p in relation]
        relation = Relation("pairs", tuple(pairs))
    return split_relation(relation, n_train, n_val, seed)


def extract_fv(
    lm: "FrozenLM",
    relation: "str | Relation | Split | Sequence[tuple[str, str]]",
    *,
    layer: int | None = None,
    n_prompts: int | None = None,
    n_corrupt: int | None = None,
    n_shots: int | None = None,
    k: int | None = None,
    seed: int = 0,
    n_train: int = 20,
    n_val: int | None = None,
    data: str | Path = "builtin",
    template: "PromptTemplate | str | None" = None,
    overrides: Overrides = None,
) -> FunctionVector:
    """The function vector of one relation, by causal mediation on its train split
    (:func:`fvtrain.extraction.job.extract_relation`, what ``fvtrain-extract`` runs per relation).

    ``relation``: a relation name in ``data``, a :class:`~fvtrain.data.Relation`, a ready
    :class:`~fvtrain.data.Split`, or ``(x, y)`` pairs (``y`` may be ``"a/b"`` or a list of
    accepted answers). The split is seeded as in the jobs (``n_train``, ``n_val``, ``seed``).
    Counts left as None take ``conf/extract/default.yaml`` (100 prompts, 25 corrupted, 10 shots,
    k=10); ``overrides`` set other keys of ``extract.yaml`` (``{"extract.aie_impl": "reference"}``).
    ``layer`` defaults to ``lm.default_layer()``.

    >>> fv = extract_fv(lm, "antonym", n_prompts=10, n_corrupt=5)
    >>> fv.vector.shape, fv.layer, fv.heads[:3]      # heads: (layer, head, AIE), best first
    """
    from omegaconf import OmegaConf

    from fvtrain.extraction.job import extract_relation
    from fvtrain.runtime import seed_everything

    given = {"n_prompts": n_prompts, "n_corrupt": n_corrupt, "n_shots": n_shots, "k": k}
    ex = {f"extract.{key}": v for key, v in given.items() if v is not None}
    cfg = job_config("extract", override_strings(ex) + override_strings(overrides))
    sp = _as_split(relation, data, n_train, n_val, seed)
    layer = lm.check_layer(int(layer)) if layer is not None else lm.default_layer()
    t = _template(template)
    seed_everything(seed)
    got = extract_relation(lm, sp, cfg.extract, t, seed, layer)
    return FunctionVector(got.relation, got.vector, layer, list(got.heads), got.aie, sp, mean=got.mean,
                          seed=seed, template=t.template, config=OmegaConf.to_container(cfg.extract),
                          n_corrupt_used=got.n_corrupt_used)


def save_fv(lm: "FrozenLM", fvs: "FunctionVector | Iterable[FunctionVector]", folder: str | Path) -> Path:
    """Write extracted FVs as an extraction run writes them (``folder/vectors/NAME.safetensors`` +
    manifest, ``folder/aie/NAME.safetensors``), so that :func:`finetune` (``fv_source``),
    :func:`load_bank` and :func:`evaluate` read them like any run's. Returns ``folder/vectors``.

    >>> save_fv(lm, [fv], "runs/my_fvs")
    """
    from omegaconf import OmegaConf

    from fvtrain import runs
    from fvtrain.extraction.job import Extracted, save_extracted

    folder = Path(folder)
    for fv in [fvs] if isinstance(fvs, FunctionVector) else list(fvs):
        if fv.split is None or fv.mean is None or fv.aie is None:
            raise ValueError(f"FV {fv.relation!r} was not made by extract_fv (no split or activations)")
        ex = Extracted(fv.relation, fv.vector, list(fv.heads), fv.aie, fv.mean, fv.layer,
                       metrics={"layer": fv.layer, "heads": [list(h) for h in fv.heads], **fv.metrics},
                       n_corrupt_used=fv.n_corrupt_used)
        save_extracted(folder, lm, ex, fv.split, _template(fv.template), OmegaConf.create(fv.config), fv.seed)
    return folder / runs.VECTORS


def evaluate_fv(lm: "FrozenLM", fv: FunctionVector, pairs: str = "test", n_shots: int = 10,
                sweep: bool = False, seed: int = 0, template: "PromptTemplate | str | None" = None) -> dict:
    """Accuracy of ``fv`` on its split's ``pairs`` (:func:`fvtrain.extraction.job.evaluate_relation`):
    zero-shot and shuffled-ICL without / with the vector, clean ICL, and with ``sweep`` every layer.

    >>> evaluate_fv(lm, fv)["zero_shot"]          # {'none': {acc, prob, n}, 'fv': {...}}
    """
    from fvtrain.extraction.job import evaluate_relation

    if fv.split is None:
        raise ValueError("this vector has no split to evaluate on: extract it with extract_fv")
    out = evaluate_relation(lm, fv.split, fv.vector, fv.layer, _template(template), n_shots, seed,
                            sweep=sweep, pairs=pairs)
    fv.metrics.update(out)
    return out


# -- stage runs -------------------------------------------------------------------------------------

def _relations_override(relations: str | Iterable[str] | None, key: str = "data.relations") -> dict:
    if relations is None:
        return {}
    return {key: [relations] if isinstance(relations, str) else list(relations)}


def extract(lm: Any, relations: str | Iterable[str] | None = None, out: str | Path | None = None, *,
            overrides: Overrides = None) -> "ExtractResult":
    """An extraction run (what ``fvtrain-extract`` runs): FVs of ``relations`` (None: every relation
    of ``data.path``) in ``out/vectors/``, metrics, splits and figures. ``lm``: a loaded model or a
    model name. ``out`` defaults to a new ``outputs/extract/<date>/<time>``.

    >>> ext = extract(lm, ["antonym"], "runs/ext", overrides={"extract.n_prompts": 4})
    >>> ext.vectors                         # runs/ext/vectors
    """
    from fvtrain.extraction import job

    cfg, folder, model = _prepare("extract", lm, out, [*override_strings(_relations_override(relations)),
                                                       *override_strings(overrides)])
    return job.run(cfg, folder, model)


def finetune(lm: Any, relations: str | Iterable[str] | None = None, out: str | Path | None = None, *,
             fv_source: Any = None, max_epochs: int | None = None,
             overrides: Overrides = None) -> "TrainResult":
    """FFV training (what ``fvtrain-train`` runs): one vector per relation trained with the LM
    frozen, starting from the FVs of ``fv_source``: an extraction run (folder or result), a folder
    of vectors, or :class:`FunctionVector` objects from :func:`extract_fv` (saved first under
    ``out/extraction/``; ``relations`` defaults to theirs). Without ``fv_source`` the FVs are
    extracted first with the ``extract.*`` settings. Writes ``out/bank/`` (the basis bank),
    ``metrics.json`` (zero-shot test accuracy of none / FV / FFV / ICL), checkpoints and logs;
    ``out`` defaults to a new ``outputs/train/<date>/<time>``. FVs made on another split than the
    run's (``data.n_train``, ``data.n_val``, ``seed``) are refused.

    >>> ffv = finetune(lm, ["antonym", "plural"], "runs/train", max_epochs=2)
    >>> ffv.metrics["zero_shot_acc"]["mean"]          # {'none': ..., 'fv': ..., 'ffv': ..., 'icl': ...}
    >>> ffv = finetune(lm, fv_source=[fv_antonym, fv_plural], out="runs/train2")
    """
    from fvtrain import runs
    from fvtrain.training import job

    fvs = None
    if isinstance(fv_source, FunctionVector):
        fv_source = [fv_source]
    if isinstance(fv_source, (list, tuple)) and all(isinstance(f, FunctionVector) for f in fv_source):
        fvs, fv_source = list(fv_source), None
        if relations is None:
            relations = [f.relation for f in fvs]
    extra = dict(_relations_override(relations))
    if max_epochs is not None:
        extra["trainer.max_epochs"] = int(max_epochs)
    cfg, folder, model = _prepare("train", lm, out, [*override_strings(extra), *override_strings(overrides)])
    if fvs is not None:
        from fvtrain.runtime import obtain

        fv_source = save_fv(obtain(model), fvs, folder / runs.EXTRACTION)
    return job.run(cfg, folder, model, fv_source=None if fv_source is None else _folder(
        getattr(fv_source, "vectors", None) or fv_source))


def load_bank(path: Any, relations: str | Iterable[str] | None = None) -> "BasisBank":
    """The basis bank of a training run (``bank/``), an extraction run (``vectors/``), a stage
    result, a folder of vectors (:func:`fvtrain.composition.load_bank`) or a loaded bank;
    ``relations`` keeps those, in that order.

    >>> bank = load_bank(ffv)
    >>> bank.names, bank.layer, bank.vectors.shape
    """
    from fvtrain.composition import load_bank as _load
    from fvtrain.composition.bank import BasisBank

    if isinstance(path, BasisBank):
        return path.select(relations)
    if hasattr(path, "bank") and isinstance(getattr(path, "bank"), Path):
        path = path.bank
    elif hasattr(path, "vectors") and isinstance(getattr(path, "vectors"), Path):
        path = path.vectors
    return _load(_folder(path), relations)


def cfv(lm: "FrozenLM", bank: Any, a: str, b: str, scheme: str = "softmax", temperature: float = 1.0, *,
        template: "PromptTemplate | str | None" = None, max_rows: int = 64) -> CompositeVector:
    """The composite FV for the source pair ``a:b``: every basis vector is scored by
    ``log P(b | zero-shot prompt of a, vector injected)`` in one batched forward
    (:func:`fvtrain.composition.score_pairs`), the scheme (``softmax`` with ``temperature``,
    ``uniform`` or ``top1``) turns the scores into weights, and ``CFV = sum_i w_i basis_i``.
    Apply it to C with :func:`complete`. (The trained ``affine`` scheme: :func:`solve_analogies`.)

    >>> v = cfv(lm, bank, "hot", "cold")
    >>> v.top(2)                                   # [('antonym', 0.9...), ('plural', 0.0...)]
    >>> complete(lm, "tall", v)
    """
    from fvtrain.composition import compose, make_scheme, score_pairs

    bank = load_bank(bank)
    bank.check_compatible(lm)
    scores = score_pairs(lm, [(a, b)], bank.vectors, bank.layer, _template(template), 1, max_rows)
    weights = make_scheme(scheme, temperature).weights(scores)
    return CompositeVector(a, b, compose(weights, bank.vectors)[0], bank.layer, list(bank.names),
                           scores[0], weights[0])


def solve_analogies(lm: Any, bank: Any, out: str | Path | None = None, *, scheme: str = "affine",
                    analogies: str | Path = "builtin", overrides: Overrides = None) -> "ComposeResult":
    """The composition run (what ``fvtrain-compose`` runs): every analogy A:B :: C:D of
    ``analogies`` solved with the CFVs of ``bank`` under ``scheme`` (``composition=<scheme>``:
    uniform, softmax, top1, affine) beside the baselines; metrics and ``predictions.jsonl`` in
    ``out`` (default a new ``outputs/compose/<date>/<time>``).

    >>> res = solve_analogies(lm, ffv, "runs/compose", scheme="softmax",
    ...                       overrides={"analogies.max_items": 20})
    >>> res.metrics["methods"]["softmax"]
    """
    from fvtrain.composition import job

    basis = str(bank) if isinstance(bank, (str, Path)) else load_bank(bank).path
    extra = {"composition": scheme, "analogies.path": analogies, "basis.path": basis}
    cfg, folder, model = _prepare("compose", lm, out, [*override_strings(extra), *override_strings(overrides)])
    return job.run(cfg, folder, model, basis=basis)


def evaluate(lm: Any, fv: Any = None, ffv: Any = None, out: str | Path | None = None, *,
             judgments: str | Path | None = None, overrides: Overrides = None) -> "EvalResult":
    """The evaluation run (what ``fvtrain-eval`` runs): logit-lens decoding of the FV and / or FFV
    vectors (run folders, stage results or folders of vectors) and, with ``judgments`` (human
    similarity ratings), their alignment with people. ``out`` defaults to a new
    ``outputs/eval/<date>/<time>``.

    >>> res = evaluate(lm, fv=ffv, ffv=ffv, out="runs/eval")   # a training run holds both kinds
    >>> res.metrics["decoding"]
    """
    from fvtrain.evaluation import job

    extra: dict[str, Any] = {}
    if judgments is not None:
        extra["judgments.path"] = str(judgments)
    cfg, folder, model = _prepare("eval", lm, out, [*override_strings(extra), *override_strings(overrides)])
    vectors = {k: _folder(v) for k, v in (("fv", fv), ("ffv", ffv)) if v is not None}
    return job.run(cfg, folder, model, vectors=vectors or None)


# -- using a vector ---------------------------------------------------------------------------------

def _vector_and_layer(lm: "FrozenLM", vector: Any, layer: int | None) -> tuple[torch.Tensor | None, int | None]:
    if vector is None:
        return None, None
    if isinstance(vector, torch.Tensor):
        v = vector
    else:
        v = vector.vector
        if layer is None:
            layer = int(vector.layer)
    if v.dim() != 1:
        raise ValueError(f"expected one vector of size d_model, got shape {tuple(v.shape)}")
    return v, lm.check_layer(int(layer)) if layer is not None else lm.default_layer()


def generate(lm: "FrozenLM", prompts: str | Sequence[str], vector: Any = None, layer: int | None = None,
             max_new_tokens: int = 5) -> str | list[str]:
    """Greedy continuations of raw ``prompts``, with ``vector`` (a tensor, a
    :class:`FunctionVector` or a :class:`CompositeVector`) added to block ``layer``'s output at
    the prompt's last token (:meth:`FrozenLM.generate`). A vector object brings its own layer; a
    bare tensor goes to ``layer`` or ``lm.default_layer()``. One prompt in, one string out.

    >>> generate(lm, "Q: hot\\nA:", fv, max_new_tokens=3)
    """
    one = isinstance(prompts, str)
    v, layer = _vector_and_layer(lm, vector, layer)
    texts = lm.generate([prompts] if one else list(prompts), max_new_tokens=max_new_tokens,
                        vector=v, layer=layer)
    return texts[0] if one else texts


def complete(lm: "FrozenLM", x: str | Sequence[str], vector: Any = None, layer: int | None = None,
             max_new_tokens: int = 3, template: "PromptTemplate | str | None" = None) -> str | list[str]:
    """The answer to the zero-shot prompt of ``x`` (``Q: x\\nA:``), with ``vector`` injected as in
    :func:`generate`: the continuation up to its first line break, stripped.

    >>> complete(lm, "hot")            # the model alone
    >>> complete(lm, "hot", fv)        # with the antonym FV
    """
    from fvtrain.prompts import zero_shot

    t = _template(template)
    one = isinstance(x, str)
    words = [x] if one else list(x)
    texts = generate(lm, [zero_shot(t, w) for w in words], vector, layer, max_new_tokens)
    answers = [s.strip().split("\n", 1)[0].strip() if s.strip() else "" for s in texts]
    return answers[0] if one else answers
