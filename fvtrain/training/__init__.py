"""FFV training: the LightningModule that owns the vectors and the loss, its metrics, initial
vectors, the Lightning set-up, the stage job and its tables. (Prompts come from
:class:`fvtrain.data.datamodules.RelationDataModule`.)"""

from fvtrain.training.metrics import RelationScores
from fvtrain.training.module import METHODS, FFVModule, LMFactory

__all__ = ["FFVModule", "LMFactory", "METHODS", "RelationScores"]
