"""``fvtrain-report PATH``: a run folder or a Hydra multirun folder -> report.md, figures, metrics.csv.

    fvtrain-report outputs/extract/2026-01-01/12-00-00
    fvtrain-report outputs/extract/multirun/2026-01-01/12-00-00      # one row per job in metrics.csv
    fvtrain-report RUN --out reports/run1 --refresh

Writes ``report.md`` (a summary table per stage and the figures), ``metrics.csv`` (one row per job:
its Hydra overrides as columns, then every metric as a dotted key) and any figure the run did not
write (AIE heatmaps, layer sweeps, accuracy bars, composition schemes, alignment scatter), then
prints a short summary table. Plain argparse, no Hydra: it only reads what runs wrote.
"""

from __future__ import annotations

import argparse
import logging
import sys


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="fvtrain-report",
        description="Summarise an fvtrain run folder (extract/train/compose/eval) or a Hydra multirun "
                    "folder as report.md, PNG figures and metrics.csv.")
    p.add_argument("path", help="a run folder (with metrics.json) or a multirun folder (numbered job folders)")
    p.add_argument("--out", default=None, help="where report.md and metrics.csv go (default: PATH)")
    p.add_argument("--refresh", action="store_true", help="redraw figures that already exist")
    p.add_argument("-q", "--quiet", action="store_true", help="no summary table")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from fvtrain.reporting.report import ReportError, build_report, summary_rows

    try:
        rep = build_report(args.path, args.out, args.refresh)
    except ReportError as err:
        print(f"fvtrain-report: error: {err}", file=sys.stderr)
        return 2
    if not args.quiet:
        from fvtrain.console import print_table

        cols, rows = summary_rows(rep)
        print_table(f"{rep.kind}: {len(rep.jobs)} job(s)", cols, rows)
        if rep.incomplete:
            print(f"{len(rep.incomplete)} job folder(s) without metrics.json: "
                  + ", ".join(p.name for p in rep.incomplete))
    print(f"report: {rep.report_md}")
    print(f"metrics: {rep.metrics_csv} ({len(rep.jobs)} row(s))")
    print(f"figures: {len(rep.figures)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
