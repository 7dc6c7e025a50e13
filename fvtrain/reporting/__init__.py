"""Reports of finished runs: tables, figures, report.md and metrics.csv."""
