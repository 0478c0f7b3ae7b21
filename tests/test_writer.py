"""The writer with a fake clock: exact file contents, hour placement, gzip, recovery, disk full."""

from __future__ import annotations

import datetime as dt
import gzip
import queue
from pathlib import Path

import pytest

from wattchecker_client.clock import FakeClock
from wattchecker_client.datadir import append_summaries, summarize_closed_hours
from wattchecker_client.formats import csv_line, json_line
from wattchecker_client.simulator import air_conditioner
from wattchecker_client.writer import HOLD_LIMIT, ClosedFile, Writer

from .conftest import fill_disk, tmpfs

T9 = dt.datetime(2019, 9, 7, 9, 0, 0)
T10 = T9 + dt.timedelta(hours=1)


def rows(start: dt.datetime, seconds: int, step: int = 1) -> list:
    return [air_conditioner(start + dt.timedelta(seconds=s)) for s in range(0, seconds, step)]


def gz_text(path: Path) -> str:
    with gzip.open(path, "rt") as f:
        return f.read()


def make_writer(tmp_path: Path, clock: FakeClock, formats=("csv", "json"), **kwargs) -> Writer:
    closed: "queue.Queue[ClosedFile]" = queue.Queue()
    writer = Writer(tmp_path, {"wattchecker": "wattchecker-data"}, formats, clock, closed_files=closed, **kwargs)
    writer.recover()
    return writer


def announced(writer: Writer) -> list:
    items = []
    while not writer.closed_files.empty():
        items.append(writer.closed_files.get_nowait())
    return [(c.format, c.path.name) for c in items]


def feed(writer: Writer, measurements) -> None:
    for m in measurements:
        writer.add("wattchecker", m)


def test_rows_are_buffered_then_flushed_in_both_formats_exactly(tmp_path):
    clock = FakeClock(T9 + dt.timedelta(minutes=10))
    writer = make_writer(tmp_path, clock, buffer_seconds=180)
    data = rows(T9 + dt.timedelta(minutes=10), 5)
    feed(writer, data)
    writer.tick()
    assert not (tmp_path / "wattchecker-data.csv").exists()  # still buffered
    clock.advance(180)
    writer.tick()
    assert (tmp_path / "wattchecker-data.csv").read_text() == "".join(csv_line(m) + "\n" for m in data)
    assert (tmp_path / "wattchecker-data.json").read_text() == "".join(json_line(m) + "\n" for m in data)


def test_a_row_goes_to_the_hour_of_its_own_timestamp(tmp_path):
    clock = FakeClock(T10 + dt.timedelta(minutes=5))
    writer = make_writer(tmp_path, clock)
    before = rows(T10 - dt.timedelta(seconds=3), 3)  # 09:59:57 .. 09:59:59
    after = rows(T10, 2)  # 10:00:00, 10:00:01
    feed(writer, before + after)
    writer.flush()  # flushed at 10:05: the 09 rows still go to hour 09
    assert gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_09.gz") == "".join(csv_line(m) + "\n" for m in before)
    assert (tmp_path / "wattchecker-data.csv").read_text() == "".join(csv_line(m) + "\n" for m in after)
    assert sorted(announced(writer)) == [
        ("csv", "wattchecker-data.csv.2019-09-07_09.gz"),
        ("json", "wattchecker-data.json.2019-09-07_09.gz"),
    ]


class Witness(queue.Queue):
    """The uploader's end of the queue: which closed files were on disk when it heard of each."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__()
        self.data_dir = data_dir
        self.heard = []

    def put(self, item, *args, **kwargs) -> None:
        self.heard.append((item.path.name, sorted(p.name for p in self.data_dir.glob("*.gz"))))
        super().put(item, *args, **kwargs)


def test_an_hour_is_announced_only_once_every_format_has_closed_it(tmp_path):
    """The uploader loads an hour as soon as it hears of it: the JSON (full precision) must be there."""
    clock = FakeClock(T10 + dt.timedelta(minutes=5))
    witness = Witness(tmp_path)
    writer = Writer(tmp_path, {"wattchecker": "wattchecker-data"}, ("csv", "json"), clock, closed_files=witness)
    writer.recover()
    feed(writer, rows(T10 - dt.timedelta(seconds=3), 5))  # 09:59:57 .. 10:00:01
    writer.flush()  # hour 09 closed by the rows of hour 10
    hour9 = ["wattchecker-data.csv.2019-09-07_09.gz", "wattchecker-data.json.2019-09-07_09.gz"]
    assert sorted(witness.heard) == [(hour9[0], hour9), (hour9[1], hour9)]
    clock.advance(3600)  # 11:05: hour 10 closed by the host clock
    writer.tick()
    hour10 = ["wattchecker-data.csv.2019-09-07_10.gz", "wattchecker-data.json.2019-09-07_10.gz"]
    assert sorted(witness.heard[2:]) == [(hour10[0], sorted(hour9 + hour10)), (hour10[1], sorted(hour9 + hour10))]


def test_an_hour_one_format_will_never_close_is_announced_after_the_hold_limit(tmp_path):
    clock = FakeClock(T10 + dt.timedelta(minutes=5))
    data = rows(T9 + dt.timedelta(minutes=50), 5)
    # A crash between the formats' flushes left hour 09 one second longer in JSON than in CSV.
    with gzip.open(tmp_path / "wattchecker-data.json.2019-09-07_09.gz", "wt") as f:
        f.write("".join(json_line(m) + "\n" for m in data))
    with gzip.open(tmp_path / "wattchecker-data.csv.2019-09-07_09.gz", "wt") as f:
        f.write("".join(csv_line(m) + "\n" for m in data[:4]))
    writer = make_writer(tmp_path, clock)
    feed(writer, data[4:])  # the second again, late: only the CSV lacks it
    writer.flush()
    assert gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_09.part1.gz") == csv_line(data[4]) + "\n"
    assert not (tmp_path / "wattchecker-data.json.2019-09-07_09.part1.gz").exists()
    clock.advance(HOLD_LIMIT - 1)
    writer.tick()
    assert announced(writer) == []  # waiting for a JSON part that will never come
    clock.advance(1)
    writer.tick()
    assert announced(writer) == [("csv", "wattchecker-data.csv.2019-09-07_09.part1.gz")]


def test_a_full_hour_closes_when_the_next_hour_is_written(tmp_path):
    clock = FakeClock(T9)
    writer = make_writer(tmp_path, clock, formats=("json",))
    hour9 = rows(T9, 3600)
    for chunk in range(0, 3600, 600):
        feed(writer, hour9[chunk : chunk + 600])
        writer.flush()
    assert not list(tmp_path.glob("*.gz"))
    feed(writer, rows(T10, 1))
    writer.flush()
    lines = gz_text(tmp_path / "wattchecker-data.json.2019-09-07_09.gz").splitlines()
    assert lines == [json_line(m) for m in hour9]
    assert len((tmp_path / "wattchecker-data.json").read_text().splitlines()) == 1


def test_the_host_clock_closes_an_hour_when_the_meter_goes_quiet(tmp_path):
    clock = FakeClock(T9 + dt.timedelta(minutes=59))
    writer = make_writer(tmp_path, clock, formats=("csv",), grace=120)
    feed(writer, rows(T9 + dt.timedelta(minutes=59), 30))
    clock.advance(60 + 119)  # 10:01:59: inside the grace
    writer.tick()
    assert not list(tmp_path.glob("*.gz"))
    clock.advance(1)  # 10:02:00
    writer.tick()
    assert len(gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_09.gz").splitlines()) == 30
    assert not (tmp_path / "wattchecker-data.csv").exists()
    assert announced(writer) == [("csv", "wattchecker-data.csv.2019-09-07_09.gz")]


def test_a_late_row_for_a_closed_hour_becomes_a_part_never_an_overwrite(tmp_path):
    clock = FakeClock(T10 + dt.timedelta(minutes=3))
    writer = make_writer(tmp_path, clock, formats=("csv",))
    first = rows(T9 + dt.timedelta(minutes=50), 10)
    feed(writer, first + rows(T10, 5))
    writer.flush()
    closed_bytes = (tmp_path / "wattchecker-data.csv.2019-09-07_09.gz").read_bytes()
    late = [air_conditioner(T9 + dt.timedelta(minutes=55))]
    feed(writer, late + first[:2])  # a new second, and two it already holds
    writer.flush()
    assert (tmp_path / "wattchecker-data.csv.2019-09-07_09.gz").read_bytes() == closed_bytes
    assert gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_09.part1.gz") == csv_line(late[0]) + "\n"
    assert announced(writer)[-1] == ("csv", "wattchecker-data.csv.2019-09-07_09.part1.gz")


def test_a_meter_clock_set_back_never_writes_a_second_of_the_current_hour_twice(tmp_path):
    """After the reader's watermark follows a set-back clock, repeated seconds reach the writer: it leaves them out."""
    clock = FakeClock(T9 + dt.timedelta(minutes=30))
    writer = make_writer(tmp_path, clock, formats=("csv",))
    first = rows(T9 + dt.timedelta(minutes=10), 10)
    feed(writer, first)
    writer.flush()
    earlier = rows(T9 + dt.timedelta(minutes=5), 1)  # a second not written yet, before the others
    again = rows(T9 + dt.timedelta(minutes=10, seconds=5), 10)  # five written already, five new
    feed(writer, earlier + again + again[-2:])
    writer.flush()
    expected = first + earlier + again[5:]
    assert (tmp_path / "wattchecker-data.csv").read_text() == "".join(csv_line(m) + "\n" for m in expected)


def test_restart_keeps_appending_to_the_current_hour(tmp_path):
    clock = FakeClock(T9 + dt.timedelta(minutes=30))
    writer = make_writer(tmp_path, clock, formats=("csv",))
    feed(writer, rows(T9, 10))
    writer.flush()
    again = make_writer(tmp_path, clock, formats=("csv",))
    assert again.last_time("wattchecker") == T9 + dt.timedelta(seconds=9)
    feed(again, rows(T9 + dt.timedelta(seconds=10), 10))
    again.flush()
    assert (tmp_path / "wattchecker-data.csv").read_text() == "".join(csv_line(m) + "\n" for m in rows(T9, 20))
    assert not list(tmp_path.glob("*.gz"))


def test_recovery_finishes_a_close_interrupted_after_the_rename(tmp_path):
    clock = FakeClock(T10)
    data = rows(T9, 20)
    text = "".join(csv_line(m) + "\n" for m in data)
    with gzip.open(tmp_path / "wattchecker-data.csv.2019-09-07_09.gz", "wt") as f:
        f.write(text)
    (tmp_path / "wattchecker-data.csv").write_text(text)  # the plain file was not yet removed
    (tmp_path / "wattchecker-data.csv.2019-09-07_08.gz.tmp").write_bytes(b"\x1f\x8b half")
    writer = make_writer(tmp_path, clock, formats=("csv",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["wattchecker-data.csv.2019-09-07_09.gz"]
    assert gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_09.gz") == text
    assert announced(writer) == []  # nothing new: no second was missing
    assert writer.last_time("wattchecker") == data[-1].time


def test_recovery_finds_the_newest_second_in_every_row_of_the_newest_hour_and_in_the_latest_summary(tmp_path):
    """Read row by row (a file of an older release is not sorted; a damaged late part is quarantined and
    counts for nothing) and summary by summary: a format with no file takes the newest hour's latest line."""
    clock = FakeClock(T10 + dt.timedelta(hours=2))
    nine, ten = rows(T9, 3600, step=60), rows(T10, 1200, step=60)
    for hour, data in (("09", nine), ("10", ten[1:] + ten[:1])):  # 10: its newest row in the middle
        with gzip.open(tmp_path / f"wattchecker-data.csv.2019-09-07_{hour}.gz", "wt") as f:
            f.write("".join(csv_line(m) + "\n" for m in data))
    summaries = summarize_closed_hours(tmp_path, "wattchecker-data")
    late = tmp_path / "wattchecker-data.csv.2019-09-07_10.part1.gz"
    with gzip.open(late, "wt") as f:  # a row past every other, then a line that is no row: all or nothing
        f.write(csv_line(air_conditioner(T10 + dt.timedelta(minutes=50))) + "\nnot a row\n")
    writer = make_writer(tmp_path, clock)
    last = {fs.format: fs.last_time for fs in writer.sets["wattchecker"]}
    assert last == {"csv": ten[-1].time, "json": ten[-1].time}
    assert not late.exists() and (tmp_path / "failed" / late.name).exists()
    earlier = summaries[T10]._replace(last=(600, summaries[T10].last[1]))  # a later line for the hour replaces it
    append_summaries(tmp_path, "wattchecker-data", [earlier, summaries[T9]])
    again = make_writer(tmp_path, clock)
    assert {fs.format: fs.last_time for fs in again.sets["wattchecker"]}["json"] == T10 + dt.timedelta(seconds=600)
    assert again.last_time("wattchecker") == ten[-1].time  # the CSV's rows hold the newer second


def test_recovery_closes_a_plain_file_spanning_hours_and_cuts_a_torn_line(tmp_path):
    clock = FakeClock(T10 + dt.timedelta(minutes=1))
    data = rows(T9 + dt.timedelta(minutes=59, seconds=58), 4)  # 09:59:58 .. 10:00:01
    text = "".join(csv_line(m) + "\n" for m in data)
    (tmp_path / "wattchecker-data.csv").write_text(text + "2019-09-07 10:00:02,101.")
    make_writer(tmp_path, clock, formats=("csv",))
    assert gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_09.gz") == "".join(csv_line(m) + "\n" for m in data[:2])
    assert gz_text(tmp_path / "wattchecker-data.csv.2019-09-07_10.gz") == "".join(csv_line(m) + "\n" for m in data[2:])
    assert not (tmp_path / "wattchecker-data.csv").exists()


def test_buffer_limit_drops_only_the_oldest_and_counts_them(tmp_path, caplog):
    clock = FakeClock(T9)
    writer = make_writer(tmp_path, clock, formats=("csv",), max_buffered_rows=60)
    feed(writer, rows(T9, 100))
    assert writer.stats.rows_dropped == 40
    assert "dropped the oldest" in caplog.text
    writer.flush()
    assert (tmp_path / "wattchecker-data.csv").read_text() == "".join(csv_line(m) + "\n" for m in rows(T9, 100)[40:])


@pytest.fixture
def tiny_disk(tmp_path):
    with tmpfs(tmp_path / "disk", "64k") as path:
        yield path


def test_disk_full_keeps_rows_in_memory_and_retries(tiny_disk, caplog):
    clock = FakeClock(T9)
    writer = make_writer(tiny_disk, clock, formats=("json",))
    filler = fill_disk(tiny_disk / "filler")
    data = rows(T9, 50)
    feed(writer, data)
    writer.flush()
    writer.flush()
    assert writer.stats.write_errors == 2
    assert caplog.text.count("cannot write") == 1  # logged once per outage
    current = tiny_disk / "wattchecker-data.json"
    assert not current.exists() or current.read_text() == ""  # no torn rows left behind
    filler.unlink()  # space again
    writer.flush()
    assert current.read_text() == "".join(json_line(m) + "\n" for m in data)
    assert "writing works again" in caplog.text


def test_recovery_on_a_full_disk_waits_and_never_appends_after_a_torn_line(tiny_disk, caplog):
    clock = FakeClock(T9 + dt.timedelta(minutes=5))
    before = rows(T9, 3)
    good = "".join(csv_line(m) + "\n" for m in before)
    current = tiny_disk / "wattchecker-data.csv"
    current.write_text(good + "2019-09-07 09:00:03,10")  # torn by a crash
    filler = fill_disk(tiny_disk / "filler")
    writer = make_writer(tiny_disk, clock, formats=("csv",))  # recovery cannot rewrite: no crash
    after = rows(T9 + dt.timedelta(seconds=3), 3)
    feed(writer, after)
    writer.flush()
    assert current.read_text().endswith(",10")  # untouched while the disk is full
    filler.unlink()
    writer.flush()
    assert current.read_text() == good + "".join(csv_line(m) + "\n" for m in after)
