"""Launcher configs for Hydra multirun on SLURM, registered in Hydra's ConfigStore.

``hydra-submitit-launcher`` 1.2 does not expose submitit's ``srun_args``; ``fvtrain_slurm``
extends its SLURM schema with that field (every launcher field reaches submitit as
``slurm_<field>``), so ``launcher=slurm hydra.launcher.srun_args=[...]`` works.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import List


def register() -> bool:
    """Register ``hydra/launcher=fvtrain_slurm``; False when the plugin is not installed."""
    try:
        from hydra.core.config_store import ConfigStore
        from hydra_plugins.hydra_submitit_launcher.config import SlurmQueueConf
    except ImportError:
        return False

    @dataclass
    class FvtrainSlurmQueueConf(SlurmQueueConf):
        srun_args: List[str] = field(default_factory=list)

    ConfigStore.instance().store(group="hydra/launcher", name="fvtrain_slurm",
                                 node=FvtrainSlurmQueueConf, provider="fvtrain")
    return True
