"""One meter: a session over a connected link, and the reader loop that keeps one alive.

``MeterSession`` speaks the protocol over a ``Link``: set the clock, start,
poll, stop, switch the relay, in the dialect of the meter's model.
``MeterReader(settings, clock, stop, listener, links)`` connects, polls on
the wall clock's interval, clear of the meter's own tick (pollphase.py),
reconnects with backoff, and hands each new measurement once to its
``ReaderListener``, as pySerial's ``ReaderThread`` hands data to its
``Protocol``. The rules are not here: the clock policy (clocktrust.py) says
which stamps to keep and when to set the meter's clock, the relay driver
(relaydriver.py) what to write between two polls. See docs/architecture.md.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import logging
import threading
from functools import partial
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

from . import protocol
from .clock import Backoff, Clock
from .clocktrust import IGNORES_SET, STEPPED, SYNCHRONISED, WAIT_OVER, WAITING, ClockTrust, Decision, Host, Kept
from .pollphase import PollPhase
from .protocol import Frame, Measurement, MeasurementError, ProtocolError, btwattch2
from .relay import RelayPolicy, RelaySettings
from .relaydriver import NoRelay, RelayDriver
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

    from .config import DeviceConfig, GeneralConfig

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
    phase_moves: int = 0  # polls moved half a second off the meter's tick (pollphase.py)

    def summary(self) -> str:
        return " ".join(f"{f.name}={getattr(self, f.name)}" for f in fields(self))

    def count(self, counter: Optional[str]) -> None:
        """One more of ``counter`` (a field's name, as the policies give it); None counts nothing."""
        if counter:
            setattr(self, counter, getattr(self, counter) + 1)

    def kept(self, kept: Kept) -> None:
        """What the watermark made of a stamp: a skip, or a gap before a new second."""
        self.count(kept.counter)
        if kept.missing:
            self.gaps += 1
            self.missing_seconds += kept.missing


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

    Without an SDP module (pybluez does not install on current Pythons) this is
    the only way to find it. A refused channel, or one that does not speak the
    protocol (another service of the device), is skipped. Any other connect
    failure means the meter is out of reach: LinkError at once, so the reader
    backs off and searches again. An unsynchronised host sets no clock: the
    start command's acknowledgement stands in for it.
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
    raise LinkError(f"{mac}: no RFCOMM channel {channels[0]}-{channels[-1]} answered like a WATT CHECKER (set "
                    "clock, a reading): is it paired, powered and in range? Or set its `channel:` (`sdptool browse "
                    f"{mac}`)")


@dataclass(frozen=True)
class ReaderSettings:
    """One meter's validated settings: its ``devices:`` entry and the ``general:`` values a reader uses."""

    address: str
    name: str = ""  # empty: the address
    model: str = protocol.DEFAULT_MODEL
    channel: Optional[int] = None
    start_argument: int = 0x00
    timeout: float = DEFAULT_TIMEOUT
    poll_interval: float = 1.0
    response_timeout: float = RESPONSE_TIMEOUT
    heartbeat_interval: float = HEARTBEAT_INTERVAL
    time_sync_wait: float = 0.0
    backoff: Tuple[float, float] = (1.0, 60.0)  # reconnect delays: first and longest, seconds
    relay: RelaySettings = RelaySettings()

    @classmethod
    def of(cls, device: "DeviceConfig", general: "GeneralConfig", heartbeat_interval: float) -> "ReaderSettings":
        return cls(device.address, device.name, device.model, device.channel, device.start_argument,
                   device.timeout, general.poll_interval, heartbeat_interval=heartbeat_interval,
                   time_sync_wait=general.time_sync_wait, relay=device.relay or RelaySettings())


@dataclass(frozen=True)
class MeterMemory:
    """What a reader starts from that an earlier run left (saved.py): the newest second on disk, and more."""

    last_time: Optional[dt.datetime] = None
    relay: Mapping[str, Any] = field(default_factory=dict)  # RelayPolicy.memory as saved
    watermark: Mapping[str, Any] = field(default_factory=dict)  # Watermark.memory as saved: a set-back


class ReaderListener:
    """What a reader tells, one method per event, as pySerial's ``Protocol``; each does nothing here."""

    def connected(self) -> None:
        """The handshake is done: readings follow."""

    def disconnected(self) -> None:
        """The link failed, or the reader stopped."""

    def reading(self, measurement: Measurement, relay: Optional[bool]) -> None:
        """A new second, once, and the relay as the meter last said (None: unknown, or no relay)."""

    def clock_trust_changed(self) -> None:
        """Which clock is trusted changed: synchronised, stepped, or the wait ran out."""

    def relay_memory_changed(self, memory: Dict[str, Any]) -> None:
        """The relay's latch, last set state or on-time changed: it must survive a restart."""

    def watermark_changed(self, memory: Dict[str, Any]) -> None:
        """The clock policy's watermark moved back with the meter's clock, or passed the wrong seconds."""

    def heartbeat(self) -> None:
        """A sign of life, at least every ``heartbeat_interval``."""


def links_for(settings: ReaderSettings, **factories: Any) -> Callable[[], Link]:
    """The opener of a meter's link as its settings say; tests pass an ``rfcomm_factory`` or ``ble_client_factory``."""
    return link_opener(settings.address, channel=settings.channel, timeout=settings.timeout, model=settings.model,
                       **factories)


class MeterReader:
    """Keeps one meter connected and hands each new reading once, in the meter's time, to its listener."""

    def __init__(self, settings: ReaderSettings, clock: Clock, stop: threading.Event,
                 listener: Optional[ReaderListener] = None, links: Optional[Callable[[], Link]] = None,
                 *, memory: MeterMemory = MeterMemory()) -> None:
        self.settings = settings
        self.name = settings.name or settings.address
        self.clock = clock
        self.stop = stop
        self.listener = listener or ReaderListener()
        self.links = links or links_for(settings)
        self.link_stats = getattr(self.links, "stats", None)  # a BLE link's counters (ble.BleStats), else None
        self.dialect = protocol.dialect(settings.model)
        self.backoff = Backoff(*settings.backoff)
        self.stats = MeterStats()
        self.trust = ClockTrust(self._host(), time_sync_wait=settings.time_sync_wait,
                                poll_interval=settings.poll_interval, last=memory.last_time, saved=memory.watermark)
        self.relay_driver = relay_driver(self, memory.relay)
        self.phase = PollPhase(settings.poll_interval)
        self._failing_since: Optional[float] = None
        self._rejected_before = 0

    @property
    def relay(self) -> Optional[bool]:
        """The relay as the last measurement or acknowledgement said (None: unknown, or no relay)."""
        return self.relay_driver.state

    def run(self) -> None:
        """The thread's body: each new reading to the listener until ``stop``. SetupError propagates."""
        for measurement in self.readings():
            self.listener.reading(measurement, self.relay)

    def readings(self) -> Iterator[Measurement]:
        """Yield readings until ``stop`` is set. SetupError propagates: retrying cannot fix it."""
        try:
            while not self.stop.is_set():
                self.listener.heartbeat()
                try:
                    yield from self._one_connection()
                except LinkError as exc:
                    self._link_failed(exc)
                    if self._sleep(self.backoff.next_delay()):
                        return
        finally:
            self.relay_driver.close(LinkError(f"{self.name}: the reader stopped before the relay request ran"))
            self.listener.disconnected()

    def request_relay(self, on: Optional[bool]) -> "Future[bool]":
        """Switch the relay (None: read it) from any thread; the Future holds the state (see relaydriver.py)."""
        return self.relay_driver.request(on)

    def _one_connection(self) -> Iterator[Measurement]:
        settings = self.settings
        with self.links() as link:
            session = MeterSession(link, self.clock, start_argument=settings.start_argument, stats=self.stats,
                                   response_timeout=settings.response_timeout, model=settings.model)
            set_to = self.trust.on_connect(self._host())
            self._tell(self.trust.take_events())
            self.phase.connected()
            if set_to is not None:
                self._set_clock(session, set_to)  # where the meter's clock stood is unknown: the watermark stays
            session.start(set_clock=False)
            self._connected()
            try:
                yield from self._poll_until_stopped(session)
            except GeneratorExit:
                session.stop()
                raise
            session.stop()

    def _poll_until_stopped(self, session: MeterSession) -> Iterator[Measurement]:
        while not self._sleep(self.phase.delay(self.clock.now())):
            self.relay_driver.drive(session)
            try:
                measurement = session.poll()
            except MeasurementError as exc:
                # The first of a connection is worth a warning; the rest are counted.
                level = logging.WARNING if session.stats.rejected == self._rejected_before + 1 else logging.DEBUG
                log.log(level, "%s: reading dropped: %s", self.name, exc)
                continue
            if self.phase.reading(measurement.time):
                self.stats.phase_moves += 1
                log.debug("%s: the meter's clock ticks just before the polls: they move half a second earlier",
                          self.name)
            self.relay_driver.seen(session.relay, measurement.watts, measurement.time)
            if self._judge(session, measurement.time):
                yield measurement

    def _judge(self, session: MeterSession, stamp: dt.datetime) -> bool:
        """Ask the clock policy about this stamp, carry out what it says (see clocktrust.py); True to record it."""
        decision = self.trust.reading(stamp, self._host())
        self._tell(self.trust.take_events())
        self.stats.count(decision.counter)
        if decision.set_clock is not None:
            sent = self._set_clock(session, decision.set_clock)
            if sent is not None:  # None: stopping came first
                log_clock_set(self.name, decision, sent)
                self.stats.clock_resets += 1
                self.trust.meter_set(decision)
                self.relay_driver.meter_clock_moved(-decision.offset)
        kept = self.trust.kept(stamp, decision)
        self.stats.kept(kept)
        if kept.moved_back_to is not None:
            log.info("%s: the meter's clock was set back; seconds after %s UTC are kept again", self.name,
                     kept.moved_back_to)
        if kept.memory is not None:
            self.listener.watermark_changed(kept.memory)
        return kept.record

    def _set_clock(self, session: MeterSession, when: dt.datetime) -> Optional[dt.datetime]:
        """Set the meter's clock to ``when`` as of the host's next whole second, and send it then; what was sent.

        The meter's seconds start when the set arrives: sent mid-second, its
        stamps would lag the host's by up to a second. On the whole second they
        tick with the host's, and the polls keep half a second clear of them.
        """
        now = self.clock.now()
        wait = (1_000_000 - now.microsecond) % 1_000_000 / 1e6
        if wait and self._sleep(wait):
            return None  # stopping: the link is about to close
        self.phase.clock_set(now + dt.timedelta(seconds=wait))
        # ``when`` was the host's time a moment ago: rounded, not cut, to the second it is sent on.
        sent = (when + dt.timedelta(seconds=wait, microseconds=500_000)).replace(microsecond=0)
        session.set_clock(sent)
        return sent

    def _sleep(self, seconds: float) -> bool:
        """Sleep ``seconds``, True if ``stop`` came first: one wait, in ``heartbeat_interval`` slices if longer."""
        end = self.clock.monotonic() + seconds
        while True:
            self.listener.heartbeat()
            remaining = end - self.clock.monotonic()
            if remaining <= 0:
                return self.stop.is_set()
            if self.clock.sleep(min(remaining, self.settings.heartbeat_interval), self.stop):
                return True

    def _host(self) -> Host:
        return Host(self.clock.now(), self.clock.monotonic(), self.clock.synchronised())

    def _tell(self, events: List[Tuple[str, float]]) -> None:
        """Log what the clock policy noticed of the host clock; tell the listener when the trust changed."""
        for kind, value in events:
            self.stats.clock_steps += kind == STEPPED
            log_clock_event(self.name, kind, value, self.trust.time_sync_wait)
            if kind in (STEPPED, SYNCHRONISED, WAIT_OVER):
                self.listener.clock_trust_changed()

    def _connected(self) -> None:
        self.stats.connects += 1
        self._rejected_before = self.stats.rejected
        since = self._failing_since
        again = "" if since is None else f" again after {self.clock.monotonic() - since:.0f} s"
        log.info("%s: connected%s", self.name, again)
        self._failing_since = None
        self.backoff.reset()
        self.relay_driver.connected()
        self.listener.connected()

    def _link_failed(self, exc: LinkError) -> None:
        """Log once per outage; the attempts that follow are only counted."""
        self.stats.link_errors += 1
        self.listener.disconnected()
        where = "" if self.name == self.settings.address else f"{self.name}: "
        if self._failing_since is None:
            self._failing_since = self.clock.monotonic()
            log.warning("%s%s; reconnecting", where, exc)
        else:
            log.debug("%sstill failing: %s", where, exc)


def relay_driver(reader: MeterReader, saved: Mapping[str, Any]) -> Union[RelayDriver, NoRelay]:
    """The reader's relay driver, its policy restored from ``saved`` (RelayPolicy.memory); NoRelay for a BTWATTCH1."""
    if not reader.dialect.has_relay:
        return NoRelay(partial(no_relay, reader.name, reader.dialect))
    policy = RelayPolicy.restored(reader.settings.relay, saved, reader.settings.poll_interval)
    return RelayDriver(reader.name, policy, reader.clock, reader.stop, reader.listener.relay_memory_changed)


def log_clock_set(name: str, decision: Decision, sent: dt.datetime) -> None:
    log.info("%s: meter clock is %+.0f s %s; %ssetting it to %s UTC", name, decision.offset, decision.why,
             "" if decision.record else "reading skipped, ", sent)


def log_clock_event(name: str, kind: str, value: float, time_sync_wait: float) -> None:
    """The log line for one event of the clock policy (an unsynchronised clock's wait ending quietly: none)."""
    if kind == STEPPED:
        log.warning("%s: the host clock stepped %+.1f s; checking the meter's clock now", name, value)
    elif kind == SYNCHRONISED:
        log.info("%s: the system clock is synchronised", name)
    elif kind == WAITING:  # reading goes on meanwhile: nothing waits, so the line does not say "waiting"
        log.info("%s: the system clock is not synchronised yet; reading on with the meter's own clock (a meter clock "
                 "behind the system's is set forward, never back; a warning follows if it is still not synchronised "
                 "after %g s)", name, value)
    elif kind == WAIT_OVER and not value:
        log.warning("%s: the system clock is still not synchronised after %g s (time_sync_wait): it may lag, so it "
                    "only ever sets a meter's clock forward", name, time_sync_wait)
    elif kind == IGNORES_SET:
        log.warning("%s: the meter's clock stays %+.0f s ahead of the host clock after being set; recording its "
                    "stamps as they are", name, value)
