"""Errors raised by the data readers.

Every message names the file (and line, where there is one), says what was expected and shows
what was found, so a researcher can fix a data file without reading the reader's code.
"""

from __future__ import annotations

from pathlib import Path


def _shorten(text: str, limit: int = 80) -> str:
    text = text.rstrip("\r\n")
    return text if len(text) <= limit else text[: limit - 3] + "..."


class DataFormatError(ValueError):
    """A data file does not have the layout its format requires."""

    def __init__(self, message: str, *, path: str | Path | None = None, line: int | None = None):
        where = ""
        if path is not None:
            where = f"{path}:{line}: " if line is not None else f"{path}: "
        super().__init__(where + message)
        self.path = None if path is None else str(path)
        self.line = line

    @classmethod
    def malformed(
        cls, path: str | Path, line: int | None, expected: str, got: object
    ) -> "DataFormatError":
        """``path:17: expected 'word<TAB>answer1/answer2', got 'foo'``."""
        shown = _shorten(got) if isinstance(got, str) else _shorten(repr(got))
        return cls(f"expected {expected}, got {shown!r}", path=path, line=line)


class DataEncodingError(DataFormatError):
    """A data file is not valid UTF-8."""

    def __init__(self, path: str | Path, err: UnicodeDecodeError):
        bad = err.object[err.start : err.start + 1]
        super().__init__(
            f"cannot decode byte 0x{bad.hex()} at offset {err.start}: data files must be UTF-8 "
            "(re-save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8`)",
            path=path,
        )
