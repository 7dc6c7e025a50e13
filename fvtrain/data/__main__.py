"""``fvtrain-data PATH``: what a data path holds, as fvtrain reads it.

Prints the detected format, each relation with its pair count, the analogy, judgment and
prototypicality counts, and what was skipped and why. ``--json`` prints the same as one JSON
object (keys ``format``, ``relations`` (name -> pairs), ``analogies``, ``judgments``,
``skipped``, ...). ``PATH`` may be the word ``builtin`` for the data shipped with fvtrain.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections import Counter
from typing import Sequence

from .errors import DataFormatError
from .readers import FORMATS, read
from .types import DataSet, UnknownRelationError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvtrain-data",
        description="Show what a data file or folder holds, as fvtrain reads it.",
    )
    p.add_argument("path", help="a data file or folder, or 'builtin' for the data shipped with fvtrain")
    p.add_argument("--format", "-f", default=None, help=f"force a format: {', '.join(FORMATS)}")
    p.add_argument("--relations", "-r", default=None, help="comma-separated relation names to keep")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--verbose", "-v", action="store_true", help="print the readers' log messages on stderr")
    return p


def _print_human(ds: DataSet, detected: bool) -> None:
    from rich.console import Console
    from rich.table import Table

    # Piped output (a file, grep, a test) gets long lines rather than rows wrapped at 80 columns.
    console = Console(width=None if sys.stdout.isatty() else 200)
    console.print(f"[bold]path[/]    {ds.path}")
    console.print(f"[bold]format[/]  {ds.format}" + (" (detected)" if detected else ""))
    if ds.relations:
        table = Table(title=f"{len(ds.relations)} relations, {ds.n_pairs:,} pairs", title_justify="left")
        table.add_column("relation", style="cyan")
        table.add_column("pairs", justify="right")
        table.add_column("distinct inputs", justify="right")
        table.add_column("example")
        table.add_column("about", overflow="fold")
        for name, rel in ds.relations.items():
            first = rel.pairs[0]
            example = f"{first.x} -> {'/'.join(first.answers)}"
            about = rel.source.get("title") or rel.source.get("group") or rel.source.get("category") or ""
            table.add_row(name, f"{len(rel):,}", f"{len({p.x for p in rel.pairs}):,}", example[:50], str(about))
        console.print(table)
    mc = sum(a.is_multiple_choice for a in ds.analogies)
    line = f"[bold]analogies[/]  {len(ds.analogies):,}"
    if ds.analogies:
        dist = Counter(a.distance for a in ds.analogies if a.distance)
        line += f" (open {len(ds.analogies) - mc:,}, multiple choice {mc:,}"
        line += "".join(f", {k} {v:,}" for k, v in sorted(dist.items())) + ")"
    console.print(line)
    levels = Counter(j.level for j in ds.judgments)
    console.print(
        f"[bold]judgments[/]  {len(ds.judgments):,}"
        + (f" ({', '.join(f'{k}-level {v:,}' for k, v in sorted(levels.items()))})" if levels else "")
    )
    if ds.prototypicality:
        console.print(f"[bold]prototypicality ratings[/]  {len(ds.prototypicality):,}")
    console.print(f"[bold]skipped[/]  {len(ds.skipped):,}")
    if ds.skipped:
        table = Table(show_header=True)
        table.add_column("why")
        table.add_column("count", justify="right")
        table.add_column("first at", overflow="fold")
        first_at: dict[str, str] = {}
        for where, why in ds.skipped:
            first_at.setdefault(why, where)
        for why, n in ds.skipped_reasons().items():
            table.add_row(why, f"{n:,}", first_at[why])
        console.print(table)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.ERROR, stream=sys.stderr,
                        format="%(levelname)s %(name)s: %(message)s")
    relations = [r.strip() for r in args.relations.split(",") if r.strip()] if args.relations else None
    try:
        ds = read(args.path, args.format, relations)
    except (FileNotFoundError, DataFormatError, UnknownRelationError, ValueError) as err:
        print(f"fvtrain-data: error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(ds.summary(), ensure_ascii=False))
    else:
        _print_human(ds, detected=args.format is None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
