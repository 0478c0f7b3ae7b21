"""A crash at every file operation: the data folder's promises hold in every state a power cut can leave.

The method of ALICE (Pillai et al., OSDI 2014): record the file operations of
a scripted run through the seam (``fileops.OPS``), then, for every prefix of
them, build the folder as a crash at that point leaves it: the prefix whole,
its last step torn (half an append, half a new file), or the renames and
unlinks since the last folder fsync lost. Each state is recovered as a
restart would (the writer's recovery, the energy restore), written on, closed,
and checked:

* no second is lost that a completed flush had told durable;
* no second is counted twice: the report's rows are the distinct seconds the files hold;
* the energy counter equals the report;
* the upload units carry every second of the files exactly once (what BigQuery would hold).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import pytest

from wattchecker_client import fileops
from wattchecker_client.clock import FakeClock, time_zone, utc_epoch
from wattchecker_client.datadir import STAMP_RE, FAILED_DIR, open_text
from wattchecker_client.protocol import Measurement
from wattchecker_client.report import meter_report
from wattchecker_client.upload.hours import hour_files, readable_rows
from wattchecker_client.writer import closed_files_in

from .service import Service

STEM = "wattchecker-data"
H = dt.datetime(2026, 7, 1, 10, 58, 0)
UTC = time_zone("UTC")
Op = Tuple  # ("append"|"create", path, data) | ("rename", src, dst) | ("unlink", path) | ("sync", path) | ("durable", seconds)


class Recorder(fileops.FileOps):
    """The real steps, each noted (relative to the data folder) after it is done."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ops: List[Op] = []

    def _rel(self, path: Path) -> str:
        return os.path.relpath(path, self.root)

    def append(self, path: Path, data: bytes) -> None:
        super().append(path, data)
        self.ops.append(("append", self._rel(path), bytes(data)))

    def create(self, path: Path, data: bytes) -> None:
        super().create(path, data)
        self.ops.append(("create", self._rel(path), bytes(data)))

    def rename(self, source: Path, target: Path) -> None:
        super().rename(source, target)
        self.ops.append(("rename", self._rel(source), self._rel(target)))

    def unlink(self, path: Path) -> None:
        super().unlink(path)
        self.ops.append(("unlink", self._rel(path)))

    def sync_dir(self, path: Path) -> None:
        super().sync_dir(path)
        self.ops.append(("sync", self._rel(path)))


def measurement(t: dt.datetime) -> Measurement:
    second = int((t - H).total_seconds())
    return Measurement(t, 100.0 + second % 7 / 10, 1000.0 + second, 50.0 + (second * 37 % 101) / 3)


def scripted_run(data_dir: Path, recorder: Recorder) -> None:
    """Flushes across an hour's close, a gap filled late (a .part1), a repeated second, energy checkpoints."""
    clock = FakeClock(H)
    service = Service(data_dir, clock)
    writer, live = service.writer, service.live

    class Noting:
        """The energy counter, and a note in the record of what each flush told durable."""

        late_rows_coming = live.late_rows_coming

        def durable(self, meter: str, rows: List[Tuple[int, float]], complete: bool) -> None:
            live.durable(meter, rows, complete)
            recorder.ops.append(("durable", frozenset(t for t, _ in rows)))

    writer.listener = Noting()

    def write(offsets) -> None:
        for s in offsets:
            writer.add("m", measurement(H + dt.timedelta(seconds=s)))
        writer.flush()

    write(range(0, 40))
    write(list(range(40, 90)) + list(range(100, 125)))  # hour 10 closes at 11:00:00; a gap 90..99
    live.save(force=True)
    write(range(125, 150))
    write(range(90, 100))  # the gap's rows, late: 10:59:30.. for the closed hour: a .part1
    write(range(140, 160))  # seconds held already (a meter set back), then new ones
    live.save(force=True)
    clock.advance(3 * 3600)  # the meter goes quiet: the host clock closes hour 11
    writer.tick()
    live.checkpoint()
    live.save(force=True)


def replay(ops: List[Op], into: Path, torn: Optional[Op] = None, lose_unsynced: bool = False) -> None:
    """The folder as ``ops`` leave it, with ``torn`` half done after them, or their unsynced renames lost."""
    files: Dict[str, bytes] = {}
    last_sync = max((i for i, op in enumerate(ops) if op[0] == "sync"), default=-1)
    for index, op in enumerate(ops):
        kind = op[0]
        if lose_unsynced and index > last_sync and kind in ("rename", "unlink"):
            continue
        if kind == "append":
            files[op[1]] = files.get(op[1], b"") + op[2]
        elif kind == "create":
            files[op[1]] = op[2]
        elif kind == "rename":
            files[op[2]] = files.pop(op[1])
        elif kind == "unlink":
            files.pop(op[1], None)
    if torn is not None:
        half = torn[2][: len(torn[2]) // 2]
        files[torn[1]] = (files.get(torn[1], b"") if torn[0] == "append" else b"") + half
    into.mkdir(parents=True)
    for name, data in files.items():
        (into / name).parent.mkdir(parents=True, exist_ok=True)
        (into / name).write_bytes(data)


def seconds_on_disk(data_dir: Path) -> Tuple[Set[int], Set[int]]:
    """(distinct seconds any data file holds, those only the plain current files hold)."""
    closed: Set[int] = set()
    plain: Set[int] = set()
    for path in data_dir.iterdir():
        if path.name.endswith(".gz"):
            into = closed
        elif path.name in (f"{STEM}.csv", f"{STEM}.json"):
            into = plain
        else:
            continue
        with open_text(path) as f:
            for line in f:
                match = STAMP_RE.search(line) if line.endswith("\n") else None
                if match:
                    into.add(utc_epoch(dt.datetime.strptime(match.group(0), "%Y-%m-%d %H:%M:%S")))
    return closed | plain, plain - closed


def check(data_dir: Path, durable: Set[int], label: str) -> int:
    """Recover the folder as a restart would, write on, close, and check every promise; the rows checked."""
    service = Service(data_dir, FakeClock(H + dt.timedelta(hours=4)))
    writer, live = service.writer, service.live
    seconds, _ = seconds_on_disk(data_dir)
    assert durable <= seconds, f"{label}: durable seconds lost: {sorted(durable - seconds)[:5]}"
    report = meter_report(data_dir, STEM, "m", UTC)
    assert report.rows == len(seconds), f"{label}: the report counts {report.rows} rows of {len(seconds)} seconds"
    live.save(force=True)
    energy = live.snapshot()["m"].energy_joules
    assert energy == pytest.approx(report.total().watt_seconds, rel=1e-12, abs=1e-9), f"{label}: energy"
    # Write on after the restart (the gap's last rows again among them), and close every hour.
    newest = max(seconds, default=utc_epoch(H))
    for t in [newest + s for s in range(1, 30)] + [utc_epoch(H) + 95]:
        writer.add("m", measurement(dt.datetime(1970, 1, 1) + dt.timedelta(seconds=t)))
    writer.flush()
    for fs in writer.all_sets():
        fs.close_current()
    writer.flush()
    live.checkpoint()
    if live.restorer is not None:
        live.restorer.join(60)
    live.save(force=True)
    seconds, plain = seconds_on_disk(data_dir)
    assert not plain
    report = meter_report(data_dir, STEM, "m", UTC)
    assert report.rows == len(seconds), f"{label}: after writing on, {report.rows} rows of {len(seconds)} seconds"
    assert live.snapshot()["m"].energy_joules == pytest.approx(report.total().watt_seconds, rel=1e-12), label
    uploaded: List[int] = []
    for unit in hour_files(closed_files_in(data_dir)):
        uploaded += [utc_epoch(dt.datetime.strptime(r["datetime"], "%Y-%m-%d %H:%M:%S")) for r in readable_rows(unit)[1]]
    assert sorted(uploaded) == sorted(seconds), f"{label}: the upload units do not carry each second once"
    assert not (data_dir / FAILED_DIR).exists(), f"{label}: a file the writer wrote was taken for damaged"
    return len(seconds)


def test_a_crash_at_every_file_operation_keeps_every_promise(tmp_path, capsys):
    recorded = tmp_path / "run"
    recorded.mkdir()
    recorder = Recorder(recorded)
    real, fileops.OPS = fileops.OPS, recorder
    try:
        scripted_run(recorded, recorder)
    finally:
        fileops.OPS = real
    ops = [op for op in recorder.ops if op[0] != "durable"]
    kinds = {op[0] for op in ops}
    assert kinds == {"append", "create", "rename", "unlink", "sync"}
    states = 0
    rows = 0
    durable: Set[int] = set()
    done: List[Op] = []
    for op in recorder.ops:
        if op[0] == "durable":
            durable |= op[1]
            continue
        if op[0] in ("append", "create"):  # a crash in the middle of this step
            states += 1
            rows += check_state(tmp_path, states, done, set(durable), torn=op)
        done.append(op)
        states += 1
        rows += check_state(tmp_path, states, done, set(durable))
        if op[0] in ("rename", "unlink"):  # a crash before the folder's fsync made it durable
            states += 1
            rows += check_state(tmp_path, states, done, set(durable), lose_unsynced=True)
    with capsys.disabled():
        print(f"\ncrash states checked: {states} after {len(ops)} file operations ({rows} rows checked)")
    variants = sum(op[0] in ("append", "create", "rename", "unlink") for op in ops)
    assert states == len(ops) + variants


def check_state(tmp_path: Path, number: int, done: List[Op], durable: Set[int], **how) -> int:
    state = tmp_path / f"state-{number}"
    replay(done, state, **how)
    label = f"state {number}: after {done[-1][:2] if done else 'nothing'} {how or ''}"
    try:
        return check(state, durable, label)
    finally:
        shutil.rmtree(state)
