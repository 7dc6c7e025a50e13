"""Hydra plumbing of the entry points: config discovery, ``model=`` shorthands, running an app,
composing a config outside one (tests, notebooks), and the one-line report of a refused config.

Only entry points import this module; library code raises :class:`fvtrain.errors.ConfigError`."""

from __future__ import annotations

import functools
import logging
import os
import sys
from pathlib import Path
from typing import Any, Callable

from omegaconf import DictConfig, OmegaConf, open_dict

log = logging.getLogger("fvtrain")

from fvtrain.config import CONFIG_ENV, compose, config_dir, rewrite_model_override  # noqa: E402,F401
from fvtrain.errors import ConfigError  # noqa: E402,F401  (re-exported for scripts and tests)
from fvtrain.launchers import register as _register_launchers  # noqa: E402

_register_launchers()


def run(config_name: str, task: Callable[[DictConfig], Any]) -> None:
    """Run ``task`` as a Hydra app with ``conf/<config_name>.yaml``.

    A config, data or artifact error (:func:`fvtrain.errors.user_errors`) prints one line and exits
    2; ``HYDRA_FULL_ERROR=1`` shows the traceback instead. In a multirun the error is raised, so the
    sweep records the job as failed and goes on.
    """
    import hydra

    from fvtrain.errors import user_errors

    conf = config_dir()
    sys.argv = [sys.argv[0], *rewrite_model_override(sys.argv[1:], conf)]
    prog = Path(sys.argv[0]).name

    @functools.wraps(task)  # Hydra names the job (and its log file) after the task's module
    def guarded(cfg: DictConfig) -> Any:
        try:
            return task(cfg)
        except user_errors() as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1" or _multirun():
                raise
            print(f"{prog}: error: {err}", file=sys.stderr)
            sys.exit(2)

    hydra.main(version_base="1.3", config_path=str(conf), config_name=config_name)(guarded)()


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def pin_run_dir(out: Path) -> None:
    """Lightning re-launches ``ddp`` ranks with ``hydra.run.dir`` read from Hydra's config; resolve
    it now so that a rank started a second later does not make its own timestamped folder."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return
    hc = HydraConfig.get()
    OmegaConf.set_readonly(hc, False)
    with open_dict(hc):
        hc.run.dir = str(out)
    OmegaConf.set_readonly(hc, True)
