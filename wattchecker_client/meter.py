"""One meter: a session over a connected link, and the reader loop that keeps one alive.

``MeterSession`` speaks the protocol over a ``Link``: set the clock, start,
poll, stop, switch the relay, in the dialect of the meter's model.
``MeterReader`` connects, polls on the wall-clock second, reconnects with
backoff, yields each new measurement once, and runs relay requests from
other threads between polls.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import math
import threading
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

from . import protocol
from .clock import Backoff, Clock, utc_epoch
from .clocktrust import IGNORES_SET, STEPPED, SYNCHRONISED, WAIT_OVER, WAITING, ClockTrust, Host
from .protocol import Frame, Measurement, MeasurementError, ProtocolError, btwattch2
from .relay import RelayPolicy, RelaySettings, RelayStale, RelaySuperseded
from .transport import (
    DEFAULT_TIMEOUT,
    MAC_RE,
    Link,
    LinkError,
    LinkTimeout,
    RfcommFactory,
    SetupError,
    is_ble,
    open_link,
)

if TYPE_CHECKING:  # concurrent.futures costs the service 0.9 MB: imported when a relay is switched
    from concurrent.futures import Future

log = logging.getLogger(__name__)

RESPONSE_TIMEOUT = 2.0
# After a frame fails its CRC, wait until the line has been quiet this long
# before asking again, so the rest of a split response is not mistaken for a
# reply to the repeated request.
SETTLE_TIME = 0.2
RETRIES = 3
# Every channel RFCOMM allows, tried in turn when none is configured and SDP is missing.
PROBE_CHANNELS = range(1, 31)
# Longest sleep between two signs of life to the watchdog: a third of the
# daemon's default stall limit (general.watchdog_stall, 180 s), so a live
# reader in a long backoff never looks stuck. The daemon passes its own.
HEARTBEAT_INTERVAL = 60.0
# How many recorded seconds a reader remembers, so a meter clock set back an hour or less repeats none
# of them (older ones the writer keeps out of its files).
RECENT_SECONDS = 3600


@dataclass
class MeterStats:
    """Counters for everything that can go wrong with one meter."""

    readings: int = 0  # first: the status line leads with it
    polls: int = 0
    retries: int = 0
    timeouts: int = 0
    crc_errors: int = 0
    junk_bytes: int = 0
    stray_frames: int = 0
    truncated: int = 0
    rejected: int = 0
    duplicates: int = 0
    stale_seconds: int = 0
    gaps: int = 0
    missing_seconds: int = 0
    clock_resets: int = 0
    clock_steps: int = 0
    ahead_of_host: int = 0
    behind_host: int = 0
    connects: int = 0
    link_errors: int = 0

    def summary(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))


class NoRelayError(SetupError):
    """A relay request to a model that has none."""


def no_relay(name: str, dialect: protocol.Dialect, hint: str = "") -> NoRelayError:
    return NoRelayError(f"{name}: this meter ({dialect.product}) has no relay; only an RS-BTWATTCH2 "
                        f"(model: btwattch2) can switch its load{hint}")


class MeterSession:
    """The protocol over one connected link; raises LinkError when the link fails."""

    def __init__(
        self,
        link: Link,
        clock: Clock,
        *,
        start_argument: int = 0x00,
        response_timeout: float = RESPONSE_TIMEOUT,
        retries: int = RETRIES,
        stats: Optional[MeterStats] = None,
        model: str = protocol.DEFAULT_MODEL,
    ) -> None:
        self.link = link
        self.clock = clock
        self.dialect = protocol.dialect(model)
        self.relay: Optional[bool] = None  # as the last measurement or acknowledgement said
        self.start_argument = start_argument
        self.response_timeout = response_timeout
        self.retries = retries
        self.stats = stats if stats is not None else MeterStats()
        self.decoder = self.dialect.decoder()
        self._counted_crc = 0
        self._counted_junk = 0

    def start(self, set_clock: bool = True) -> None:
        """Set the meter's clock to UTC now (unless the host's cannot be trusted yet) and start measuring."""
        if set_clock:
            self.set_clock(self.clock.now())
        if self.dialect.start_request is None:
            return  # a BTWATTCH2 measures without being told
        ack = self.request(self.dialect.start_request(self.start_argument), protocol.CMD_START)
        if ack.status:
            log.warning("%s: start measurement answered status 0x%02X", self.link.name, ack.status)

    def set_clock(self, when: dt.datetime) -> None:
        ack = self.request(self.dialect.set_clock_request(when), protocol.CMD_SET_CLOCK)
        if ack.status:
            log.warning("%s: set clock answered status 0x%02X", self.link.name, ack.status)

    def poll(self) -> Measurement:
        """Ask for the latest reading; MeasurementError if the meter's answer is unusable."""
        self.stats.polls += 1
        frame = self.request(self.dialect.get_data_request(), protocol.CMD_GET_DATA)
        try:
            reading = self.dialect.decode_reading(frame.payload)
        except MeasurementError:
            self.stats.rejected += 1
            raise
        self.stats.readings += 1
        self.relay = reading.relay
        return reading.measurement

    def switch_relay(self, on: Optional[bool]) -> bool:
        """Switch the relay on or off, or with None only read it; the state the meter acknowledged.

        There is no command to read the relay: a measurement carries it (byte 26).
        """
        dialect = self.dialect
        if dialect.relay_request is None or dialect.decode_relay_ack is None:
            raise no_relay(self.link.name, dialect)
        if on is None:
            return self._read_relay()
        frame = self.request(dialect.relay_request(on), btwattch2.CMD_RELAY)
        self.relay = dialect.decode_relay_ack(frame.payload)
        return self.relay

    def identify(self) -> bool:
        """Blink the LED (0x3E); True if the meter acknowledged it (its answer is not documented: none is fine)."""
        request = self.dialect.identify_request
        if request is None:
            raise SetupError(f"{self.link.name}: this meter ({self.dialect.product}) has no identify command")
        self._drop_stale()
        self.link.write(request())
        return self._await(btwattch2.CMD_IDENTIFY, self.response_timeout) is not None

    def _read_relay(self) -> bool:
        for _ in range(self.retries + 1):
            try:
                self.poll()
            except MeasurementError:
                continue
            if self.relay is not None:
                return self.relay
        raise ProtocolError(f"{self.link.name}: no measurement carried the relay state")

    def stop(self) -> None:
        """Stop measuring; best effort, since the link may already be gone."""
        if self.dialect.stop_request is None:
            return
        try:
            self.link.write(self.dialect.stop_request())
            self._await(protocol.CMD_STOP, self.response_timeout / 2)
        except LinkError as exc:
            log.debug("%s: stop not acknowledged: %s", self.link.name, exc)

    def request(self, frame: bytes, command: int) -> Frame:
        """Send ``frame`` until a valid response to ``command`` arrives, or raise LinkError."""
        self._drop_stale()
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.retries += 1
            self.link.write(frame)
            response = self._await(command, self.response_timeout)
            if response is not None:
                return response
        raise LinkError(
            f"{self.link.name}: no valid response to command 0x{command:02X} "
            f"after {self.retries + 1} attempts"
        )

    def _await(self, command: int, timeout: float) -> Optional[Frame]:
        """The response to ``command``, or None after a timeout or a corrupted frame."""
        deadline = self.clock.monotonic() + timeout
        crc_errors = self.decoder.crc_errors
        while True:
            for frame in self.decoder:
                if frame.command == command:
                    return frame
                self.stats.stray_frames += 1
            if self.decoder.crc_errors > crc_errors:
                self._settle()
                return None
            remaining = deadline - self.clock.monotonic()
            if remaining <= 0:
                self.stats.timeouts += 1
                return None
            partial = self.decoder.buffered > 0
            try:
                data = self.link.read(timeout=min(remaining, SETTLE_TIME) if partial else remaining)
            except LinkTimeout:
                if partial:  # the line went quiet inside a frame: its length was corrupt
                    self.stats.truncated += 1
                    self.decoder.reset()
                else:
                    self.stats.timeouts += 1
                return None
            self._feed(data)

    def _settle(self) -> None:
        """Read until the line is quiet; a valid frame seen meanwhile is a late reply, kept."""
        while True:
            try:
                data = self.link.read(timeout=SETTLE_TIME)
            except LinkTimeout:
                return
            self._feed(data)

    def _drop_stale(self) -> None:
        for _ in self.decoder:
            self.stats.stray_frames += 1

    def _feed(self, data: bytes) -> None:
        decoder = self.decoder
        decoder.feed(data)
        self.stats.crc_errors += decoder.crc_errors - self._counted_crc
        self.stats.junk_bytes += decoder.junk_bytes - self._counted_junk
        self._counted_crc = decoder.crc_errors
        self._counted_junk = decoder.junk_bytes


def link_opener(
    address: str,
    *,
    channel: Optional[int] = None,
    timeout: float = DEFAULT_TIMEOUT,
    rfcomm_factory: Optional[RfcommFactory] = None,
    model: str = protocol.DEFAULT_MODEL,
    ble_client_factory: Optional[Callable[..., Any]] = None,
) -> Callable[[], Link]:
    """A function that opens ``address`` afresh at each call, for reconnecting.

    ``model`` picks the link where an address means different things per
    model (a MAC: RFCOMM for a BTWATTCH1, BLE for a BTWATTCH2).
    A sim:// meter is created here, once, and lives as long as the function:
    like a real meter, it keeps its clock (and its relay) across reconnections.
    """
    if address.strip().startswith("sim:"):
        from .simulator import embedded_opener

        return embedded_opener(address.strip(), timeout, model=model)
    if is_ble(address, model):
        from .ble import BleOpener  # bleak itself is imported when the link first opens

        return BleOpener(address.strip(), timeout, client_factory=ble_client_factory)
    if channel is None and MAC_RE.match(address.strip()) and importlib.util.find_spec("bluetooth") is None:
        return channel_search(address.strip().upper(), timeout, rfcomm_factory)  # no SDP: probe for it
    return lambda: open_link(address, channel=channel, timeout=timeout, rfcomm_factory=rfcomm_factory)


def channel_search(mac: str, timeout: float, rfcomm_factory: Optional[RfcommFactory]) -> Callable[[], Link]:
    """An opener that finds the meter's RFCOMM channel by probing, once, and reuses it for every reconnect."""
    found: List[int] = []

    def open_found() -> Link:
        if found:
            return open_link(mac, channel=found[0], timeout=timeout, rfcomm_factory=rfcomm_factory)
        channel, link = probe_channel(mac, Clock(), timeout=timeout, rfcomm_factory=rfcomm_factory)
        found.append(channel)
        log.warning("%s: the meter answers on RFCOMM channel %d; put `channel: %d` under it in config.yaml "
                    "(or give `read --channel %d`) to skip this search", mac, channel, channel, channel)
        return link

    return open_found


def probe_channel(
    mac: str,
    clock: Clock,
    *,
    timeout: float = DEFAULT_TIMEOUT,
    rfcomm_factory: Optional[RfcommFactory] = None,
    channels: Sequence[int] = PROBE_CHANNELS,
    response_timeout: float = RESPONSE_TIMEOUT,
) -> Tuple[int, Link]:
    """The first channel on which ``mac`` completes the handshake (clock set, a valid reading), still open.

    Without an SDP module (pybluez does not install on current Pythons) this
    is the only way to find the channel. A refused channel, or one that
    accepts but does not speak the protocol (another service of the device),
    is skipped. Any other connect failure (a timeout, host down) means the
    meter itself is out of reach: LinkError at once, so the reader backs off
    and searches again, instead of waiting out thirty timeouts. While the host
    clock is unsynchronised, the start command's acknowledgement stands in
    for the clock set, so a wrong time never reaches the meter.
    """
    for channel in channels:
        try:
            link = open_link(mac, channel=channel, timeout=timeout, rfcomm_factory=rfcomm_factory)
        except SetupError as exc:  # no RFCOMM on this machine: its advice must not name a guessed channel
            raise SetupError(str(exc).replace(f"{mac} {channel}`", f"{mac} CHANNEL`")) from None
        except LinkError as exc:
            if isinstance(exc.__context__, ConnectionRefusedError):
                continue
            raise LinkError(f"{mac}: cannot reach the meter to search its RFCOMM channel: {exc}") from None
        session = MeterSession(link, clock, response_timeout=response_timeout, retries=1)
        try:
            session.start(set_clock=clock.synchronised())
            session.poll()
        except (LinkError, MeasurementError) as exc:
            log.debug("%s: channel %d is not a WATT CHECKER: %s", mac, channel, exc)
            link.close()
            continue
        return channel, link
    raise LinkError(
        f"{mac}: no RFCOMM channel {channels[0]}-{channels[-1]} answered like a WATT CHECKER (set clock, "
        "a reading): is it paired, powered and in range? Or set its `channel:` (`sdptool browse "
        f"{mac}`)"
    )


def seconds_until_next_tick(now: dt.datetime, interval: float) -> float:
    """Time to the next multiple of ``interval`` on the wall clock, so polls do not drift."""
    epoch = utc_epoch(now) + now.microsecond / 1e6
    next_tick = math.floor(epoch / interval + 1e-9) * interval + interval
    return max(0.0, next_tick - epoch)


class MeterReader:
    """Keeps one meter connected and yields each new reading once, in the meter's time."""

    def __init__(
        self,
        address: str,
        clock: Clock,
        stop: threading.Event,
        *,
        channel: Optional[int] = None,
        model: str = protocol.DEFAULT_MODEL,
        poll_interval: float = 1.0,
        start_argument: int = 0x00,
        timeout: float = DEFAULT_TIMEOUT,
        response_timeout: float = RESPONSE_TIMEOUT,
        backoff: Optional[Backoff] = None,
        rfcomm_factory: Optional[RfcommFactory] = None,
        ble_client_factory: Optional[Callable[..., Any]] = None,
        name: Optional[str] = None,
        last_time: Optional[dt.datetime] = None,
        heartbeat: Callable[[], None] = lambda: None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        time_sync_wait: float = 0.0,
        on_clock_trust: Callable[[], None] = lambda: None,
        on_connect: Callable[[], None] = lambda: None,
        on_disconnect: Callable[[], None] = lambda: None,
        relay: Optional[RelayPolicy] = None,
        on_relay_memory: Callable[[RelayPolicy], None] = lambda policy: None,
    ) -> None:
        self.address = address
        self.clock = clock
        self.stop = stop
        self.poll_interval = poll_interval
        self.start_argument = start_argument
        self.response_timeout = response_timeout
        self.backoff = backoff or Backoff()
        self.model = model
        self.dialect = protocol.dialect(model)
        self._open_link = link_opener(
            address, channel=channel, timeout=timeout, rfcomm_factory=rfcomm_factory, model=model,
            ble_client_factory=ble_client_factory,
        )
        # The BLE links' counters (ble.BleStats) for an RS-BTWATTCH2, else None: the status line and /metrics.
        self.link_stats = getattr(self._open_link, "stats", None)
        # The relay as the last measurement said (None: unknown, or no relay), for the live state.
        self.relay: Optional[bool] = None
        # The relay's desired state (one slot, never a queue), shared with the threads that command it.
        self.relay_policy = (relay or RelayPolicy(RelaySettings())) if self.dialect.has_relay else None
        self.on_relay_memory = on_relay_memory
        self._relay_lock = threading.Lock()
        self._relay_waiters: List[Future] = []  # the futures of the newest command only
        self._relay_readers: List[Future] = []
        self.name = name or address
        self.stats = MeterStats()
        self.last_time = last_time
        self.heartbeat = heartbeat
        self.heartbeat_interval = heartbeat_interval
        self._failing_since: Optional[float] = None
        self._rejected_before = 0
        # The host clock: how long to wait for its synchronisation, and what is known of it.
        self.time_sync_wait = time_sync_wait
        self.on_clock_trust = on_clock_trust  # the status line: which clock is trusted changed
        # The live state follows the link: up after the handshake, down on a failure or at stop.
        self.on_connect = on_connect
        self.on_disconnect = on_disconnect
        self.trust = ClockTrust(self._host(), time_sync_wait=time_sync_wait, poll_interval=poll_interval)
        self._recent: Dict[dt.datetime, None] = {}  # the seconds last recorded, oldest first
        self._set_back_to: Optional[dt.datetime] = None  # where the watermark goes after this reading
        self._skip_gap = False  # the next jump in stamps is a clock re-set, not missing seconds

    @property
    def waiting_for_sync(self) -> bool:
        """True while the host clock is unsynchronised and the wait for it has not run out."""
        return self.trust.waiting(self.clock.monotonic())

    def readings(self) -> Iterator[Measurement]:
        """Yield readings until ``stop`` is set. SetupError propagates: retrying cannot fix it."""
        try:
            while not self.stop.is_set():
                self.heartbeat()
                try:
                    yield from self._one_connection()
                except LinkError as exc:
                    self._link_failed(exc)
                    if self._sleep(self.backoff.next_delay()):
                        return
        finally:
            self._fail_relay_requests(LinkError(f"{self.name}: the reader stopped before the relay request ran"))
            self.on_disconnect()

    def request_relay(self, on: Optional[bool]) -> "Future[bool]":
        """Switch the relay (None: read it) from any thread; the Future holds the acknowledged state.

        The newest command replaces an older one still waiting (whose Future
        fails with RelaySuperseded): one slot, never a queue. The reader
        carries it out between two polls, at most one switch per
        ``relay.min_interval``; one older than ``COMMAND_MAX_AGE`` by the time
        the link can carry it fails with RelayStale. A BTWATTCH1 fails it at
        once with NoRelayError.
        """
        from concurrent.futures import Future

        future: "Future[bool]" = Future()
        if self.relay_policy is None:
            future.set_exception(no_relay(self.name, self.dialect))
        elif self.stop.is_set():
            future.set_exception(LinkError(f"{self.name}: the reader is stopping"))
        elif on is None:
            with self._relay_lock:
                self._relay_readers.append(future)
        else:
            with self._relay_lock:
                changed = on and self.relay_policy.overloaded
                self.relay_policy.command(on, self.clock.monotonic())
                superseded, self._relay_waiters = self._relay_waiters, [future]
            _fail_all(superseded, RelaySuperseded(f"{self.name}: relay {_word(on)} replaced an older command"))
            if changed:
                log.warning("%s: relay ON asked: the over-power latch is cleared", self.name)
                self.on_relay_memory(self.relay_policy)
        return future

    def _one_connection(self) -> Iterator[Measurement]:
        with self._open_link() as link:
            session = MeterSession(
                link,
                self.clock,
                start_argument=self.start_argument,
                response_timeout=self.response_timeout,
                stats=self.stats,
                model=self.model,
            )
            set_to = self.trust.on_connect(self._host())
            self._tell(self.trust.take_events())
            if set_to is not None:
                session.set_clock(set_to)  # where the meter's clock stood is unknown: the watermark stays
            session.start(set_clock=False)
            self._rejected_before = self.stats.rejected
            self._connected()
            try:
                yield from self._poll_until_stopped(session)
            except GeneratorExit:
                session.stop()
                raise
            session.stop()

    def _poll_until_stopped(self, session: MeterSession) -> Iterator[Measurement]:
        while not self._sleep(seconds_until_next_tick(self.clock.now(), self.poll_interval)):
            self._drive_relay(session)
            try:
                measurement = session.poll()
            except MeasurementError as exc:
                # The first of a connection is worth a warning; the rest are counted.
                level = logging.WARNING if session.stats.rejected == self._rejected_before + 1 else logging.DEBUG
                log.log(level, "%s: reading dropped: %s", self.name, exc)
                continue
            self._relay_seen(session.relay, measurement.watts)
            right = self._can_be_right(session, measurement.time)
            new = right and self._is_new(measurement.time)
            self._follow_set_back()  # after the reading: one kept while the clock was set must not raise it again
            if new:
                yield measurement

    def _drive_relay(self, session: MeterSession) -> None:
        """Carry out the relay's wanted state, if one is due: at most one write between two polls."""
        policy = self.relay_policy
        if policy is None:
            return
        now = self.clock.monotonic()
        with self._relay_lock:
            decision = policy.due(now)
        if decision.dropped is not None:
            age = now - decision.dropped.asked
            log.warning("%s: relay %s dropped: asked %.0f s ago, older than %g s by the time the meter could "
                        "be reached", self.name, _word(decision.dropped.on), age, policy.settings.max_age)
            self._settle_waiters(RelayStale(f"{self.name}: relay {_word(decision.dropped.on)} asked {age:.0f} s "
                                            "ago: too late, dropped"))
        elif decision.settled:
            self._settle_waiters()
        if decision.switch is None:
            return
        try:
            state = session.switch_relay(decision.switch.on)
        except ProtocolError as exc:
            log.warning("%s: relay %s failed: %s", self.name, _word(decision.switch.on), exc)
            with self._relay_lock:
                policy.failed(now)
            self._settle_waiters(exc)
            return
        log.info("%s: relay switched %s (%s)", self.name, _word(state), decision.switch.why)
        self.relay = state
        with self._relay_lock:
            policy.switched(state, now)
        self.on_relay_memory(policy)
        self._settle_waiters()

    def _settle_waiters(self, exc: Optional[Exception] = None) -> None:
        """The command's Futures once its wish is gone: the state the meter acknowledged, or ``exc``."""
        with self._relay_lock:
            if self.relay_policy is not None and self.relay_policy.waiting_command:
                return
            waiters, self._relay_waiters = self._relay_waiters, []
        if exc is not None:
            _fail_all(waiters, exc)
        else:
            for future in waiters:
                if not future.done():
                    future.set_result(self.relay)

    def _relay_seen(self, state: Optional[bool], watts: float) -> None:
        """A measurement told the relay state (None: it did not); the reads waiting for it get it."""
        policy = self.relay_policy
        if policy is not None:
            with self._relay_lock:
                tripped = policy.seen(state, watts, self.clock.monotonic())
            if tripped:
                log.warning("%s: over %g W for %g s: switching the relay off and latching 'overloaded' until "
                            "an explicit ON", self.name, policy.settings.max_watts, policy.settings.max_watts_for)
                self.on_relay_memory(policy)
        if state is None:
            return
        self.relay = state
        with self._relay_lock:
            readers, self._relay_readers = self._relay_readers, []
        for future in readers:
            if not future.done():
                future.set_result(state)

    def _fail_relay_requests(self, exc: Exception) -> None:
        """When the reader ends, no relay request is left hanging: each fails with ``exc``."""
        with self._relay_lock:
            pending = self._relay_readers + self._relay_waiters
            self._relay_readers, self._relay_waiters = [], []
        _fail_all(pending, exc)

    def _sleep(self, seconds: float) -> bool:
        """Sleep until ``seconds`` have passed or ``stop`` is set; True if asked to stop.

        One wait per poll or backoff step (a wake-up costs more than a poll on
        a Pi), cut into ``heartbeat_interval`` slices only when longer, with a
        sign of life before each: the watchdog sees a live reader, never a stuck one.
        """
        end = self.clock.monotonic() + seconds
        while True:
            self.heartbeat()
            remaining = end - self.clock.monotonic()
            if remaining <= 0:
                return self.stop.is_set()
            if self.clock.sleep(min(remaining, self.heartbeat_interval), self.stop):
                return True

    def _is_new(self, when: dt.datetime) -> bool:
        """Only seconds after the last one kept: no second is ever recorded twice.

        A meter clock set back (a reconnect, a drift correction) repeats
        seconds already recorded; those are counted and skipped: the ones
        before the high-water mark, and, after the service itself set the
        clock back and moved the mark, the ones it remembers recording.
        """
        last = self.last_time
        if when in self._recent or (last is not None and when <= last):
            if when == last or when in self._recent:
                self.stats.duplicates += 1
            else:
                self.stats.stale_seconds += 1
            return False
        self.last_time = when
        self._remember(when)
        skip_gap, self._skip_gap = self._skip_gap, False
        if last is not None and not skip_gap:  # a jump made by re-setting the clock is not a gap
            step = int((when - last).total_seconds())
            expected = max(1, round(self.poll_interval))
            if step > expected:
                self.stats.gaps += 1
                self.stats.missing_seconds += step - expected
        return True

    def _remember(self, when: dt.datetime) -> None:
        """Keep the last hour of recorded seconds: after the meter's clock is set back they are not yielded again."""
        self._recent[when] = None
        if len(self._recent) > RECENT_SECONDS:
            del self._recent[next(iter(self._recent))]

    # --- the host clock and the meter's ----------------------------------------------

    def _can_be_right(self, session: MeterSession, meter_time: dt.datetime) -> bool:
        """Ask the clock-trust policy about this stamp and carry out its decision (see clocktrust.py)."""
        decision = self.trust.reading(meter_time, self._host())
        self._tell(self.trust.take_events())
        if decision.counter:
            setattr(self.stats, decision.counter, getattr(self.stats, decision.counter) + 1)
        if decision.set_clock is not None:
            log.info("%s: meter clock is %+.0f s %s; %ssetting it to %s UTC", self.name, decision.offset,
                     decision.why, "" if decision.record else "reading skipped, ",
                     decision.set_clock.replace(microsecond=0))
            self._set_meter_clock(session, decision.set_clock, back=decision.offset > 0)
        return decision.record

    def _set_meter_clock(self, session: MeterSession, when: dt.datetime, back: bool) -> None:
        """Set the meter's clock; when that moves it back, the high-water mark follows (docs/clock.md).

        Stamps after the set are the right ones: judged against the wrong ones
        already kept, every right second would look stale until the meter
        caught up. Seconds already written are still never written again (the
        writer keeps them out of its files); late rows go to ``.partN`` files.
        """
        session.set_clock(when)
        self.stats.clock_resets += 1
        self._skip_gap = True
        if back:
            self._set_back_to = when.replace(microsecond=0) - dt.timedelta(seconds=1)

    def _follow_set_back(self) -> None:
        """The high-water mark moves back to a time the meter's clock was just set back to."""
        mark, self._set_back_to = self._set_back_to, None
        if mark is not None and self.last_time is not None and self.last_time > mark:
            log.info("%s: the meter's clock was set back; seconds after %s UTC are kept again", self.name, mark)
            self.last_time = mark

    def _host(self) -> Host:
        return Host(self.clock.now(), self.clock.monotonic(), self.clock.synchronised())

    def _tell(self, events) -> None:
        """Log what the policy noticed of the host clock; tell the daemon when the wait is over."""
        for kind, value in events:
            if kind in (STEPPED, SYNCHRONISED, WAIT_OVER):
                self.on_clock_trust()
            if kind == STEPPED:
                self.stats.clock_steps += 1
                log.warning("%s: the host clock stepped %+.1f s; checking the meter's clock now", self.name, value)
            elif kind == SYNCHRONISED:
                log.info("%s: the system clock is synchronised", self.name)
            elif kind == WAITING:
                # Reading goes on meanwhile: nothing waits, so the line does not say "waiting".
                log.info("%s: the system clock is not synchronised yet; reading on with the meter's own clock (a "
                         "meter clock behind the system's is set forward, never back; a warning follows if it is "
                         "still not synchronised after %g s)", self.name, value)
            elif kind == WAIT_OVER:
                if not value:
                    log.warning("%s: the system clock is still not synchronised after %g s (time_sync_wait): "
                                "it may lag, so it only ever sets a meter's clock forward", self.name,
                                self.trust.time_sync_wait)
            elif kind == IGNORES_SET:
                log.warning("%s: the meter's clock stays %+.0f s ahead of the host clock after being set; "
                            "recording its stamps as they are", self.name, value)

    def _connected(self) -> None:
        self.stats.connects += 1
        if self._failing_since is not None:
            down = self.clock.monotonic() - self._failing_since
            log.info("%s: connected again after %.0f s", self.name, down)
        else:
            log.info("%s: connected", self.name)
        self._failing_since = None
        self.backoff.reset()
        if self.relay_policy is not None:
            with self._relay_lock:
                self.relay_policy.connected(self.clock.monotonic())
        self.on_connect()

    def _link_failed(self, exc: LinkError) -> None:
        """Log once per outage; the attempts that follow are only counted."""
        self.stats.link_errors += 1
        self.on_disconnect()
        where = "" if self.name == self.address else f"{self.name}: "
        if self._failing_since is None:
            self._failing_since = self.clock.monotonic()
            log.warning("%s%s; reconnecting", where, exc)
        else:
            log.debug("%sstill failing: %s", where, exc)


def _word(on: bool) -> str:
    return "on" if on else "off"


def _fail_all(futures: List["Future[bool]"], exc: Exception) -> None:
    for future in futures:
        if not future.done():
            future.set_exception(exc)
