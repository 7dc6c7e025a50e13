"""LightningModules: the FFV trainer (and, later, the composition combiner)."""

from fvtrain.modules.data import FFVDataModule
from fvtrain.modules.ffv import METHODS, FFVModule, LMFactory
from fvtrain.modules.metrics import RelationScores

__all__ = ["FFVDataModule", "FFVModule", "LMFactory", "METHODS", "RelationScores"]
