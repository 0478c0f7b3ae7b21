"""The service's own log file: size-rotated like logging.handlers.RotatingFileHandler, without importing it."""

from __future__ import annotations

import logging

from wattchecker_client.config import parse_config
from wattchecker_client.logs import configure_logging


def test_log_file_rotates_by_size_keeping_the_newest_lines_in_order(tmp_path):
    data = tmp_path / "data"
    config = parse_config(
        f"general:\n  data_dir: {data}\n  log_file: service.log\n  log_max_bytes: 10000\n  log_backup_count: 2\n"
        "device:\n  address: 'sim://'\n"
    )
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.raiseExceptions)
    try:
        configure_logging(config, environ={})
        log = logging.getLogger("wattchecker_client.test")
        for n in range(60):
            log.warning("line %03d %s", n, "x" * 900)  # about 1 kB a line: ten to a file
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
            handler.close()
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
        logging.raiseExceptions = saved[2]
    names = sorted(p.name for p in data.iterdir())
    assert names == ["service.log", "service.log.1", "service.log.2"]  # two backups, no more
    kept = [data / "service.log.2", data / "service.log.1", data / "service.log"]
    assert all(0 < p.stat().st_size <= 10000 for p in kept)
    numbers = [int(line.split("line ")[1][:3]) for p in kept for line in p.read_text().splitlines()]
    assert numbers == list(range(60 - len(numbers), 60))  # the newest lines, oldest file first, none lost between
    assert len(numbers) >= 20
