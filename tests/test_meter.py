"""The meter session and reader over real sockets, against scripted and simulated meters."""

from __future__ import annotations

import datetime as dt
import logging
import random
import socket
import threading

import pytest

from wattchecker_client import protocol
from wattchecker_client.clock import Backoff, Clock, FakeClock
from wattchecker_client.meter import MeterMemory, MeterReader, MeterSession, ReaderListener, ReaderSettings, links_for
from wattchecker_client.protocol import Measurement, MeasurementError, encode_frame
from wattchecker_client.simulator import SimOptions, SimulatedMeter
from wattchecker_client.transport import LinkError, LinkTimeout, socket_link

BUILT = bytes.fromhex("AA 11 00 08 00 E0 83 04 13 92 01 B5 8D 00 1E 18 09 07 09 13 65")
BUILT_VALUE = Measurement(dt.datetime(2019, 9, 7, 9, 24, 30), 102.931, 2311.75, 181.385)
ACK_CLOCK = bytes.fromhex("AA 02 00 01 00 97")
ACK_START = bytes.fromhex("AA 02 00 02 00 AB")
ACK_STOP = encode_frame(protocol.ack_payload(protocol.CMD_STOP))
BAD_CRC = BUILT[:-1] + b"\x00"
HANDSHAKE = [ACK_CLOCK, ACK_START]
NOW = dt.datetime(2019, 9, 7, 9, 24, 29)


def session_for(peer, **kwargs) -> MeterSession:
    return MeterSession(peer.client, FakeClock(NOW), response_timeout=0.5, **kwargs)


def started(scripted, *answers):
    """A scripted meter that acknowledges the handshake, then gives ``answers``; a started session on it."""
    peer = scripted(HANDSHAKE + list(answers))
    session = session_for(peer)
    session.start()
    return peer, session


def test_handshake_sets_the_clock_in_utc_and_starts(scripted):
    peer = scripted(HANDSHAKE + [BUILT, ACK_STOP])
    session = session_for(peer, start_argument=0x1E)
    session.start()
    assert session.poll() == BUILT_VALUE
    session.stop()
    assert peer.requests == [
        protocol.set_clock_request(NOW)[3:-1],
        bytes([0x02, 0x1E]),
        bytes([0x08]),
        bytes([0x03]),
    ]


@pytest.mark.parametrize(
    "answer",
    [
        [BUILT[:1], BUILT[1:4], BUILT[4:20], BUILT[20:]],  # split frames
        ACK_START + BUILT,  # a stray 6-byte ack before the measurement
        [ACK_START, b"\x01\x02\x03", BUILT[:7], BUILT[7:]],  # stray ack, junk, split
        b"\xaa\x05\x00junk" + BUILT,  # a false sync in the junk
    ],
    ids=["split", "stray-ack", "ack-junk-split", "false-sync"],
)
def test_poll_survives_what_the_radio_does(scripted, answer):
    peer, session = started(scripted, answer)
    assert session.poll() == BUILT_VALUE
    assert peer.requests[-1] == b"\x08"


def test_several_frames_in_one_read(scripted):
    later = encode_frame(
        protocol.measurement_payload(Measurement(dt.datetime(2019, 9, 7, 9, 24, 31), 102.0, 1000.0, 100.0))
    )
    peer, session = started(scripted, BUILT + later, BUILT)
    assert session.poll() == BUILT_VALUE
    # The second frame of that read answers no request we made: it is stale,
    # dropped and counted before the next request, which gets its own answer.
    assert session.poll() == BUILT_VALUE
    assert session.stats.stray_frames == 1


def test_bad_crc_is_never_returned_and_the_poll_is_retried(scripted):
    peer, session = started(scripted, BAD_CRC, BUILT)
    assert session.poll() == BUILT_VALUE
    assert peer.requests[-2:] == [b"\x08", b"\x08"]
    assert session.stats.crc_errors == 1 and session.stats.retries == 1


def test_corrupted_length_is_noticed_when_the_line_goes_quiet(scripted):
    long_length = bytearray(BUILT)
    long_length[1] = 0x13  # claims two more bytes than are ever sent
    peer, session = started(scripted, bytes(long_length), BUILT)
    assert session.poll() == BUILT_VALUE
    assert session.stats.truncated == 1


def test_no_answer_raises_link_error_after_retries(scripted):
    peer = scripted(HANDSHAKE + [None, None, None, None])
    session = MeterSession(peer.client, Clock(), response_timeout=0.1, retries=3)
    session.start()
    with pytest.raises(LinkError, match="no valid response to command 0x08 after 4 attempts"):
        session.poll()
    assert session.stats.timeouts == 4


def test_peer_gone_is_a_link_error(scripted):
    peer, session = started(scripted)
    peer.hang_up()
    with pytest.raises(LinkError):
        session.poll()


def test_non_zero_status_is_rejected_not_returned(scripted):
    bad_status = encode_frame(bytes([0x08, 0x01]) + BUILT[5:-1])
    peer, session = started(scripted, bad_status)
    with pytest.raises(MeasurementError, match="status 0x01"):
        session.poll()
    assert session.stats.rejected == 1


def test_stop_sends_the_stop_frame_byte_exact():
    ours, meter_end = socket.socketpair()  # raw bytes at the meter's end, before any decoder
    session = MeterSession(socket_link(ours, "raw meter", timeout=1.0), FakeClock(NOW), response_timeout=0.5)
    with meter_end:
        meter_end.sendall(ACK_STOP)  # the meter's acknowledgement, ready when it is awaited
        session.stop()
        assert meter_end.recv(64) == bytes.fromhex("AA 01 00 03 0A")
    assert session.stats.timeouts == 0  # the acknowledgement was read, not waited out


@pytest.mark.parametrize("death", ["closed here", "hung up there"])
def test_stop_is_best_effort_on_a_dead_link(scripted, caplog, death):
    peer, session = started(scripted, ACK_STOP)
    if death == "closed here":
        peer.client.close()
    else:
        peer.hang_up()
    with caplog.at_level(logging.DEBUG, logger="wattchecker_client.meter"):
        session.stop()  # no exception: a stop at shutdown must not turn into a crash
    assert b"\x03" not in peer.requests  # the dead link carried no stop to the meter
    assert session.stats.timeouts == 0  # it gave up at once instead of waiting for an answer
    assert "scripted meter: stop not acknowledged: scripted meter: " in caplog.text


# --- pacing and backoff -------------------------------------------------------------


def test_backoff_doubles_with_jitter_up_to_the_cap():
    backoff = Backoff(1.0, 60.0, random.Random(4))
    delays = [backoff.next_delay() for _ in range(10)]
    ceilings = [1, 2, 4, 8, 16, 32, 60, 60, 60, 60]
    assert all(0.5 <= d <= c for d, c in zip(delays, ceilings))
    assert delays[-1] > 1  # it did grow
    backoff.reset()
    assert backoff.next_delay() <= 1.0


# --- the reader ------------------------------------------------------------------------


def test_reader_reconnects_and_skips_repeated_seconds(caplog):
    """Embedded simulator dropping the link every 6 requests; fast clock; real sockets."""
    stop = threading.Event()
    reader = MeterReader(ReaderSettings("sim://?clock_speed=20&drop_after=6&seed=5", poll_interval=0.02,
                                        backoff=(0.01, 0.05)), Clock(), stop)
    caplog.set_level(logging.INFO)
    got = []
    for m in reader.readings():
        got.append(m)
        if len(got) == 12:
            break
    assert reader.stats.connects >= 3
    assert reader.stats.link_errors >= 2
    times = [m.time for m in got]
    assert all(a != b for a, b in zip(times, times[1:]))
    assert sum("reconnecting" in r.message for r in caplog.records) == reader.stats.link_errors
    assert all(protocol.quantize(m) == m for m in got)


def test_reader_stops_when_asked_during_backoff():
    """A stop set from another thread ends a real backoff wait at once.

    The backoff lasts an hour, so only an honoured stop explains the return,
    and the stop is set only once the reader is inside that wait.
    """
    stop, backing_off = threading.Event(), threading.Event()

    class HourLongBackoff(Backoff):
        def next_delay(self) -> float:
            backing_off.set()
            return 3600.0

    with socket.socket() as refusing:
        refusing.bind(("127.0.0.1", 0))  # bound, never listening: every connect is refused
        address = "tcp://127.0.0.1:%d" % refusing.getsockname()[1]
        reader = MeterReader(ReaderSettings(address, timeout=0.5), Clock(), stop)
        reader.backoff = HourLongBackoff()
        got = []
        runner = threading.Thread(target=lambda: got.extend(reader.readings()), daemon=True)
        runner.start()
        assert backing_off.wait(60), "the link never failed"
        stopper = threading.Timer(0.3, stop.set)  # well inside the hour-long wait
        stopper.start()
        runner.join(20)
        stopper.cancel()
    assert not runner.is_alive(), "the stop was ignored during the backoff"
    assert stop.is_set() and got == []
    assert reader.stats.link_errors == 1 and reader.stats.connects == 0  # stopped in the first backoff


def test_reader_logs_an_outage_once_and_backs_off(caplog):
    stop = threading.Event()
    clock = FakeClock()
    backoff = Backoff(1, 60, random.Random(3))
    reader = MeterReader(ReaderSettings("tcp://127.0.0.1:9", timeout=0.2), clock, stop)
    reader.backoff = backoff
    delays = []
    next_delay = backoff.next_delay

    def recorded_delay():
        delays.append(next_delay())
        if len(delays) == 5:
            stop.set()
        return delays[-1]

    backoff.next_delay = recorded_delay
    caplog.set_level(logging.DEBUG)
    start = clock.monotonic()
    assert list(reader.readings()) == []
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "reconnecting" in warnings[0].message
    assert reader.stats.link_errors == 5
    assert [0.5 <= d <= c for d, c in zip(delays, [1, 2, 4, 8, 16])] == [True] * 5
    assert clock.monotonic() - start == pytest.approx(sum(delays[:4]))  # slept each delay, in slices


def measurement_frame(when: dt.datetime) -> bytes:
    return encode_frame(protocol.measurement_payload(Measurement(when, 101.0, 500.0, 50.0)))


def test_a_meter_clock_set_back_never_records_a_second_twice(scripted):
    """Seconds at or before the last one recorded (a clock set back) are counted and skipped."""
    last = BUILT_VALUE.time
    stamps = [last - dt.timedelta(seconds=2), last - dt.timedelta(seconds=1), last,
              last + dt.timedelta(seconds=1), last + dt.timedelta(seconds=1), last + dt.timedelta(seconds=3)]
    peer = scripted(HANDSHAKE + [measurement_frame(t) for t in stamps] + [ACK_STOP])
    settings = ReaderSettings("00:0C:BF:12:34:56", channel=6)
    reader = MeterReader(settings, FakeClock(last), threading.Event(),
                         links=links_for(settings, rfcomm_factory=peer.rfcomm_factory), memory=MeterMemory(last))
    readings = reader.readings()
    got = [next(readings).time, next(readings).time]
    readings.close()
    assert got == [last + dt.timedelta(seconds=1), last + dt.timedelta(seconds=3)]
    assert (reader.stats.stale_seconds, reader.stats.duplicates) == (2, 2)
    assert (reader.stats.gaps, reader.stats.missing_seconds) == (1, 1)
    assert peer.requests[-1] == b"\x03"  # closing the reader stopped the measurement


@pytest.mark.parametrize("polls, resets", [(14, 2), (13, 1)])
def test_a_drifting_meter_clock_is_set_again_at_most_once_an_hour(caplog, polls, resets):
    """Host time runs 10 min per poll while the meter keeps real time: a huge drift. Stopped after 13
    polls, the 13th poll's set is still waiting for its second: it is not sent, logged or counted."""
    stop = threading.Event()
    clock = FakeClock(dt.datetime(2026, 1, 1, 0, 0, 0))
    reader = MeterReader(ReaderSettings("sim://?seed=2", poll_interval=600.0), clock, stop)

    def beat():
        if reader.stats.polls >= polls:  # 14 polls: 2 h 20 min of host time
            stop.set()

    reader.listener.heartbeat = beat
    caplog.set_level(logging.INFO)
    got = list(reader.readings())
    # set at connect (00:00), then at the first poll an hour after each set (01:00:01, 02:10:01), not at every poll
    assert reader.stats.clock_resets == resets
    assert caplog.text.count("s off; setting it to") == resets
    assert caplog.text.count("setting it to 2026-01-01 01:00:01 UTC") == 1
    assert got and all(m == protocol.quantize(m) for m in got)  # the meter's own stamps


class LateLink:
    """A simulated meter in memory whose every answer comes 0-60 ms late on the fake clock: a busy link."""

    name = "late meter"

    def __init__(self, meter: SimulatedMeter, clock: FakeClock, seed: int) -> None:
        self.meter, self.clock, self.rng = meter, clock, random.Random(seed)
        self.decoder, self.pending = meter.dialect.decoder(), b""

    def write(self, data: bytes) -> None:
        self.decoder.feed(data)
        for frame in self.decoder:
            self.clock.advance(self.rng.uniform(0.0, 0.06))
            self.pending += self.meter.respond(frame.payload)

    def read(self, max_bytes: int = 4096, timeout=None) -> bytes:
        if not self.pending:
            raise LinkTimeout(f"{self.name}: nothing to read")
        data, self.pending = self.pending[:max_bytes], self.pending[max_bytes:]
        return data

    def close(self) -> None:
        pass

    def __enter__(self) -> "LateLink":
        return self

    def __exit__(self, *exc: object) -> None:
        pass


@pytest.mark.parametrize("model", ["btwattch1", "btwattch2"])
def test_polls_keep_clear_of_the_tick_of_the_clock_they_set(model):
    """The clock is set at .98 of the host's second, so the meter ticks there, about where polls on the
    host's whole seconds land as the link jitters: the reader polls half a second away, and an hour
    of readings is every second of the meter's, once."""
    clock = FakeClock(dt.datetime(2026, 1, 1, 0, 0, 0, 980000))
    meter = SimulatedMeter(SimOptions(model=model, seed=4), clock)
    stop = threading.Event()
    reader = MeterReader(ReaderSettings("sim://", model=model), clock, stop,
                         links=lambda: LateLink(meter, clock, seed=5))
    got = []
    for measurement in reader.readings():
        got.append(measurement.time)
        if len(got) == 3600:
            stop.set()
    assert reader.stats.clock_resets == 0 and reader.stats.connects == 1  # set once, at connect
    assert got == [got[0] + dt.timedelta(seconds=n) for n in range(3600)]
    assert (reader.stats.duplicates, reader.stats.missing_seconds, reader.stats.phase_moves) == (0, 0, 0)
    assert reader.stats.polls == 3600


def test_a_clock_set_waits_for_the_whole_second_and_sends_that_seconds_time():
    """Decided at 10.502 s, reached at 10.505 s: sent at 11 s as 11 s (cut instead of rounded, 10 s: a meter
    a second behind), and the polls then aim half a second into the meter's seconds."""
    clock = FakeClock(dt.datetime(2026, 1, 1, 0, 0, 10, 505000))
    reader = MeterReader(ReaderSettings("sim://"), clock, threading.Event())
    sent = []

    class Session:
        def set_clock(self, when: dt.datetime) -> None:
            sent.append((clock.now(), when))

    eleven = dt.datetime(2026, 1, 1, 0, 0, 11)
    assert reader._set_clock(Session(), dt.datetime(2026, 1, 1, 0, 0, 10, 502000)) == eleven
    assert sent == [(eleven, eleven)]
    assert reader.phase.offset == 0.5 and reader.phase.delay(eleven) == 0.5
    assert reader._set_clock(Session(), eleven) == eleven and sent[-1] == (eleven, eleven)  # on the second: no wait


def test_a_stop_during_the_wait_for_the_whole_second_sends_no_set():
    """Stopping while a set waits for its second: nothing is sent, and the polls keep their place."""
    clock = FakeClock(dt.datetime(2026, 1, 1, 0, 0, 10, 505000))
    stop = threading.Event()

    class StopAtOnce(ReaderListener):
        def heartbeat(self) -> None:
            stop.set()

    reader = MeterReader(ReaderSettings("sim://"), clock, stop, listener=StopAtOnce())
    sent = []

    class Session:
        def set_clock(self, when: dt.datetime) -> None:
            sent.append(when)

    assert reader._set_clock(Session(), clock.now()) is None
    assert sent == [] and reader.phase.offset == 0.0


class Recorder(ReaderListener):
    """A listener that writes down what the reader tells, and stops it after ``readings`` readings."""

    def __init__(self, stop: threading.Event, readings: int) -> None:
        self.stop, self.wanted = stop, readings
        self.events: list = []

    def connected(self) -> None:
        self.events.append("connected")

    def disconnected(self) -> None:
        self.events.append("disconnected")

    def reading(self, measurement: Measurement, relay) -> None:
        self.events.append((measurement, relay))
        if sum(isinstance(e, tuple) for e in self.events) == self.wanted:
            self.stop.set()


@pytest.mark.parametrize("model, relay", [("btwattch1", None), ("btwattch2", True)])
def test_the_listener_hears_each_connection_and_each_new_second_once(model, relay):
    """Simulated meter dropping the link every 6 requests: connected, readings, disconnected, and again."""
    stop = threading.Event()
    recorder = Recorder(stop, 10)
    settings = ReaderSettings("sim://?clock_speed=20&drop_after=6&seed=5", model=model, poll_interval=0.02,
                              backoff=(0.01, 0.05))
    reader = MeterReader(settings, Clock(), stop, recorder)
    reader.run()
    events = recorder.events
    readings = [e for e in events if isinstance(e, tuple)]
    assert len(readings) == 10 and all(r == relay for _, r in readings)
    times = [m.time for m, _ in readings]
    assert times == sorted(set(times))  # each second once, in order
    # "connected" opens each connection, "disconnected" closes it: the link failed, or the reader stopped
    marks = [e for e in events if isinstance(e, str)]
    assert marks == ["connected", "disconnected"] * reader.stats.connects and reader.stats.connects >= 2
    assert events[0] == "connected" and events[-1] == "disconnected"
