"""A host clock that boots stale, steps and synchronises late: the meter's clock and the rows stay right.

Through the clock seam: a FakeClock whose wall clock steps alone and whose
synchronised flag is played, a simulated meter on the same clock (it keeps
its own time across host steps, as a real one does) over a real socketpair.
Then the real service under libfaketime, with only its wall clock faked.
"""

from __future__ import annotations

import datetime as dt
import glob
import logging
import os
import platform
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from wattchecker_client import protocol
from wattchecker_client.clock import Clock, FakeClock, utc_epoch
from wattchecker_client.clocksync import kernel_clock
from wattchecker_client.config import ConfigError, parse_config
from wattchecker_client.daemon import Daemon
from wattchecker_client.meter import MeterReader, ReaderSettings, links_for
from wattchecker_client.protocol import Measurement, encode_frame
from wattchecker_client.simulator import SimOptions, SimulatedMeter, serve_link
from wattchecker_client.transport import socket_link

from .conftest import ROOT, run_cli, wait_for, write_config
from .datacheck import check_data_dir, read

TRUE_START = dt.datetime(2026, 11, 29, 6, 0, 0)  # the real time when a scenario starts
TWO_DAYS = 2 * 86400.0
MAC = "00:0C:BF:12:34:56"
ACK_CLOCK, ACK_START, ACK_STOP = (encode_frame(protocol.ack_payload(command))
                                  for command in (protocol.CMD_SET_CLOCK, protocol.CMD_START, protocol.CMD_STOP))


class RecordingMeter(SimulatedMeter):
    """The simulated meter, noting every clock set it receives: (host monotonic time, value)."""

    def __init__(self, clock: Clock, **options) -> None:
        super().__init__(SimOptions(seed=3, **options), clock)
        self.sets = []

    def respond(self, payload: bytes) -> bytes:
        if payload[0] == protocol.CMD_SET_CLOCK:
            self.sets.append((self.clock.monotonic(), protocol.decode_clock(payload)))
        return super().respond(payload)


def rfcomm_to(meter: SimulatedMeter):
    """In place of the RFCOMM connect: a socketpair with ``meter`` serving the far end."""

    def connect(mac: str, channel: int, timeout: float) -> socket.socket:
        ours, theirs = socket.socketpair()

        def serve() -> None:
            with socket_link(theirs, "simulated meter", 5.0) as link:
                serve_link(link, meter, threading.Event())

        threading.Thread(target=serve, daemon=True).start()
        return ours

    return connect


def reader_for(clock: Clock, meter: SimulatedMeter, **kwargs) -> MeterReader:
    settings = ReaderSettings(MAC, channel=6, **kwargs)
    return MeterReader(settings, clock, threading.Event(), links=links_for(settings, rfcomm_factory=rfcomm_to(meter)))


def drive(reader: MeterReader, clock: FakeClock, seconds: float, events=None):
    """Run ``reader`` for ``seconds`` of fake time, doing ``events[t](clock)`` at t seconds.

    Returns (seconds since the start, host wall clock, reading) for each reading yielded.
    """
    start = clock.monotonic()
    pending = sorted((events or {}).items())

    def beat() -> None:
        elapsed = clock.monotonic() - start
        while pending and elapsed >= pending[0][0]:
            pending.pop(0)[1](clock)
        if elapsed >= seconds:
            reader.stop.set()

    reader.listener.heartbeat = beat
    return [(clock.monotonic() - start, clock.now(), m) for m in reader.readings()]


def synchronise(step: float):
    """NTP answers: the wall clock steps by ``step`` and the kernel marks it synchronised."""

    def act(clock: FakeClock) -> None:
        clock.step(step)
        clock.set_synchronised(True)

    return act


def stamps(got) -> list:
    return [m.time for _, _, m in got]


def assert_each_second_once(got) -> None:
    times = stamps(got)
    assert times == sorted(set(times)), "a second recorded twice, or out of order"


def off_by(when: dt.datetime, reference: dt.datetime) -> float:
    return abs((when - reference).total_seconds())


def booted_stale(meter_offset: float = 0.0):
    """A Pi at boot: host clock two days behind and unsynchronised; the meter ``meter_offset`` s off the truth."""
    clock = FakeClock(TRUE_START + dt.timedelta(seconds=meter_offset))
    meter = RecordingMeter(clock)
    clock.step(-meter_offset - TWO_DAYS)
    clock.set_synchronised(False)
    return clock, meter


# --- the kernel's answer ---------------------------------------------------------------


def test_adjtimex_is_read_with_the_right_struct_layout():
    """The wall clock and the tick length sit after the status field: wrong offsets would show here."""
    state = kernel_clock()
    assert state is not None, "adjtimex is there on every Linux"
    assert abs(state.seconds - utc_epoch(Clock().now())) <= 2
    assert round(1e6 / state.tick_us) in (100, 250, 300, 1000)  # the kernel's HZ
    assert 0 <= state.maxerror_us <= 16_000_000
    assert 0 <= state.state <= 5
    assert Clock().synchronised() == state.synchronised


# --- a boot with a stale host clock ------------------------------------------------------


def test_a_right_meter_clock_is_left_alone_while_the_host_clock_is_stale(caplog):
    """Synchronised after 20 s: no clock set before, nor after (the meter was right); every row right."""
    clock, meter = booted_stale()
    reader = reader_for(clock, meter, time_sync_wait=180)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 40, {20: synchronise(TWO_DAYS)})
    assert meter.sets == []
    assert len(got) >= 38
    truth = [TRUE_START + dt.timedelta(seconds=elapsed) for elapsed, _, _ in got]
    assert max(off_by(m.time, t) for (_, _, m), t in zip(got, truth)) <= 1
    assert_each_second_once(got)
    assert (reader.stats.clock_steps, reader.stats.behind_host, reader.stats.ahead_of_host) == (1, 0, 0)
    assert ("the system clock is not synchronised yet; reading on with the meter's own clock" in caplog.text
            and "still not synchronised after 180 s)" in caplog.text)
    assert "waiting" not in caplog.text  # nothing waits: reading goes on
    assert "the system clock is synchronised" in caplog.text


def test_a_meter_behind_an_unsynchronised_host_lost_its_power_and_is_set_forward_at_once(caplog):
    """The Pi's clock is 2 days behind and unsynchronised; the meter 2 days behind that (it lost its power).

    Its stamps are surely wrong: the first reading is skipped and the meter set
    forward to the host clock, the best lower bound of the real time; rows are
    in that time from then on, with no second twice.
    """
    clock, meter = booted_stale(meter_offset=-2 * TWO_DAYS)
    reader = reader_for(clock, meter, time_sync_wait=180)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 40)
    ((set_at, set_to),) = meter.sets  # once, at the first reading
    elapsed_at_set = set_at - (clock.monotonic() - 40)
    assert elapsed_at_set <= 1.5
    assert off_by(set_to, TRUE_START - dt.timedelta(seconds=TWO_DAYS - elapsed_at_set)) <= 1
    assert max(off_by(m.time, host) for _, host, m in got) <= 1  # stamped as the host clock says
    assert_each_second_once(got)
    s = reader.stats
    assert (s.behind_host, s.clock_resets) == (1, 1)
    assert len(got) == s.readings - 1 == 39  # a poll at 1 s, then at every half second after the set
    assert "behind the unsynchronised host clock; reading skipped" in caplog.text


def test_a_right_meter_is_never_set_back_by_an_unsynchronised_host_when_the_wait_runs_out(caplog):
    """No network: never synchronised, the host clock 2 days behind. The wait runs out; the meter keeps its time."""
    clock, meter = booted_stale()
    reader = reader_for(clock, meter, time_sync_wait=15)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 60)
    warnings = [r.message for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"{MAC}: the system clock is still not synchronised after 15 s (time_sync_wait): it may "
                        "lag, so it only ever sets a meter's clock forward"]
    assert meter.sets == []
    assert len(got) == reader.stats.readings == 59  # every second kept, before the wait ran out and after
    assert max(off_by(m.time, TRUE_START + dt.timedelta(seconds=elapsed)) for elapsed, _, m in got) <= 1
    assert_each_second_once(got)
    assert reader.stats.stale_seconds == 0


def test_with_no_wait_an_unsynchronised_host_sets_only_a_meter_behind_it(caplog):
    clock = FakeClock(TRUE_START, synchronised=False)
    meter = RecordingMeter(clock)
    reader = reader_for(clock, meter, time_sync_wait=0)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 5)
    assert meter.sets == []  # right: left alone
    assert len(got) == 4
    assert caplog.text.count("still not synchronised after 0 s") == 1


class ServingMeter(RecordingMeter):
    """The recording meter, also noting every second its clock shows in a measurement it serves."""

    def __init__(self, clock: Clock, **options) -> None:
        super().__init__(clock, **options)
        self.served = set()

    def respond(self, payload: bytes) -> bytes:
        if payload[0] == protocol.CMD_GET_DATA:
            self.served.add(self.now())
        return super().respond(payload)


SECONDS = 240


def test_a_fast_meter_clock_polled_flat_out_on_an_unsynchronised_host_keeps_every_served_second_once(caplog):
    """A simulated meter whose clock runs 4x fast, polled 8 times a second for 4 minutes; never synchronised.

    It runs ever further ahead of the host clock, which may lag: nothing sets
    it back and nothing is judged stale, so every second it serves is kept, once.
    """
    clock = FakeClock(TRUE_START, synchronised=False)
    meter = ServingMeter(clock, clock_speed=4.0)
    reader = reader_for(clock, meter, time_sync_wait=15, poll_interval=0.125)
    got = drive(reader, clock, SECONDS)
    assert stamps(got) == sorted(meter.served)
    assert len(got) >= 4 * (SECONDS - 1)
    s = reader.stats
    assert (s.stale_seconds, s.ahead_of_host, s.behind_host, s.clock_resets) == (0, 0, 0, 0)
    assert meter.sets == []


# --- steps while running -----------------------------------------------------------------


def test_a_forward_step_re_sets_the_meter_within_one_poll(caplog):
    clock = FakeClock(TRUE_START)
    meter = RecordingMeter(clock)
    reader = reader_for(clock, meter)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 30, {10.5: lambda c: c.step(3600)})
    (_, handshake), (set_at, set_to) = meter.sets
    assert handshake == TRUE_START
    assert 10.5 <= set_at - (clock.monotonic() - 30) <= 11.5
    assert set_to == TRUE_START + dt.timedelta(seconds=3600 + 11)
    assert "the host clock stepped +3600.0 s" in caplog.text
    assert max(off_by(m.time, host) for _, host, m in got) <= 1  # every row in the host's time
    assert_each_second_once(got)
    s = reader.stats
    assert (s.clock_steps, s.behind_host, s.gaps) == (1, 1, 0)  # the one reading in the old time skipped
    assert len(got) == s.readings - 1 == 29  # polled at 0.5 s to 29.5 s: half a second clear of the meter's tick


def test_a_backward_step_re_sets_the_meter_and_the_watermark_follows(caplog):
    """A synchronised host steps 30 s back: the meter is set back, and the right seconds after that are kept.

    Only the ten seconds already recorded in the wrong time are not recorded again.
    """
    clock = FakeClock(TRUE_START)
    meter = RecordingMeter(clock)
    reader = reader_for(clock, meter)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 60, {10.5: lambda c: c.step(-30)})
    (_, _), (set_at, set_to) = meter.sets
    assert 10.5 <= set_at - (clock.monotonic() - 60) <= 11.5
    assert set_to == TRUE_START + dt.timedelta(seconds=11 - 30)
    assert "the host clock stepped -30.0 s" in caplog.text
    times = stamps(got)
    assert len(times) == len(set(times)), "a second recorded twice"
    after = [(host, m) for elapsed, host, m in got if elapsed > 11.5]
    assert max(off_by(m.time, host) for host, m in after) <= 1  # rows carry the host's time from the set on
    assert times[:10] == [TRUE_START + dt.timedelta(seconds=k) for k in range(10)]  # polled at .5
    assert times[10] == set_to  # the second the set began, read half a second into it
    s = reader.stats
    assert (s.clock_steps, s.ahead_of_host) == (1, 1)  # the reading in the old time, ahead: skipped
    assert (s.stale_seconds, s.duplicates) == (0, 10)  # 06:00:00-09 came again: counted, not recorded
    assert len(got) + s.ahead_of_host + s.duplicates == s.readings


def test_an_unsynchronised_host_stepping_back_sets_a_meter_back_keeping_its_reading_and_the_seconds_after(caplog):
    """A step proves the host clock was set: the meter, now 60 s ahead, is set back; its reading is kept.

    The watermark follows the set after that reading, so the right seconds
    that follow are kept; only the eleven already recorded are not, again.
    """
    clock = FakeClock(TRUE_START, synchronised=False)
    meter = RecordingMeter(clock)
    reader = reader_for(clock, meter, time_sync_wait=0)
    got = drive(reader, clock, 80, {10.5: lambda c: c.step(-60)})
    ((set_at, set_to),) = meter.sets
    assert set_to == TRUE_START + dt.timedelta(seconds=11 - 60)
    times = stamps(got)
    assert times[:11] == [TRUE_START + dt.timedelta(seconds=k) for k in range(1, 12)]  # the ahead one kept
    assert times[11] == set_to  # set on the whole second, read half a second into it
    assert len(times) == len(set(times)), "a second recorded twice"
    s = reader.stats
    assert (s.stale_seconds, s.duplicates, s.clock_resets) == (0, 11, 1)
    assert len(got) + s.duplicates == s.readings


def test_a_meter_far_ahead_of_a_synchronised_host_is_skipped_counted_and_set(scripted):
    """A meter back from a power cut with a wrong clock; the seconds after the fix are kept."""
    start = dt.datetime(2026, 7, 1, 12, 0, 0)
    ahead = start + dt.timedelta(days=1)

    def frame(when: dt.datetime) -> bytes:
        return encode_frame(protocol.measurement_payload(Measurement(when, 101.0, 500.0, 50.0)))

    second = dt.timedelta(seconds=1)
    peer = scripted([ACK_CLOCK, ACK_START, frame(start + second), frame(start + 2 * second), frame(ahead),
                     ACK_CLOCK, frame(start + 4 * second), frame(start + 5 * second), ACK_STOP])
    clock = FakeClock(start)
    settings = ReaderSettings(MAC, channel=6)
    reader = MeterReader(settings, clock, threading.Event(),
                         links=links_for(settings, rfcomm_factory=peer.rfcomm_factory))
    readings = reader.readings()
    got = [next(readings).time for _ in range(4)]
    readings.close()
    assert got == [start + second, start + 2 * second, start + 4 * second, start + 5 * second]
    assert reader.stats.ahead_of_host == 1
    sets = [r for r in peer.requests if r[0] == protocol.CMD_SET_CLOCK]
    assert sets == [protocol.set_clock_request(start)[3:-1], protocol.set_clock_request(start + 3 * second)[3:-1]]


def test_a_meter_clock_that_ignores_being_set_is_recorded_as_it_is(caplog):
    """The simulator's fast clock never goes back: skipping its readings would lose them all."""
    clock = FakeClock(TRUE_START)
    meter = RecordingMeter(clock, clock_speed=60)
    reader = reader_for(clock, meter)
    caplog.set_level(logging.INFO)
    got = drive(reader, clock, 10)
    assert len(got) == 10 and reader.stats.ahead_of_host == 0  # set at 0 s, polled at 0.5 s to 9.5 s
    assert caplog.text.count("stays") == 1


# --- the service -----------------------------------------------------------------------------


class PiClock(Clock):
    """Real time, but with a wall clock set off and a synchronised flag played, as on a Pi at boot."""

    def __init__(self, offset: float, synchronised: bool) -> None:
        self.offset = offset
        self.in_sync = synchronised

    def now(self) -> dt.datetime:
        return super().now() + dt.timedelta(seconds=self.offset)

    def synchronised(self) -> bool:
        return self.in_sync


def test_the_service_says_it_waits_for_the_clock_and_records_the_meters_right_time(tmp_path):
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(60)  # a failure bound for each message
    meter = RecordingMeter(Clock())  # keeps the true time
    pi = PiClock(-TWO_DAYS, synchronised=False)
    data = tmp_path / "data"
    config = parse_config(
        f"general:\n  data_dir: {data}\n  data_buffer_size: 0.2\n  poll_interval: 0.1\n  time_sync_wait: 60\n"
        f"device:\n  address: '{MAC}'\n  channel: 6\n"
    )
    daemon = Daemon(config, pi, rfcomm_factory=rfcomm_to(meter), environ={"NOTIFY_SOCKET": str(notify.getsockname())})
    runner = threading.Thread(target=daemon.run)
    started = Clock().now().replace(microsecond=0)
    runner.start()
    try:
        ready = notify.recv(4096).decode()
        wait_for(lambda: (data / "wattchecker-data.csv").exists(), timeout=60, what="the first rows")
        pi.offset, pi.in_sync = 0.0, True  # NTP answers
        after = notify.recv(4096).decode()
        wait_for(lambda: daemon.readers[config.devices[0].name].stats.clock_steps, timeout=60, what="the step")
    finally:
        daemon.stop.set()
        runner.join(20)
        notify.close()
    ended = Clock().now()
    assert ready == (f"READY=1\nSTATUS=reading wattchecker at {MAC}; clock: the meter's (the system clock is not "
                     "synchronised and may lag; a meter behind it is set forward, never back); "
                     "the system clock is not synchronised yet (a warning if it is not within 60 s)")
    assert after == f"STATUS=reading wattchecker at {MAC}; clock: the system's (synchronised)"
    assert meter.sets == []
    seconds = check_data_dir(data, 3)["csv"]
    assert seconds and all(started <= when <= ended for when in seconds)


# --- the real process under libfaketime --------------------------------------------------------


def libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1")) + sorted(
        glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    return found[0]


@pytest.mark.parametrize("step_after", [None, 12.0], ids=["never synchronised", "steps to the real time"])
def test_the_running_service_two_days_behind_keeps_a_right_meters_seconds(simulator, daemons, tmp_path, step_after):
    """The issue's Pi: the service's wall clock 2 days behind, never synchronised, ``time_sync_wait: 8``.

    Only the wall clock is faked (Python's waits need the real monotonic
    clock); the simulated meter keeps the real time in its own, unfaked
    process. This kernel calls its clock unsynchronised, so the wait is live.
    The meter is never set back: at least 95 % of the seconds it served from
    the first row to the last are in the files, with its stamps, none twice.
    With ``step_after``, the offset file then steps the service to the real
    time: rows still carry the real time, and the step is seen.
    """
    (address,) = simulator("--seed", "7").addresses
    offset = tmp_path / "faketime"
    offset.write_text("-2d\n")
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", data, address, poll_interval=0.25, data_format=["csv"],
                          time_sync_wait=8)
    env = {"LD_PRELOAD": libfaketime(), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    started = Clock().now()
    daemon = daemons(config, tmp_path, env=env)
    if step_after is not None:
        wait_for(lambda: len(seconds_in(data)) >= step_after, timeout=60, what="rows before the step")
        stepped = Clock().now()
        offset.write_text("+0\n")
    wait_for(lambda: len(seconds_in(data)) >= 22, timeout=90, what="22 rows, well past the 8 s wait")
    assert daemon.stop() == 0, daemon.stderr()
    stopped = Clock().now()
    seconds = check_data_dir(data, 7)["csv"]  # also: no second twice
    first, last = min(seconds), max(seconds)
    served = (last - first).total_seconds() + 1
    assert len(seconds) >= 0.95 * served, f"{len(seconds)} of {served:.0f} served seconds kept"
    assert first <= started + dt.timedelta(seconds=10)  # from the start, through the wait
    assert started - dt.timedelta(seconds=2) <= first and last <= stopped + dt.timedelta(seconds=1)  # the meter's time
    log = daemon.stderr()
    assert "setting it to" not in log  # never set from the lagging clock
    assert "stale_seconds=0" in log
    if step_after is not None:
        assert "the host clock stepped +17280" in log
        after = [s for s in seconds if s >= stepped]
        assert after and min(after) <= stepped + dt.timedelta(seconds=10)  # real time within 10 s of the step


def test_a_restart_after_a_deliberate_set_back_keeps_every_right_reading(simulator, daemons, tmp_path):
    """The service steps 60 s back and sets the meter back with it; then it restarts.

    The newest second on disk is then one of the 60 s ahead, now wrong. The
    watermark the set-back left is saved (clock.json) and restored, so the
    restarted service keeps the right seconds from the first, instead of
    skipping a minute of them as stale.
    """
    (address,) = simulator("--seed", "7").addresses
    offset = tmp_path / "faketime"
    offset.write_text("+0\n")
    data = tmp_path / "data"
    config = write_config(tmp_path / "config.yaml", data, address, poll_interval=0.25, data_format=["csv"])
    env = {"LD_PRELOAD": libfaketime(), "FAKETIME_DONT_FAKE_MONOTONIC": "1",
           "FAKETIME_TIMESTAMP_FILE": str(offset), "FAKETIME_NO_CACHE": "1"}
    daemon = daemons(config, tmp_path, env=env)
    wait_for(lambda: len(seconds_in(data)) >= 5, timeout=60, what="rows in the real time")
    offset.write_text("-60\n")  # someone sets the service's clock a minute back: the meter is set back with it
    wait_for(lambda: "setting it to" in daemon.stderr(), timeout=60, what="the meter set back")
    wait_for(lambda: len(seconds_in(data)) >= 12, timeout=60, what="rows after the set-back")
    assert daemon.stop() == 0, daemon.stderr()
    before = set(seconds_in(data))
    wrong_newest = max(before)
    restarted = Clock().now()
    daemon = daemons(config, tmp_path, env=env)
    wait_for(lambda: len(seconds_in(data)) >= 25, timeout=60, what="rows after the restart")
    assert daemon.stop() == 0, daemon.stderr()
    stopped = Clock().now()
    log = daemon.stderr()
    assert "stale_seconds=0" in log and "setting it to" not in log  # none skipped, the meter left alone
    seconds = check_data_dir(data, 7)["csv"]  # also: no second twice
    # Every second the meter served the second run is in the files, from its start: a minute behind the real
    # time, behind the wrong newest one from before the set-back.
    after = sorted(set(seconds) - before)
    assert after and max(after) < wrong_newest and max(after) <= stopped - dt.timedelta(seconds=59)
    served = (max(after) - min(after)).total_seconds() + 1
    assert len(after) >= 0.95 * served, f"{len(after)} of {served:.0f} served seconds kept"  # a busy machine's stall
    assert min(after) <= restarted - dt.timedelta(seconds=60) + dt.timedelta(seconds=10)


def seconds_in(data: Path) -> list:
    """Every CSV row's second, closed hours too: a real-time test may cross the hour."""
    paths = sorted(data.glob("wattchecker-data.csv.*.gz")) + [data / "wattchecker-data.csv"]
    lines = [line for path in paths if path.exists() for line in read(path) if line.count(",") == 3]
    return [dt.datetime.strptime(line.split(",")[0], "%Y-%m-%d %H:%M:%S") for line in lines]


# --- where adjtimex is refused: the service's own unit (ProtectClock=yes) ------------------------

REFUSE_ADJTIMEX = """
import ctypes, sys
from wattchecker_client import clock, clocksync

# A seccomp filter as ProtectClock=yes installs: adjtimex and clock_adjtime (which
# glibc's adjtimex calls) fail with EPERM.
AUDIT_ARCH_X86_64, NR_ADJTIMEX, NR_CLOCK_ADJTIME = 0xC000003E, 159, 305
LD, JEQ, RET = 0x20, 0x15, 0x06
program = [(LD, 0, 0, 4), (JEQ, 0, 4, AUDIT_ARCH_X86_64), (LD, 0, 0, 0), (JEQ, 1, 0, NR_ADJTIMEX),
           (JEQ, 0, 1, NR_CLOCK_ADJTIME), (RET, 0, 0, 0x00050000 | 1), (RET, 0, 0, 0x7FFF0000)]

class Insn(ctypes.Structure):
    _fields_ = [("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte), ("k", ctypes.c_uint)]

class Prog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(Insn))]

insns = (Insn * len(program))(*[Insn(*i) for i in program])
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(Prog(len(program), insns)), 0, 0) == 0  # PR_SET_SECCOMP, filter
print(clocksync.kernel_clock())
for run_dir in sys.argv[1:]:
    clocksync.TIMESYNCD_RUN_DIR = run_dir
    print(clock.Clock().synchronised())
"""


@pytest.mark.process
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the test's seccomp filter is written for x86_64")
def test_where_adjtimex_is_refused_timesyncds_flag_file_decides(tmp_path):
    absent, running, synced = tmp_path / "absent", tmp_path / "running", tmp_path / "synced"
    running.mkdir()
    synced.mkdir()
    (synced / "synchronized").touch()
    result = subprocess.run([sys.executable, "-c", REFUSE_ADJTIMEX, str(absent), str(running), str(synced)],
                            capture_output=True, text=True, timeout=30, cwd=ROOT,
                            env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": f"unix:path={tmp_path / 'no-bus'}"})
    assert result.returncode == 0, result.stderr
    # The kernel cannot be asked, nor timedate1 (no bus); timesyncd not running: nobody can tell, so not
    # synchronised; running, not yet; synchronised.
    assert result.stdout.split() == ["None", "False", "False", "True"]


# --- the setting ---------------------------------------------------------------------------------


@pytest.mark.process
def test_check_config_shows_the_wait_and_the_clock_now(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", MAC, time_sync_wait=30)
    result = run_cli("check-config", "--config", str(config), timeout=30)
    assert result.returncode == 0, result.stderr
    if Clock().synchronised():
        trust = "the system clock is synchronised: it sets the meters' clocks"
    else:
        trust = ("the system clock is not synchronised and may lag; a meter behind it is set forward, never back; "
                 "a meter ahead of it keeps its time")
    # This machine lets anyone read adjtimex: the kernel answers (under the unit, timedate1 would).
    assert (f"  time sync: {trust} (now, says the kernel); a warning if it is still not synchronised 30 s after "
            "start (time_sync_wait)\n" in result.stdout)


def test_a_negative_wait_is_refused_with_one_line():
    with pytest.raises(ConfigError) as error:
        parse_config(f"general:\n  time_sync_wait: -5\ndevice:\n  address: '{MAC}'\n", "config.yaml")
    assert str(error.value) == "config.yaml:2: general.time_sync_wait: must be at least 0, got -5"
    assert parse_config(f"device:\n  address: '{MAC}'\n").general.time_sync_wait == 180
