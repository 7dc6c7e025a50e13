"""Run artifacts on disk: vectors as safetensors + JSON manifest, JSON metrics; all atomic.

A vector ``NAME`` is two files, ``NAME.safetensors`` (tensor ``vector``) and ``NAME.json`` (the
manifest: model id and revision, layer, heads with AIE, template, split hash, seed, metrics, ...).
Every write goes to a temporary file in the same folder and is renamed into place, so a crash
never leaves half a file where a reader expects a whole one.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

FORMAT_VERSION = 1


def _atomic(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if hasattr(obj, "item") and callable(obj.item):
        return obj.item()
    return obj


def write_json(path: str | Path, obj: Any) -> Path:
    text = json.dumps(_jsonable(obj), indent=2, sort_keys=False) + "\n"
    return _atomic(Path(path), lambda tmp: Path(tmp).write_text(text))


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor]) -> Path:
    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return _atomic(Path(path), lambda tmp: save_file(cpu, tmp))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def save_vector(folder: str | Path, name: str, vector: torch.Tensor, manifest: dict) -> Path:
    """Write ``folder/name.safetensors`` and ``folder/name.json``; returns the tensor path."""
    folder = Path(folder)
    if vector.dim() != 1:
        raise ValueError(f"a vector must be 1-D, got shape {tuple(vector.shape)}")
    man = {"format_version": FORMAT_VERSION, "name": name, "d_model": int(vector.numel()),
           "norm": float(vector.float().norm()), **manifest}
    st = save_tensors(folder / f"{name}.safetensors", {"vector": vector.float()})
    write_json(folder / f"{name}.json", man)
    return st


def load_vector(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Read a vector saved by :func:`save_vector` (``path`` with or without suffix)."""
    p = Path(path)
    stem = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    st, js = stem.with_suffix(".safetensors"), stem.with_suffix(".json")
    if not st.is_file() or not js.is_file():
        raise FileNotFoundError(f"vector {stem} needs both {st.name} and {js.name}")
    return load_tensors(st)["vector"], read_json(js)


def list_vectors(folder: str | Path) -> list[Path]:
    """Every ``*.safetensors`` with a manifest beside it, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.safetensors") if p.with_suffix(".json").is_file())
