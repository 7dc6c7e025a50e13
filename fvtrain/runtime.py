"""What every stage job shares at run time: seeding, and the frozen model loaded at most once.

A job receives a :class:`LazyModel` (or a loaded ``FrozenLM``) and calls :func:`obtain` only after
its checks that need no weights, so a bad config fails in seconds; the pipeline hands one
``LazyModel`` to every stage, so the weights load once per process.
"""

from __future__ import annotations

import logging
from typing import Any, Union

log = logging.getLogger("fvtrain")


def seed_everything(seed: int) -> None:
    import lightning

    lightning.seed_everything(seed, workers=True, verbose=False)


class LazyModel:
    """``cfg.model`` (a ``fvtrain.models.load_model`` node), instantiated on the first call."""

    def __init__(self, model_cfg: Any) -> None:
        self.cfg = model_cfg
        self._lm = None
        self.loads = 0

    @property
    def loaded(self) -> bool:
        return self._lm is not None

    def __call__(self):
        if self._lm is None:
            from hydra.utils import instantiate

            log.info("loading model %s", self.cfg.name)
            self._lm = instantiate(self.cfg)
            self.loads += 1
        return self._lm


ModelLike = Union["LazyModel", Any]


def obtain(lm: ModelLike):
    """The ``FrozenLM`` behind ``lm`` (loading it now if it is a :class:`LazyModel`)."""
    return lm() if isinstance(lm, LazyModel) else lm
