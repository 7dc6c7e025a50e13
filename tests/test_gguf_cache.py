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
    man = {"version": 1, "source_sha256": sha, "files": loading._entry_files(entry)}
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


def test_cache_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FVTRAIN_CACHE", str(tmp_path / "c"))
    assert loading.cache_root() == tmp_path / "c"


@pytest.mark.slow
def test_damaged_embedded_cache_is_rebuilt(tmp_path, monkeypatch, embedded_lm):
    """Copy the real cache entry, truncate its weights, and load: it is rebuilt and loads."""
    gguf, sha = loading.embedded_gguf()
    good = loading.gguf_cache_entry(gguf, sha)
    monkeypatch.setenv("FVTRAIN_CACHE", str(tmp_path))
    copy = tmp_path / "gguf" / good.name
    shutil.copytree(good, copy)
    st = copy / "model.safetensors"
    st.write_bytes(st.read_bytes()[: 1 << 20])
    assert not loading.cache_entry_valid(copy, sha)
    rebuilt = loading.gguf_cache_entry(gguf, sha)
    assert rebuilt == copy and loading.cache_entry_valid(rebuilt, sha)
    assert (rebuilt / "model.safetensors").stat().st_size == (good / "model.safetensors").stat().st_size
