"""Callbacks and checkpoint I/O for FFV runs."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback
from lightning.pytorch.plugins.io import TorchCheckpointIO


class Interrupt(Callback):
    """Stop the run like Ctrl-C after ``after_epochs`` epochs (their checkpoints are written), or
    with ``mid_epoch`` in the first batch of the epoch after them.

    For trying out resuming: ``+callbacks.interrupt._target_=fvtrain.training.callbacks.Interrupt
    +callbacks.interrupt.after_epochs=2``, then run again with ``ckpt_path=<run folder>``.
    """

    def __init__(self, after_epochs: int = 1, mid_epoch: bool = False):
        self.after_epochs = int(after_epochs)
        self.mid_epoch = bool(mid_epoch)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if not self.mid_epoch and trainer.current_epoch + 1 >= self.after_epochs:
            raise KeyboardInterrupt(f"interrupted after {self.after_epochs} epoch(s)")

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.mid_epoch and trainer.current_epoch >= self.after_epochs:
            raise KeyboardInterrupt(f"interrupted in epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}")


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target and renamed into place, so a crash
    or a full disk never leaves a partial ``.ckpt`` where a resume would look for a whole one."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        os.close(fd)
        try:
            super().save_checkpoint(checkpoint, tmp, storage_options)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
