"""Checks that run before any weights load: devices, layer and head counts against the model's config.

A sweep submitted with the wrong settings fails in seconds with a message, not after minutes of loading.
"""

from __future__ import annotations

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
    from fvtrain.models.loading import config_geometry, load_config

    check_devices(cfg)

    geo = config_geometry(load_config(cfg.model.name, cfg.model.get("revision"),
                                      cfg.model.get("trust_remote_code", False)))
    L, H = geo["n_layers"], geo["n_heads"]
    if layer is not None and not 0 <= int(layer) < L:
        raise ConfigError(
            f"layer {layer} is out of range for {cfg.model.name} with {L} layers "
            f"(valid: 0..{L - 1}); set e.g. extract.layer={round(L / 3)}"
        )
    if k is not None and not 1 <= int(k) <= L * H:
        raise ConfigError(
            f"k={k} heads requested, but {cfg.model.name} has {L * H} heads ({L} layers x {H}); "
            f"set extract.k to at most {L * H}"
        )
    return geo
