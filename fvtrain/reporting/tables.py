"""A table as data: title, columns, rows. Each stage builds its tables once (``<stage>/tables.py``);
the console, ``report.md`` and ``metrics.csv`` render the same objects."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)

    def print(self) -> None:
        from fvtrain.console import print_table

        print_table(self.title, self.columns, self.rows)

    def markdown(self) -> str:
        return markdown_table(self.columns, self.rows)


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub markdown table; numeric columns are right-aligned."""
    def cell(v):
        if v is None:
            return "-"
        if isinstance(v, float):
            return "-" if math.isnan(v) else f"{v:.3f}"
        return str(v).replace("|", "\\|").replace("\n", " ")

    rows = [list(r) for r in rows]

    def numeric(i):
        vals = [r[i] for r in rows if i < len(r) and r[i] not in (None, "", "-")]
        return bool(vals) and all(isinstance(v, (int, float)) or re.match(r"^[+-]?\d", str(v)) for v in vals)

    lines = ["| " + " | ".join(map(str, columns)) + " |",
             "|" + "|".join("---:" if i > 0 and numeric(i) else "---" for i in range(len(columns))) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows]
    return "\n".join(lines)
