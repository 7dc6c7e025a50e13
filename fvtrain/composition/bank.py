"""The basis bank: a folder of saved vectors (one per relation) that composition combines.

A bank is read from

* a training run's folder (``<run>/bank/``, FFVs) or an extraction run's folder (``<run>/vectors/``,
  FVs); ``bank/`` wins when both exist;
* or any folder of vectors written by :func:`fvtrain.artifacts.save_vector`.

Folders and files are found and read through :mod:`fvtrain.runs` (a vector with only one of its two
files is an error); its errors reach the caller as :class:`BankError`.

Every vector's manifest must name the same model (id and revision), the same injection layer and
the same ``d_model``: composing vectors made for different residual streams is meaningless, so a
mixed bank is an error that names the odd vector out.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch

from fvtrain import runs
from fvtrain.errors import ArtifactError

BANK_SUBDIRS = runs.BASIS_FOLDERS


class BankError(ArtifactError):
    """A basis bank that cannot be composed: missing, empty, mixed or incompatible."""


def _bank_error(err: ArtifactError) -> BankError:
    return err if isinstance(err, BankError) else BankError(str(err))


@dataclass
class BasisBank:
    """``vectors[i]`` is the basis vector of relation ``names[i]``; all share model and layer."""

    names: list[str]
    vectors: torch.Tensor  # [N, d_model], float32
    manifests: list[dict]
    layer: int
    model_id: str | None
    model_revision: str | None
    path: str
    kinds: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.names)

    @property
    def d_model(self) -> int:
        return int(self.vectors.shape[1])

    @property
    def kind(self) -> str:
        """``ffv``, ``fv`` or ``mixed`` (FVs and FFVs in one bank are allowed, and reported)."""
        kinds = set(self.kinds) or {"unknown"}
        return kinds.pop() if len(kinds) == 1 else "mixed"

    def index(self, relation: str) -> int | None:
        try:
            return self.names.index(relation)
        except ValueError:
            return None

    def select(self, relations: str | Iterable[str] | None) -> "BasisBank":
        """Keep only the named relations, in the order given (``None`` keeps all)."""
        if relations is None:
            return self
        if isinstance(relations, str):
            relations = [r.strip() for r in relations.split(",") if r.strip()]
        relations = list(dict.fromkeys(relations))
        if not relations:
            return self
        missing = [r for r in relations if r not in self.names]
        if missing:
            raise BankError(
                f"basis.relations names {', '.join(map(repr, missing))}, not in the bank at {self.path} "
                f"(it holds: {', '.join(self.names)})"
            )
        idx = [self.names.index(r) for r in relations]
        return BasisBank([self.names[i] for i in idx], self.vectors[idx].clone(),
                         [self.manifests[i] for i in idx], self.layer, self.model_id,
                         self.model_revision, self.path, [self.kinds[i] for i in idx])

    def check_compatible(self, lm, check_model: bool = True) -> None:
        """The bank must have been made for ``lm``: same d_model, a valid layer, same model id."""
        if self.d_model != lm.d_model:
            raise BankError(
                f"the bank at {self.path} holds vectors of size {self.d_model}, but {lm.model_id} has "
                f"d_model {lm.d_model}: it was made for another model"
            )
        if not 0 <= self.layer < lm.n_layers:
            raise BankError(
                f"the bank at {self.path} injects at layer {self.layer}, but {lm.model_id} has "
                f"{lm.n_layers} layers (0..{lm.n_layers - 1})"
            )
        if not check_model:
            return
        if self.model_id is not None and self.model_id != lm.model_id:
            raise BankError(
                f"the bank at {self.path} was made with model {self.model_id!r}, but this run loads "
                f"{lm.model_id!r}; run with model={self.model_id} (or basis.check_model=false if you "
                "know they are the same weights)"
            )
        rev = getattr(lm.source, "revision", None)
        if self.model_revision is not None and rev is not None and self.model_revision != rev:
            raise BankError(
                f"the bank at {self.path} was made with revision {self.model_revision!r} of "
                f"{self.model_id}, but this run loads revision {rev!r}"
            )

    def describe(self) -> dict:
        return {
            "path": self.path, "n": len(self), "relations": list(self.names), "layer": self.layer,
            "model_id": self.model_id, "model_revision": self.model_revision, "d_model": self.d_model,
            "kind": self.kind, "norms": [round(float(n), 4) for n in self.vectors.norm(dim=1)],
        }


def resolve_bank_folder(path: str | Path) -> Path:
    """``<run>/bank``, then ``<run>/vectors``, else ``path`` itself (which must hold vectors)."""
    if path is None or (isinstance(path, str) and not path.strip()):
        raise BankError(
            "no basis bank given: set basis.path to a training run's folder, an extraction run's "
            "folder or a folder of vectors (e.g. basis.path=outputs/extract/2026-01-01/12-00-00)"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise BankError(f"basis.path {str(path)!r} does not exist")
    if not p.is_dir():
        raise BankError(f"basis.path {str(path)!r} is a file; give the folder that holds the vectors")
    try:
        found = runs.find_vector_folder(p, BANK_SUBDIRS)
    except ArtifactError as err:
        raise _bank_error(err) from err
    return found[0] if found is not None else p


def load_bank(path: str | Path, relations: str | Iterable[str] | None = None) -> BasisBank:
    """Read and check a basis bank (see the module docstring); ``relations`` selects a subset."""
    folder = resolve_bank_folder(path)
    try:
        files = runs.vector_files(folder)
    except ArtifactError as err:
        raise _bank_error(err) from err
    if not files:
        stray = sorted(p.name for p in folder.glob("*.safetensors"))
        hint = (f" ({len(stray)} .safetensors file(s) without a .json manifest beside them)"
                if stray else "")
        raise BankError(
            f"the basis bank at {folder} is empty: no vectors (NAME.safetensors + NAME.json){hint}. "
            f"Point basis.path at a run folder with {' or '.join(b + '/' for b in BANK_SUBDIRS)} or at "
            "a folder of saved vectors"
        )
    try:
        vs = runs.load_vectors(folder, what="bank")
        for f, man in zip(files, vs.manifests):
            if "layer" not in man:
                raise BankError(f"basis vector {f.parent / (f.stem + '.json')} has no 'layer' in its "
                                "manifest; composition needs the injection layer of every vector")
        model_id, revision = vs.one("model_id", "bank"), vs.one("model_revision", "bank")
        layer = runs.single_value([int(m["layer"]) for m in vs.manifests], vs.names, "layer", "bank", folder)
    except BankError:
        raise
    except ArtifactError as err:
        raise _bank_error(err) from err
    names, vecs, mans = vs.names, vs.vectors, vs.manifests
    bank = BasisBank(names, vecs, mans, int(layer), model_id, revision, str(folder),
                     [str(m.get("kind", "unknown")) for m in mans])
    return bank.select(relations)
