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


def user_errors() -> tuple[type[BaseException], ...]:
    """Errors that say what the user must change (config, data, artifacts): the entry points print
    them as one line and exit 2 instead of showing a traceback."""
    from fvtrain.artifacts import UnsafeNameError
    from fvtrain.data.errors import DataEncodingError, DataFormatError
    from fvtrain.data.types import UnknownRelationError
    from fvtrain.models.adapters import UnsupportedArchitectureError
    from fvtrain.models.loading import ModelNotFoundError, ModelOptionError

    return (ConfigError, DataFormatError, DataEncodingError, UnknownRelationError, UnsafeNameError,
            UnsupportedArchitectureError, ModelNotFoundError, ModelOptionError)
