"""`upload --config FILE [PATH...]`: the closed hours not yet in BigQuery, now."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..clock import Clock
from ..config import ConfigError, load_config
from .common import EXIT_FAILED, EXIT_OK


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload", help="upload closed hours to BigQuery now")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--dry-run", action="store_true", help="only list what would be uploaded")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="closed .gz files to upload (also from failed/); default: every hour not yet uploaded")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..uploader import BigQueryTarget, Uploader, hour_files, readable_rows, PermanentError

    config = load_config(args.config)
    if config.bigquery is None:
        raise ConfigError(f"{args.config}: bigquery: is not configured; nothing to upload to")
    target = None if args.dry_run else BigQueryTarget(config.bigquery, config.named_files)
    uploader = Uploader(config.general.data_dir, target, Clock())
    files = hour_files([Path(p).resolve() for p in args.paths]) if args.paths else uploader.backlog()
    if args.paths and not files:
        raise ConfigError("none of the paths is a closed hour file (NAME.csv|json.YYYY-MM-DD_HH[.partN].gz)")
    progress = Progress(len(files))
    counts = {"uploaded": 0, "skipped": 0, "failed": 0, "retry": 0}
    rows = 0
    for done, hour_file in enumerate(files, 1):
        if args.dry_run:
            try:
                outcome, n = ("skipped", 0) if hour_file.key in uploader.ledger else ("uploaded", len(readable_rows(hour_file)[1]))
            except PermanentError:
                outcome, n = "failed", 0
        else:
            outcome, n = uploader.upload(hour_file)
        counts[outcome] += 1
        rows += n
        progress.show(done, rows)
        if outcome == "retry":
            break  # BigQuery cannot be reached: the rest would only wait too
    progress.close()
    left = len(files) - sum(counts.values())
    summary = [
        f"{'would upload' if args.dry_run else 'uploaded'} {counts['uploaded']} hour file(s), {rows} rows",
        f"skipped {counts['skipped']} already uploaded",
        f"failed {counts['failed']}" + (" (see failed/)" if counts["failed"] and not args.dry_run else ""),
    ]
    if counts["retry"]:
        summary.append(f"{counts['retry'] + left} left queued: BigQuery could not be reached")
    print("; ".join(summary))
    return EXIT_OK if not counts["failed"] and not counts["retry"] else EXIT_FAILED


class Progress:
    """A one-line progress bar on a terminal; silent otherwise."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.enabled = sys.stderr.isatty() and total > 0

    def show(self, done: int, rows: int) -> None:
        if self.enabled:
            filled = int(30 * done / self.total)
            sys.stderr.write(f"\r[{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total} hours, {rows} rows")
            sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
