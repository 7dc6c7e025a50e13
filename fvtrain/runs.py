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

import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from fvtrain.artifacts import _atomic, load_vector, read_json, write_json
from fvtrain.errors import ArtifactError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
STAGES = ("extract", "train", "compose", "eval")

CONFIG = "config.yaml"
METRICS = "metrics.json"
SPLITS = "splits.json"
PIPELINE = "pipeline.json"
VECTORS = "vectors"
AIE = "aie"
BANK = "bank"
BANK_RANDOM = "bank_random"
EXTRACTION = "extraction"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"

# Where each use looks for vectors inside a run folder, in order. An FFV training run keeps the FVs
# it extracted itself under extraction/vectors (and names reused ones in metrics.json fv_source).
FV_FOLDERS = (VECTORS, f"{EXTRACTION}/{VECTORS}")
FFV_FOLDERS = (BANK,)
BASIS_FOLDERS = (BANK, VECTORS)        # composition: a training run's FFVs win over FVs
INIT_FOLDERS = (VECTORS, BANK)         # FFV init: an extraction run's FVs win over FFVs


# -- config and metrics --------------------------------------------------------------------------

def save_config(cfg: Any, out: str | Path) -> Path:
    """``out/config.yaml``: the resolved config of the run."""
    from omegaconf import OmegaConf

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


def read_vector(path: Path) -> tuple[torch.Tensor, dict]:
    """One vector and its manifest; a damaged file is an error that names it."""
    try:
        v, man = load_vector(path)
    except Exception as err:  # noqa: BLE001 - reported with the file name
        raise ArtifactError(f"cannot read vector {path}: {err}") from err
    if v.dim() != 1:
        raise ArtifactError(f"vector {path} has shape {tuple(v.shape)}; expected one 1-D vector")
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
        values = [m.get(key) for m in self.manifests]
        counts = Counter(values)
        if len(counts) <= 1:
            return values[0] if values else None
        common = counts.most_common(1)[0][0]
        odd = [f"{n} ({key}={v!r})" for n, v in zip(self.names, values) if v != common]
        raise ArtifactError(
            f"the {what} at {self.folder} mixes {key}s: most vectors have {key}={common!r}, but "
            + ", ".join(odd[:8]) + (" ..." if len(odd) > 8 else "")
            + f"; a {what} must hold vectors of one model at one layer"
        )


def load_vectors(folder: str | Path, run: str | Path | None = None) -> VectorSet:
    """Every vector of ``folder`` (one per relation; a relation twice is an error)."""
    folder = Path(folder)
    vecs, mans, names = [], [], []
    for f in vector_files(folder):
        v, man = read_vector(f)
        vecs.append(v)
        mans.append(man)
        names.append(str(man.get("relation") or f.stem))
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ArtifactError(f"{folder} holds several vectors for relation(s) {', '.join(dup)}; keep one "
                            "vector per relation")
    sizes = {int(v.numel()) for v in vecs}
    if len(sizes) > 1:
        raise ArtifactError(f"{folder} mixes vector sizes {sorted(sizes)}: vectors of several models")
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
