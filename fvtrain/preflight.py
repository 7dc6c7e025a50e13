"""Checks that run before any weights load: devices, layer and head counts against the model's config.

A sweep submitted with the wrong settings fails in seconds with a message, not after minutes of loading.
"""

from __future__ import annotations

import math
from pathlib import Path

from omegaconf import DictConfig

from fvtrain.errors import ConfigError


def check_devices(cfg: DictConfig) -> None:
    """Refuse a model device or trainer accelerator this machine does not have.

    Runs before any weights load, so a sweep over GPU settings submitted to the wrong machine
    fails in seconds with a message, not after minutes of loading.
    """
    import torch

    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    have = f"{n_gpu} CUDA device{'s' if n_gpu != 1 else ''}"
    device = str(cfg.get("model", {}).get("device") or "cpu")
    if device.startswith("cuda"):
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        if index >= n_gpu:
            raise ConfigError(
                f"model.device={device}, but this machine has {have}; "
                + ("use model.device=cpu (and trainer=cpu)" if n_gpu == 0
                   else f"use model.device=cuda:0..cuda:{n_gpu - 1}")
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("model.device=mps, but MPS is not available here; use model.device=cpu")
    trainer = cfg.get("trainer")
    if trainer is None or str(trainer.get("accelerator")) not in ("gpu", "cuda"):
        return
    if n_gpu == 0:
        raise ConfigError(
            f"trainer.accelerator={trainer.accelerator}, but this machine has no CUDA device; "
            "use trainer=cpu (or trainer=ddp_sim for 2 CPU processes)"
        )
    devices = trainer.get("devices")
    wanted = (len(devices) if not isinstance(devices, (int, str)) else
              int(devices) if str(devices).lstrip("-").isdigit() else None)
    if wanted is not None and wanted > n_gpu:
        raise ConfigError(
            f"trainer.devices={devices} GPUs requested, but this machine has {have}; "
            f"set trainer.devices={n_gpu} (or -1 for all)"
        )


def check_geometry(cfg: DictConfig, layer: int | None, k: int | None = None) -> dict[str, int]:
    """Validate devices, then layer and k against the model's config, without loading weights."""
    from fvtrain.models.loading import check_model_options, config_geometry, load_config

    check_devices(cfg)
    check_model_options(cfg.model.name, cfg.model.get("layers"), cfg.model.get("tokenizer"))

    geo = config_geometry(load_config(cfg.model.name, cfg.model.get("revision"),
                                      cfg.model.get("trust_remote_code", False), cfg.model.get("layers")))
    L, H = geo["n_layers"], geo["n_heads"]
    if layer is not None and not 0 <= int(layer) < L:
        raise ConfigError(
            f"layer {layer} is out of range for {cfg.model.name} with {L} layers "
            f"(valid: 0..{L - 1}); set e.g. extract.layer={round(L / 3)}"
        )
    if k is not None and int(k) < 1:
        raise ConfigError(f"extract.k={k}: the function vector needs at least one head; set extract.k "
                          f"between 1 and {L * H} (the paper uses 10)")
    if k is not None and int(k) > L * H:
        raise ConfigError(
            f"k={k} heads requested, but {cfg.model.name} has {L * H} heads ({L} layers x {H}); "
            f"set extract.k to at most {L * H}"
        )
    return geo


# -- ranges ----------------------------------------------------------------------------------------

def _number(value, key: str, fix: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number; {fix}") from None
    return v


def check_extract(ex: DictConfig, n_heads_total: int | None = None) -> None:
    """``extract.*`` counts: at least one prompt and corrupted prompt, no negative shots."""
    for key, low in (("n_prompts", 1), ("n_corrupt", 1), ("n_shots", 0), ("batch_size", 1), ("max_rows", 1)):
        if key not in ex:
            continue  # a preset may set a few extract keys in a config that does not extract
        v = ex.get(key)
        if key == "max_rows":
            check_rows(v, "extract.max_rows")
            continue
        if v is None or isinstance(v, bool) or not isinstance(v, int) or v < low:
            raise ConfigError(f"extract.{key}={v!r}: it must be an integer >= {low}; "
                              f"set e.g. extract.{key}={max(low, 1) if key != 'n_shots' else 10}")


def check_rows(value, key: str) -> None:
    """A rows-per-forward setting: a positive integer, or ``auto`` (sized from free memory once
    the model is loaded, :meth:`FrozenLM.rows_that_fit`)."""
    if value == "auto":
        return
    if value is None or isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: it must be an integer >= 1, or auto to size it from free "
                          f"memory; set e.g. {key}=512")


def check_trainer(trainer: DictConfig | None) -> None:
    """A run that ends: ``max_epochs >= 1`` unless ``max_steps`` bounds it."""
    if trainer is None:
        return
    epochs, steps = trainer.get("max_epochs"), trainer.get("max_steps")
    bounded_by_steps = steps is not None and int(steps) > 0
    if not bounded_by_steps and (epochs is None or int(epochs) < 1):
        raise ConfigError(f"trainer.max_epochs={epochs} would train forever (or not at all); set "
                          "trainer.max_epochs to 1 or more (or trainer.max_steps)")


def check_optim(optim: DictConfig | None, key: str = "optim.optimizer.lr") -> None:
    """A finite, positive learning rate."""
    if optim is None or optim.get("optimizer") is None or "lr" not in optim.optimizer:
        return
    lr = _number(optim.optimizer.lr, key, f"set {key} to a positive number such as 0.01")
    if not math.isfinite(lr) or lr <= 0:
        raise ConfigError(f"{key}={optim.optimizer.lr}: the learning rate must be a finite positive "
                          f"number; set e.g. {key}=0.01")


# -- keys: the YAML files are the schema -----------------------------------------------------------

_ANY = object()  # a node whose children are not checked


def _package(path: Path, group: str) -> str:
    for line in path.read_text().splitlines()[:5]:
        if line.startswith("# @package"):
            pkg = line.split("@package", 1)[1].strip()
            return "" if pkg == "_global_" else pkg
    return group


def _merge_keys(tree: dict, node) -> None:
    if not isinstance(node, dict):
        return
    for k, v in node.items():
        if k == "defaults":
            continue
        if isinstance(v, dict):
            sub = tree.setdefault(k, {})
            if isinstance(sub, dict):
                _merge_keys(sub, v)
        else:
            tree.setdefault(k, None)


def known_keys(conf: Path) -> dict:
    """Every key any YAML file under ``conf/`` can put in a composed config, as a nested tree."""
    import yaml

    tree: dict = {}
    for f in sorted(conf.rglob("*.yaml")):
        rel = f.relative_to(conf)
        if rel.parts[0] == "hydra" or rel.parts[0] in ("launcher", "sweep"):
            continue  # Hydra's own node
        group = ".".join(rel.parts[:-1])
        pkg = _package(f, group)
        data = yaml.safe_load(f.read_text()) or {}
        node = tree
        for part in [p for p in pkg.split(".") if p]:
            node = node.setdefault(part, {})
        _merge_keys(node, data)
        # A defaults entry ``/optim@optim: adam`` places another group's options under this node.
        for entry in data.get("defaults") or []:
            if isinstance(entry, dict):
                for k in entry:
                    if "@" in str(k) and not str(k).startswith("override"):
                        src, _, dest = str(k).partition("@")
                        src = src.lstrip("/") if src.startswith("/") else f"{group}/{src}".strip("/")
                        sub = node
                        for part in [p for p in dest.split(".") if p]:
                            sub = sub.setdefault(part, {})
                        for g in sorted((conf / src).glob("*.yaml")):
                            _merge_keys(sub, yaml.safe_load(g.read_text()) or {})
    return tree


def _target_accepts(target: str, key: str) -> bool:
    """Whether ``target(key=...)`` is accepted (a named parameter, or ``**kwargs``)."""
    import importlib
    import inspect

    mod, _, name = target.rpartition(".")
    try:
        obj = getattr(importlib.import_module(mod), name)
        params = inspect.signature(obj).parameters
    except (ImportError, AttributeError, TypeError, ValueError):
        return True  # not ours to judge here; instantiate will say
    return key in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def unknown_keys(cfg: DictConfig, tree: dict) -> list[str]:
    """Dotted keys of ``cfg`` that no config file defines (a ``_target_`` node may also take any
    argument of its target; ``logger`` and ``callbacks`` may gain whole new entries)."""
    bad: list[str] = []

    def walk(node, known, prefix):
        target = node.get("_target_") if isinstance(node, DictConfig) else None
        for k in node.keys():
            key = f"{prefix}{k}"
            sub = known.get(k, _ANY if k in known else None) if isinstance(known, dict) else _ANY
            if known is _ANY:
                continue
            if k not in known:
                if target is not None and _target_accepts(str(target), str(k)):
                    continue
                bad.append(key)
                continue
            child = node._get_node(k)
            if isinstance(child, DictConfig) and isinstance(sub, dict):
                walk(child, sub, key + ".")
            elif isinstance(child, DictConfig) and sub is None and child.get("_target_") is None:
                # a leaf in every file (e.g. null there), a mapping here: accept
                continue

    top = {k: v for k, v in tree.items()}
    for free in ("logger", "callbacks"):
        top[free] = _ANY
    walk(cfg, top, "")
    return bad


def check_keys(cfg: DictConfig, conf: Path) -> None:
    """Refuse keys no config file defines (``+ffv.lr=1`` is a typo of ``optim.optimizer.lr``)."""
    import difflib

    tree = known_keys(conf)
    bad = unknown_keys(cfg, tree)
    if not bad:
        return
    from omegaconf import OmegaConf

    # Suggestions come from the keys this config has (not every key of every command).
    flat = [k for k in _flatten(OmegaConf.to_container(cfg, resolve=False)) if k not in bad]
    hints = []
    for key in bad:
        close = [k for k in flat if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]][:1] or \
            difflib.get_close_matches(key, flat, n=1, cutoff=0.6)
        hints.append(f"{key}" + (f" (did you mean {close[0]}?)" if close else ""))
    raise ConfigError("unknown config key(s): " + "; ".join(hints)
                      + ". Remove them, or see `--cfg job` for the keys this command takes")


def _flatten(tree: dict, prefix: str = "") -> list[str]:
    out = []
    for k, v in tree.items():
        out.append(prefix + k)
        if isinstance(v, dict):
            out += _flatten(v, prefix + k + ".")
    return out


def check_config(cfg: DictConfig) -> None:
    """Every check of a composed config that needs no weights: keys, devices, ranges."""
    from fvtrain.config import config_dir

    check_keys(cfg, config_dir())
    check_devices(cfg)
    if cfg.get("extract") is not None:
        check_extract(cfg.extract)
    if cfg.get("compose") is not None and "max_rows" in cfg.compose:
        check_rows(cfg.compose.max_rows, "compose.max_rows")
    if cfg.get("trainer") is not None:
        check_trainer(cfg.trainer)
    if cfg.get("optim") is not None:
        check_optim(cfg.optim)
    comp = cfg.get("composition")
    if comp is not None and comp.get("optim") is not None:
        check_optim(comp.optim, "composition.optim.optimizer.lr")
