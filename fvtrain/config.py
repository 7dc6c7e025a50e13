"""fvtrain's Hydra configs as a library: where they are, ``model=`` shorthands, and composing a
config outside a Hydra app (tests, notebooks, :mod:`fvtrain.api`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from omegaconf import DictConfig, OmegaConf

CONFIG_ENV = "FVTRAIN_CONFIG_DIR"

# ``${run_id:}`` in default run folder names: the process id, so that two runs started in the
# same second get folders of their own (a DDP rank re-launched later inherits the resolved name).
OmegaConf.register_new_resolver("run_id", lambda: str(os.getpid()), use_cache=True, replace=True)


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


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def compose(config_name: str, overrides: Sequence[str] = (), output_dir: str | Path | None = None
            ) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` with overrides, outside a Hydra app (tests, notebooks).

    ``${hydra:runtime.output_dir}`` resolves to ``output_dir`` (default: a new temporary folder).
    """
    import atexit
    import tempfile

    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    conf = config_dir()
    with initialize_config_dir(config_dir=str(conf), version_base="1.3"):
        cfg = hydra_compose(config_name, overrides=rewrite_model_override(list(overrides), conf),
                            return_hydra_config=True)
    if output_dir is not None:
        out = Path(output_dir)
    else:
        out = Path(tempfile.mkdtemp(prefix="fvtrain-"))
        atexit.register(_remove_if_empty, out)  # most callers never write there; keep what one did
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(out)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg
