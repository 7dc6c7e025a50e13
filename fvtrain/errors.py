"""Errors that stop a run before (or instead of) model work, each with a message that says what to do.

Library modules raise these; the entry points print them as one line. Domain errors of a layer
(``DataFormatError``, ``BankError``, ``UnsupportedArchitectureError`` ...) live with their layer.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A configuration that cannot run; raised before any model work starts."""


class ArtifactError(ConfigError):
    """A run artifact (vector, bank, splits, metrics) that is missing, damaged or belongs to another
    run (other model, size, layer or split)."""
