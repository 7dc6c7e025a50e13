"""The run folder: the one place that knows where a stage puts what, and reads it back with checks.

A stage's run folder holds::

    config.yaml          the resolved config
    metrics.json         {"stage": ..., "schema_version": ..., ...}: the stage's declared result
    splits.json          the seeded train/val/test split of every relation
    vectors/NAME.*       FVs (extraction): NAME.safetensors + NAME.json manifest
    aie/NAME.safetensors AIE and mean head activations (extraction)
    bank/NAME.*          FFVs, the basis bank composition reads (training)
    bank_random/NAME.*   the random-init baseline's FFVs (training)
    extraction/          the FVs a training run extracted itself (an extraction run folder)
    checkpoints/         trained vectors + optimiser state (training), combiner (composition)
    figures/             PNG figures

The main job puts one such folder per stage under its own (``extract/``, ``train/``, ...) beside
``pipeline.json``. Every stage reads vectors through :func:`load_vectors`, which applies one set of
checks (both files present, model id and revision, d_model, layer, split hashes).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import socket
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch

from fvtrain.artifacts import _atomic, read_json, write_json
from fvtrain.errors import ArtifactError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STAGES = ("extract", "train", "compose", "eval")

CONFIG = "config.yaml"
METRICS = "metrics.json"
SPLITS = "splits.json"
OUTCOMES = "test_outcomes.json"  # every test item's outcome per mode and method
PIPELINE = "pipeline.json"
VECTORS = "vectors"
AIE = "aie"
BANK = "bank"
BANK_RANDOM = "bank_random"
EXTRACTION = "extraction"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
LOCK = ".fvtrain.lock"

# Where each use looks for vectors inside a run folder, in order. An FFV training run keeps the FVs
# it extracted itself under extraction/vectors (and names reused ones in metrics.json fv_source).
FV_FOLDERS = (VECTORS, f"{EXTRACTION}/{VECTORS}")
FFV_FOLDERS = (BANK,)
BASIS_FOLDERS = (BANK, VECTORS)        # composition: a training run's FFVs win over FVs
INIT_FOLDERS = (VECTORS, BANK)         # FFV init: an extraction run's FVs win over FFVs


# -- one run per folder --------------------------------------------------------------------------

class RunFolderError(ArtifactError):
    """A run folder that belongs to another run (running now, or finished)."""


def _rank() -> int:
    """This process's rank in a multi-process run (0 when there is only one)."""
    for var in ("RANK", "LOCAL_RANK", "SLURM_PROCID"):
        if os.environ.get(var, "").isdigit():
            return int(os.environ[var])
    return 0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextmanager
def claim(out: str | Path, resume: bool = False) -> Iterator[Path]:
    """Hold ``out/.fvtrain.lock`` while a run writes into ``out``.

    A folder locked by a live process is refused, and so is a folder that already holds a finished
    run (its ``config.yaml``) unless ``resume`` (an interrupted run continued on purpose). A lock
    left by a process that died on this host is taken over. Only rank 0 of a multi-process run
    takes the lock; the other ranks write into the folder rank 0 holds.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if _rank() != 0:
        yield out
        return
    lock = out / LOCK
    me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                other = json.loads(lock.read_text())
            except (OSError, ValueError):
                other = {}
            if other.get("host") == me["host"] and isinstance(other.get("pid"), int) \
                    and not _alive(other["pid"]):
                log.warning("taking over the lock of %s left by process %s, which is gone", out, other["pid"])
                lock.unlink(missing_ok=True)
                continue
            raise RunFolderError(
                f"run folder {out} is in use by process {other.get('pid', '?')} on {other.get('host', '?')} "
                f"(since {other.get('started', '?')}); give this run its own folder (hydra.run.dir=...) "
                f"or wait for that run to finish. If no such run exists, delete {lock}"
            ) from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        if (out / CONFIG).is_file() and not resume:
            raise RunFolderError(
                f"run folder {out} already holds a run (its {CONFIG}); a new run would mix its files "
                "with the old ones. Give this run its own folder (hydra.run.dir=...), or resume the old "
                "one with ckpt_path=last"
            )
        yield out
    finally:
        lock.unlink(missing_ok=True)


def resuming(cfg: Any) -> bool:
    """Whether ``cfg`` continues an earlier run in its folder (``ckpt_path`` is set)."""
    return cfg.get("ckpt_path") not in (None, "", "null")


def owns_folder(job: Callable) -> Callable:
    """Decorate a stage job ``run(cfg, out, lm, ...)`` so that it holds its folder (:func:`claim`)."""
    @functools.wraps(job)
    def run(cfg: Any, out: str | Path, lm: Any, *args: Any, **kwargs: Any) -> Any:
        with claim(out, resume=resuming(cfg)):
            return job(cfg, Path(out), lm, *args, **kwargs)
    return run


# -- config and metrics --------------------------------------------------------------------------

def save_config(cfg: Any, out: str | Path) -> Path:
    """``out/config.yaml``: the resolved config of the run (written by rank 0 only, which holds the
    folder: another rank started first must not make the folder look finished)."""
    from omegaconf import OmegaConf

    if _rank() != 0:
        return Path(out) / CONFIG

    text = OmegaConf.to_yaml(cfg, resolve=True)
    return _atomic(Path(out) / CONFIG, lambda tmp: Path(tmp).write_text(text))


def write_metrics(out: str | Path, stage: str, metrics: Mapping[str, Any]) -> dict:
    """``out/metrics.json`` declaring its stage and schema version first; returns what was written."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    doc = {"stage": stage, "schema_version": SCHEMA_VERSION,
           **{k: v for k, v in metrics.items() if k not in ("stage", "schema_version")}}
    write_json(Path(out) / METRICS, doc)
    return doc


def read_metrics(folder: str | Path) -> dict:
    """The ``metrics.json`` of a stage's run folder, checked for a known stage and schema."""
    path = Path(folder) / METRICS
    if not path.is_file():
        raise ArtifactError(f"{folder} has no {METRICS}: it is not a finished fvtrain run folder")
    try:
        doc = read_json(path)
    except ValueError as err:
        raise ArtifactError(f"{path} is not valid JSON ({err}); rerun the stage that wrote it") from err
    stage = doc.get("stage") if isinstance(doc, dict) else None
    if stage not in STAGES:
        raise ArtifactError(f"{path} declares no known stage (got {stage!r}); it was written by another "
                            "program or an older fvtrain: rerun the stage")
    if int(doc.get("schema_version", 0)) > SCHEMA_VERSION:
        raise ArtifactError(f"{path} has schema version {doc['schema_version']}, newer than this fvtrain "
                            f"reads ({SCHEMA_VERSION}); upgrade fvtrain")
    return doc


def stage_of(folder: str | Path) -> str | None:
    """The stage a run folder declares, or None when it has no readable metrics.json."""
    try:
        return read_metrics(folder)["stage"]
    except ArtifactError:
        return None


def find_splits(*folders: Path | None) -> Path | None:
    """The first ``splits.json`` in ``folders``."""
    for d in folders:
        if d is not None and (Path(d) / SPLITS).is_file():
            return Path(d) / SPLITS
    return None


# -- vectors -------------------------------------------------------------------------------------

def vector_files(folder: str | Path) -> list[Path]:
    """Every vector in ``folder`` (``NAME.safetensors``), sorted by name; a vector with only one of its
    two files is an error, never skipped."""
    folder = Path(folder)
    st = {p.stem for p in folder.glob("*.safetensors")}
    js = {p.stem for p in folder.glob("*.json")}
    if st and js:
        lone_json, lone_st = sorted(js - st), sorted(st - js)
        if lone_json:
            raise ArtifactError(f"vector {folder / lone_json[0]}: {lone_json[0]}.json is there but "
                                f"{lone_json[0]}.safetensors is missing; rerun the stage that wrote it "
                                "or remove the manifest")
        if lone_st:
            raise ArtifactError(f"vector {folder / lone_st[0]}: {lone_st[0]}.safetensors has no "
                                f"{lone_st[0]}.json manifest beside it; rerun the stage that wrote it")
    return sorted(folder / f"{n}.safetensors" for n in st & js)


def find_vector_folder(path: str | Path, subfolders: Sequence[str]) -> tuple[Path, Path | None] | None:
    """``(folder of vectors, run folder or None)`` for ``path``: its first ``subfolders`` entry that
    holds vectors, else ``path`` itself when it holds vectors; None when neither does."""
    p = Path(str(path)).expanduser()
    for sub in subfolders:
        if (p / sub).is_dir() and vector_files(p / sub):
            return p / sub, p
    if p.is_dir() and vector_files(p):
        run = p.parent if p.name in (VECTORS, BANK, BANK_RANDOM) else None
        return p, run
    return None


def _vector_paths(path: Path) -> tuple[Path, Path]:
    """``(NAME.safetensors, NAME.json)`` for a vector given by either file or by ``NAME`` (a name
    may contain dots, so suffixes are cut by name, not by ``Path.with_suffix``)."""
    name = path.name
    for suffix in (".safetensors", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    return path.parent / f"{name}.safetensors", path.parent / f"{name}.json"


def read_vector(path: Path) -> tuple[torch.Tensor, dict]:
    """One vector and its manifest; a damaged or missing file is an error that names that file."""
    from fvtrain.artifacts import load_tensors

    path = Path(path)
    st, js = _vector_paths(path)
    stem = st.parent / st.name[: -len(".safetensors")]
    for f in (st, js):
        if not f.is_file():
            raise ArtifactError(f"vector {stem}: {f.name} is missing (a vector is {st.name} + {js.name}); "
                                "rerun the stage that wrote it")
    try:
        man = read_json(js)
    except (OSError, ValueError) as err:
        raise ArtifactError(f"manifest {js} is damaged ({err}); rerun the stage that wrote it") from err
    if not isinstance(man, dict):
        raise ArtifactError(f"manifest {js} is not a JSON object; rerun the stage that wrote it")
    try:
        v = load_tensors(st)["vector"]
    except Exception as err:  # noqa: BLE001 - safetensors raises several types; all mean "damaged"
        raise ArtifactError(f"vector file {st} is damaged ({type(err).__name__}: {err}); rerun the stage "
                            "that wrote it") from err
    if v.dim() != 1:
        raise ArtifactError(f"vector {st} has shape {tuple(v.shape)}; expected one 1-D vector")
    return v.float(), man


@dataclass
class VectorSet:
    """Vectors of one folder: ``vectors[i]`` belongs to relation ``names[i]``."""

    names: list[str]
    vectors: torch.Tensor   # [N, d_model] float32
    manifests: list[dict]
    folder: Path
    run: Path | None

    def __len__(self) -> int:
        return len(self.names)

    def as_dict(self) -> dict[str, torch.Tensor]:
        return {n: self.vectors[i] for i, n in enumerate(self.names)}

    def one(self, key: str, what: str = "set") -> Any:
        """The single value of manifest ``key`` across the set, or an error naming the odd ones."""
        return single_value([m.get(key) for m in self.manifests], self.names, key, what, self.folder)


def single_value(values: Sequence, names: Sequence[str], key: str, what: str, folder: Path) -> Any:
    """The one value ``values`` share (``values[i]`` belongs to ``names[i]``), or an error that names
    the odd ones: vectors of several models or layers cannot be used together."""
    counts = Counter(values)
    if len(counts) <= 1:
        return values[0] if values else None
    common = counts.most_common(1)[0][0]
    odd = [f"{n} ({key}={v!r})" for n, v in zip(names, values) if v != common]
    raise ArtifactError(
        f"the {what} at {folder} mixes {key}s: most vectors have {key}={common!r}, but "
        + ", ".join(odd[:8]) + (" ..." if len(odd) > 8 else "")
        + f"; a {what} must hold vectors of one model at one layer"
    )


def load_vectors(folder: str | Path, run: str | Path | None = None, what: str = "folder") -> VectorSet:
    """Every vector of ``folder`` (one per relation, all of one size; ``what`` names the folder in
    errors, e.g. "bank")."""
    folder = Path(folder)
    vecs, mans, names = [], [], []
    for f in vector_files(folder):
        v, man = read_vector(f)
        vecs.append(v)
        mans.append(man)
        names.append(str(man.get("relation") or f.stem))
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ArtifactError(f"the {what} at {folder} holds several vectors for relation(s) {', '.join(dup)}; "
                            "keep one vector per relation")
    single_value([int(v.numel()) for v in vecs], names, "d_model", what, folder)
    stacked = torch.stack(vecs) if vecs else torch.zeros(0, 0)
    return VectorSet(names, stacked, mans, folder, Path(run) if run is not None else None)


def check_manifest(where: Path, man: Mapping, *, model_id: str | None = None, revision: str | None = None,
                   d_model: int | None = None, layer: int | None = None, split_hash: str | None = None,
                   vector: torch.Tensor | None = None) -> None:
    """The one set of checks a vector must pass to be used by a run (each optional)."""
    if model_id is not None and man.get("model_id") != model_id:
        raise ArtifactError(f"vector {where} was made with model {man.get('model_id')!r}, but this run "
                            f"uses {model_id!r}")
    their_rev = man.get("model_revision")
    if revision is not None and their_rev is not None and their_rev != revision:
        raise ArtifactError(f"vector {where} was made with revision {their_rev!r} of {model_id}, but this "
                            f"run loads revision {revision!r}")
    if d_model is not None:
        their_d = int(man.get("d_model", vector.numel() if vector is not None else d_model))
        if their_d != d_model or (vector is not None and vector.numel() != d_model):
            raise ArtifactError(f"vector {where} has d_model {their_d}, but the model has d_model {d_model}")
    if layer is not None and man.get("layer") is not None and int(man["layer"]) != int(layer):
        raise ArtifactError(f"vector {where} was made for layer {man['layer']}, this run uses layer {layer}")
    if split_hash is not None and man.get("split_hash") not in (None, split_hash):
        raise ArtifactError(f"vector {where} was made on another split (split hash "
                            f"{str(man['split_hash'])[:12]}... vs {split_hash[:12]}...)")
    if vector is not None and not torch.isfinite(vector).all():
        raise ArtifactError(f"vector {where} has NaN or infinite entries")


@dataclass
class StageResult:
    """What a stage job returns: its run folder and the metrics it wrote there."""

    stage: str
    out: Path
    metrics: dict
