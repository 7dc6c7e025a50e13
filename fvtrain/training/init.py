"""Initial vectors for FFV training: extracted FVs read from disk (checked), random, zeros, or a
baseline vector (task vector, mean difference, random with the residual stream's norm)."""

from __future__ import annotations

import math
import random
from pathlib import Path
from typing import Mapping, Sequence

import torch

from fvtrain import runs
from fvtrain.errors import ArtifactError, ConfigError

# Baseline vectors (fvtrain.training.baselines) an FFV can also start from; named here so that
# this module needs no import of the one that builds them.
BASELINE_INITS = ("task_vector", "mean_diff", "random_rms")
INITS = ("fv", "random", "zeros", *BASELINE_INITS)


class InitArtifactError(ArtifactError):
    """An init vector that does not belong to this run (other model, size, layer or split)."""


def vector_dir(path: str | Path) -> Path:
    """The folder holding ``<relation>.safetensors`` + ``.json``: a run folder's ``vectors/``
    (extraction) or ``bank/`` (training), or that folder itself."""
    found = runs.find_vector_folder(path, runs.INIT_FOLDERS)
    if found is not None:
        return found[0]
    if not Path(path).expanduser().exists():
        raise InitArtifactError(f"ffv.fv_run={str(path)!r} does not exist")
    raise InitArtifactError(
        f"ffv.fv_run={str(path)!r} holds no vectors (expected <relation>.safetensors + .json in it, or "
        "in its vectors/ folder, as written by fvtrain-extract)"
    )


def load_init_vectors(
    path: str | Path,
    relations: Sequence[str],
    *,
    model_id: str,
    d_model: int,
    layer: int | None = None,
    split_hashes: dict[str, str] | None = None,
    revision: str | None = None,
) -> tuple[torch.Tensor, dict[str, dict], Path]:
    """``[relations, d_model]`` vectors from an extraction run, every manifest checked.

    Refuses (with :class:`InitArtifactError`) vectors made for another model id or revision,
    another ``d_model``, another layer (when ``layer`` is given), or another split of the
    relation (its test pairs might have been the extraction's train pairs).
    """
    folder = vector_dir(path)
    vecs, mans = [], {}
    from fvtrain.artifacts import file_stem

    by_stem = {f.stem: f for f in runs.vector_files(folder)}
    files = {r: by_stem[file_stem(r)] for r in relations if file_stem(r) in by_stem}
    missing = [r for r in relations if r not in files]
    if missing:
        have = sorted(by_stem)
        raise InitArtifactError(
            f"{folder} has no vector for relation(s) {', '.join(missing)} (it has: {', '.join(have) or 'none'}); "
            "extract them first or drop ffv.fv_run to let training run the extraction"
        )
    for r in relations:
        v, man = runs.read_vector(files[r])
        where = folder / f"{r}.json"
        their_model = man.get("model_id")
        if their_model != model_id:
            raise InitArtifactError(
                f"init vector {where} was made with model {their_model!r}, but this run uses "
                f"{model_id!r}; extract vectors with this model (or pick a matching ffv.fv_run)"
            )
        their_rev = man.get("model_revision")
        if revision is not None and their_rev is not None and their_rev != revision:
            raise InitArtifactError(
                f"init vector {where} was made with revision {their_rev!r} of {model_id}, but this run "
                f"loads revision {revision!r}"
            )
        their_d = int(man.get("d_model", v.numel()))
        if their_d != d_model or v.dim() != 1 or v.numel() != d_model:
            raise InitArtifactError(
                f"init vector {where} has d_model {their_d} (shape {tuple(v.shape)}), but {model_id} has "
                f"d_model {d_model}; was it made for another model?"
            )
        if layer is not None and man.get("layer") is not None and int(man["layer"]) != int(layer):
            raise InitArtifactError(
                f"init vector {where} was extracted for layer {man['layer']}, but ffv.layer={layer}; "
                f"set ffv.layer={man['layer']} (or null to follow the vectors)"
            )
        if split_hashes is not None and man.get("split_hash") not in (None, split_hashes[r]):
            raise InitArtifactError(
                f"init vector {where} was extracted on another split of {r!r} (split hash "
                f"{str(man['split_hash'])[:12]}... vs {split_hashes[r][:12]}...): its train pairs may be "
                "this run's test pairs. Use the same data, data.n_train, data.n_val and seed as the "
                "extraction, or set ffv.allow_split_mismatch=true"
            )
        if not torch.isfinite(v).all():
            raise InitArtifactError(f"init vector {where} has NaN or infinite entries")
        vecs.append(v.float())
        mans[r] = man
    return torch.stack(vecs), mans, folder


def common_layer(manifests: dict[str, dict]) -> int | None:
    layers = {int(m["layer"]) for m in manifests.values() if m.get("layer") is not None}
    if len(layers) > 1:
        raise InitArtifactError(f"the init vectors were extracted at different layers {sorted(layers)}; "
                                "set ffv.layer to the one to train at")
    return layers.pop() if layers else None


def random_like(norms: torch.Tensor, relations: Sequence[str], d_model: int, seed: int) -> torch.Tensor:
    """Gaussian directions scaled to ``norms`` (one per relation), seeded per relation name."""
    rows = []
    for r, n in zip(relations, norms.tolist()):
        g = torch.Generator().manual_seed(random.Random(f"{seed}-{r}-ffv-random-init").getrandbits(63))
        v = torch.randn(d_model, generator=g)
        rows.append(v / v.norm() * (n if math.isfinite(n) and n > 0 else 1.0))
    return torch.stack(rows)


def initial_vectors(kind: str, relations: Sequence[str], d_model: int, seed: int,
                    fv: torch.Tensor | None = None,
                    baselines: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
    """``fv`` (the extracted vectors), ``random`` (the FV's norm, or 1 without FVs), ``zeros``, or
    one of :data:`BASELINE_INITS` (``baselines[kind]``, built by :mod:`fvtrain.training.baselines`)."""
    if kind in BASELINE_INITS:
        if not baselines or kind not in baselines:
            raise ValueError(f"init={kind} needs the {kind} baseline vectors")
        return baselines[kind].detach().float().clone()
    if kind == "fv":
        if fv is None:
            raise ValueError("init=fv needs extracted function vectors")
        return fv.clone()
    if kind == "random":
        norms = fv.norm(dim=-1) if fv is not None else torch.ones(len(relations))
        return random_like(norms, relations, d_model, seed)
    if kind == "zeros":
        return torch.zeros(len(relations), d_model)
    raise ConfigError(f"ffv.init={kind!r}: use one of {', '.join(INITS)}")
