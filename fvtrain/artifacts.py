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

# Characters a relation name may keep in its file name; everything else (path separators, ``%``,
# control and shell-hostile characters) is percent-encoded, and so is a leading dot, so the
# mapping is injective and no name can point outside its folder.
_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-.,+=@#()[]{}'&!~")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(10)), *(f"lpt{i}" for i in range(10))}
MAX_NAME = 200


class UnsafeNameError(ValueError):
    """A name that cannot become a file name (empty, reserved or too long)."""


def file_stem(name: str) -> str:
    """The file name (without suffix) of the artifact called ``name``, e.g. a relation's vector.

    Ordinary names are kept as they are; path separators, ``..``, ``%`` and other unsafe
    characters are percent-encoded (``../x`` -> ``%2E.%2Fx``). Empty names, names
    reserved by Windows (``CON``, ``NUL``, ``COM1`` ...) and names over 200 characters are refused.
    The original name is kept in the manifest.
    """
    name = str(name)
    if not name.strip():
        raise UnsafeNameError(f"an empty name ({name!r}) cannot name a file; give the relation a name")
    out = "".join(c if c in _SAFE or (ord(c) > 127 and c.isalnum())
                  else "".join(f"%{b:02X}" for b in c.encode("utf-8")) for c in name)
    if out.startswith("."):
        out = "%2E" + out[1:]
    if out.split(".")[0].strip().lower() in _RESERVED:
        raise UnsafeNameError(f"the name {name!r} is reserved for devices on Windows and cannot name a "
                              "file; rename the relation")
    if len(out) > MAX_NAME:
        raise UnsafeNameError(f"the name {name[:40]!r}... is {len(out)} characters as a file name (at most "
                              f"{MAX_NAME}); shorten the relation name")
    return out


def name_of(stem: str) -> str:
    """The name a :func:`file_stem` came from."""
    from urllib.parse import unquote

    return unquote(stem)


def check_names(names: list[str] | tuple[str, ...], what: str = "relation") -> dict[str, str]:
    """``{name: file stem}`` for ``names``; two names that would share a file (also on a
    case-insensitive file system) are an error."""
    stems: dict[str, str] = {}
    seen: dict[str, str] = {}
    for n in names:
        stem = file_stem(n)
        other = seen.get(stem.lower())
        if other is not None and other != n:
            raise UnsafeNameError(f"{what}s {other!r} and {n!r} would be written to the same file "
                                  f"({stem}.*); rename one of them")
        seen[stem.lower()] = n
        stems[n] = stem
    return stems


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
    """Write ``folder/<stem>.safetensors`` and ``folder/<stem>.json`` (``stem = file_stem(name)``);
    returns the tensor path."""
    folder = Path(folder)
    if vector.dim() != 1:
        raise ValueError(f"a vector must be 1-D, got shape {tuple(vector.shape)}")
    stem = file_stem(name)
    man = {"format_version": FORMAT_VERSION, "name": name, "d_model": int(vector.numel()),
           "norm": float(vector.float().norm()), **manifest}
    st = save_tensors(folder / f"{stem}.safetensors", {"vector": vector.float()})
    write_json(folder / f"{stem}.json", man)
    return st


def load_vector(path: str | Path) -> tuple[torch.Tensor, dict]:
    """Read a vector saved by :func:`save_vector` (``path`` with or without suffix)."""
    p = Path(path)
    name = p.name
    for suffix in (".safetensors", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
            break
    st, js = p.parent / f"{name}.safetensors", p.parent / f"{name}.json"
    if not st.is_file() or not js.is_file():
        raise FileNotFoundError(f"vector {p.parent / name} needs both {st.name} and {js.name}")
    return load_tensors(st)["vector"], read_json(js)


def list_vectors(folder: str | Path) -> list[Path]:
    """Every ``*.safetensors`` with a manifest beside it, sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.glob("*.safetensors") if (p.parent / f"{p.stem}.json").is_file())
