"""`upload --config FILE [PATH...]`: the closed hours not yet in BigQuery, now."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Iterator, List

from ..clock import Clock
from ..config import ConfigError, load_config
from ..errors import SetupError
from .common import EXIT_FAILED, EXIT_OK


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("upload", help="upload closed hours to BigQuery now")
    p.add_argument("--config", required=True, help="path to config.yaml")
    p.add_argument("--dry-run", action="store_true", help="only list what would be uploaded")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help="closed .gz files to upload (also from failed/); default: every hour not yet uploaded")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..identity import device_values, for_config
    from ..upload.bigquery import BigQueryTarget
    from ..upload.hours import hour_files
    from ..upload.uploader import Uploader

    config = load_config(args.config)
    if config.bigquery is None:
        raise ConfigError(f"{args.config}: bigquery: is not configured; nothing to upload to")
    try:
        target = None if args.dry_run else BigQueryTarget(config.bigquery, config.named_files)
    except SetupError as exc:
        raise config.located(exc) from None
    uploader = Uploader(config.general.data_dir, target, Clock(), devices=device_values(config, for_config(config)))
    files = hour_files([Path(p).resolve() for p in args.paths]) if args.paths else uploader.backlog()
    if args.paths and not files:
        raise ConfigError("none of the paths is a closed hour file (NAME.csv|json.YYYY-MM-DD_HH[.partN].gz)")
    progress = Progress(len(files))
    counts = {"uploaded": 0, "skipped": 0, "failed": 0, "retry": 0}
    rows = 0
    for outcomes, n in (dry_run(uploader, files) if args.dry_run else batches(uploader, files)):
        for outcome in outcomes.values():
            counts[outcome] += 1
        rows += n
        progress.show(sum(counts.values()), rows)
    progress.close()
    left = len(files) - sum(counts.values())
    summary = [
        f"{'would upload' if args.dry_run else 'uploaded'} {counts['uploaded']} hour file(s), {rows} rows"
        + ("" if args.dry_run else f" in {uploader.stats.jobs} load job(s)"),
        f"skipped {counts['skipped']} already uploaded",
        f"failed {counts['failed']}" + (" (see failed/)" if counts["failed"] and not args.dry_run else ""),
    ]
    if counts["retry"] or left:
        summary.append(f"{counts['retry'] + left} left queued: BigQuery could not be reached")
    print("; ".join(summary))
    return EXIT_OK if not counts["failed"] and not counts["retry"] and not left else EXIT_FAILED


def batches(uploader, files: List) -> Iterator:
    """Batches as the service loads them (a day of one meter per job), after any the last run left."""
    from ..upload.hours import day_groups

    if not uploader.resolve_pending():
        return  # BigQuery cannot be reached: everything stays queued
    for group in day_groups(files):
        while group:
            outcomes, n = uploader.upload_group(group)
            yield outcomes, n
            if "retry" in outcomes.values():
                return  # BigQuery cannot be reached: the rest would only wait too
            group = [h for h in group if h.key not in outcomes]


def dry_run(uploader, files: List) -> Iterator:
    """What would load: each hour's rows, without a network call."""
    from ..upload.errors import PermanentError
    from ..upload.hours import readable_rows

    for hour_file in files:
        outcome: Dict[str, str] = {}
        try:
            if hour_file.key in uploader.ledger:
                outcome[hour_file.key], n = "skipped", 0
            else:
                outcome[hour_file.key], n = "uploaded", len(readable_rows(hour_file)[1])
        except PermanentError:
            outcome[hour_file.key], n = "failed", 0
        yield outcome, n


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
