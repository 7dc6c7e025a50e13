"""The dequantised-GGUF safetensors cache: validity checks, rebuild after damage."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from fvtrain.models import loading


def _entry(tmp_path, sha="ab" * 32):
    entry = tmp_path / "gguf" / sha[:32]
    entry.mkdir(parents=True)
    save_file({"w": torch.arange(10.0)}, str(entry / "model.safetensors"))
    (entry / "config.json").write_text("{}")
    man = {"version": loading._CACHE_VERSION, "source_sha256": sha, "files": loading._entry_files(entry),
           "sha256": loading._entry_hashes(entry)}
    (entry / "fvtrain-cache.json").write_text(json.dumps(man))
    return entry, sha


def test_complete_entry_is_valid(tmp_path):
    entry, sha = _entry(tmp_path)
    assert loading.cache_entry_valid(entry, sha)
    assert not loading.cache_entry_valid(entry, "cd" * 32)  # another source file


def test_missing_manifest_means_partial(tmp_path):
    entry, sha = _entry(tmp_path)
    (entry / "fvtrain-cache.json").unlink()
    assert not loading.cache_entry_valid(entry, sha)


def test_truncated_weights_are_detected(tmp_path):
    entry, sha = _entry(tmp_path)
    f = entry / "model.safetensors"
    f.write_bytes(f.read_bytes()[:20])
    assert not loading.cache_entry_valid(entry, sha)


def test_corrupt_header_same_size_is_detected(tmp_path):
    entry, sha = _entry(tmp_path)
    f = entry / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:16] = b"\xff" * 8  # garbage JSON header, size unchanged
    f.write_bytes(bytes(data))
    assert not loading.cache_entry_valid(entry, sha)


def _zero_tensor(path, name=None) -> str:
    """Overwrite one tensor's bytes with zeros in place (same size, valid header); returns its name."""
    raw = path.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = name or next(k for k, v in header.items() if k != "__metadata__" and v["data_offsets"][1] > v["data_offsets"][0])
    a, b = header[name]["data_offsets"]
    with open(path, "r+b") as f:
        f.seek(8 + n + a)
        f.write(b"\0" * (b - a))
    return name


def test_weight_zeroed_in_place_is_detected(tmp_path):
    """Same size, valid header, one tensor zeroed: only the content hash sees it."""
    entry, sha = _entry(tmp_path)
    size = (entry / "model.safetensors").stat().st_size
    _zero_tensor(entry / "model.safetensors", "w")
    assert (entry / "model.safetensors").stat().st_size == size
    assert not loading.cache_entry_valid(entry, sha)


def test_entry_of_an_older_cache_version_is_rebuilt(tmp_path):
    entry, sha = _entry(tmp_path)
    man = json.loads((entry / "fvtrain-cache.json").read_text())
    man["version"] = 1
    del man["sha256"]
    (entry / "fvtrain-cache.json").write_text(json.dumps(man))
    assert not loading.cache_entry_valid(entry, sha)


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FVTRAIN_CACHE", str(tmp_path / "c"))
    assert loading.cache_root() == tmp_path / "c"


@pytest.mark.slow
def test_damaged_embedded_cache_is_rebuilt(tmp_path, monkeypatch, embedded_lm):
    """Copy the real cache entry, zero one weight in place (same size), and load: the damage is
    seen, the entry is rebuilt, and the rebuilt model has the original weight."""
    gguf, sha = loading.embedded_gguf()
    good = loading.gguf_cache_entry(gguf, sha)
    monkeypatch.setenv("FVTRAIN_CACHE", str(tmp_path))
    copy = tmp_path / "gguf" / good.name
    shutil.copytree(good, copy)
    st = copy / "model.safetensors"
    size = st.stat().st_size
    name = _zero_tensor(st, "model.layers.0.self_attn.o_proj.weight")
    assert st.stat().st_size == size
    assert not loading.cache_entry_valid(copy, sha)
    rebuilt = loading.gguf_cache_entry(gguf, sha)
    assert rebuilt == copy and loading.cache_entry_valid(rebuilt, sha)
    from safetensors import safe_open

    with safe_open(str(rebuilt / "model.safetensors"), "pt") as f, safe_open(str(good / "model.safetensors"), "pt") as g:
        assert torch.equal(f.get_tensor(name), g.get_tensor(name)) and bool(f.get_tensor(name).abs().sum() > 0)
