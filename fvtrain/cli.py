"""Shared plumbing of the Hydra entry points: config discovery, overrides, model and data set-up,
run folders and the closing summary table."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("fvtrain")

CONFIG_ENV = "FVTRAIN_CONFIG_DIR"

from fvtrain.launchers import register as _register_launchers  # noqa: E402

_register_launchers()


class ConfigError(ValueError):
    """A configuration that cannot run; raised before any model work starts."""


def config_dir() -> Path:
    """The Hydra config folder: ``$FVTRAIN_CONFIG_DIR``, the packaged copy, or the source tree."""
    candidates = []
    if os.environ.get(CONFIG_ENV):
        candidates.append(Path(os.environ[CONFIG_ENV]).expanduser())
    here = Path(__file__).resolve().parent
    candidates += [here / "conf", here.parent / "conf"]
    for c in candidates:
        if (c / "extract.yaml").is_file():
            return c
    raise FileNotFoundError(
        "fvtrain cannot find its Hydra configs (looked in "
        + ", ".join(str(c) for c in candidates)
        + "). Install fvtrain from its source tree (pip install -e .) or set "
        f"{CONFIG_ENV} to the repository's conf/ folder."
    )


def rewrite_model_override(argv: Sequence[str], conf: Path) -> list[str]:
    """``model=<anything>`` that is not a preset in conf/model/ becomes ``model=hub model.name=...``.

    So ``model=EleutherAI/gpt-j-6b`` or ``model=/data/llama.gguf`` work like named presets.
    """
    presets = {p.stem for p in (conf / "model").glob("*.yaml")}
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and key in ("model", "+model") and value:
            values = value.split(",")
            if any(v not in presets for v in values):
                names = []
                for v in values:
                    if v in presets:
                        names.append(OmegaConf.load(conf / "model" / f"{v}.yaml").get("name", v))
                    else:
                        names.append(v)
                out += ["model=hub", "model.name=" + ",".join(str(n) for n in names)]
                continue
        out.append(arg)
    return out


def run(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run ``task`` as a Hydra app with ``conf/<config_name>.yaml``."""
    import hydra

    conf = config_dir()
    sys.argv = [sys.argv[0], *rewrite_model_override(sys.argv[1:], conf)]
    hydra.main(version_base="1.3", config_path=str(conf), config_name=config_name)(task)()


def compose(config_name: str, overrides: Sequence[str] = (), output_dir: str | Path | None = None
            ) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, outside a Hydra app (tests, notebooks).

    ``${hydra:runtime.output_dir}`` resolves to ``output_dir`` (default: a new temporary folder).
    """
    import tempfile

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    conf = config_dir()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=rewrite_model_override(list(overrides), conf),
                            return_hydra_config=True)
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="fvtrain-"))
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def save_resolved_config(cfg: DictConfig, out: Path) -> None:
    from fvtrain.artifacts import _atomic

    text = OmegaConf.to_yaml(cfg, resolve=True)
    _atomic(out / "config.yaml", lambda tmp: Path(tmp).write_text(text))


def seed_everything(seed: int) -> None:
    import lightning

    lightning.seed_everything(seed, workers=True, verbose=False)


def load_model(cfg: DictConfig):
    """Instantiate ``cfg.model`` (a ``fvtrain.models.load_model`` node) into a FrozenLM."""
    from hydra.utils import instantiate

    log.info("loading model %s", cfg.model.name)
    return instantiate(cfg.model)


def load_relations(data_cfg: DictConfig):
    """Read ``data.path`` (format detected or ``data.format``) and select ``data.relations``."""
    from fvtrain.data.readers import read

    relations = data_cfg.get("relations")
    if relations is not None and not isinstance(relations, str):
        relations = list(relations)
    ds = read(data_cfg.path, data_cfg.get("format"), relations)
    if not ds.relations:
        raise ConfigError(f"{data_cfg.path}: no relations to work on (data.relations={relations})")
    return ds


def name_list(value: Any) -> list[str] | None:
    """A config list of names, also given as one comma-separated string (``a,b``); None stays None."""
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


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


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=title)
    for i, c in enumerate(columns):
        t.add_column(c, justify="left" if i == 0 else "right")
    for r in rows:
        t.add_row(*[f"{v:.3f}" if isinstance(v, float) else str(v) for v in r])
    Console().print(t)


def progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), transient=False)
