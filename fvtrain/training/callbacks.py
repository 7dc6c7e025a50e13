"""Callbacks for FFV runs."""

from __future__ import annotations

from lightning.pytorch import Callback


class Interrupt(Callback):
    """Stop the run like Ctrl-C after ``after_epochs`` epochs (their checkpoints are written).

    For trying out resuming: ``+callbacks.interrupt._target_=fvtrain.training.callbacks.Interrupt
    +callbacks.interrupt.after_epochs=2``, then run again with ``ckpt_path=<run folder>``.
    """

    def __init__(self, after_epochs: int = 1):
        self.after_epochs = int(after_epochs)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch + 1 >= self.after_epochs:
            raise KeyboardInterrupt(f"interrupted after {self.after_epochs} epoch(s)")
