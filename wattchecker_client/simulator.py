"""A stand-in meter: the real protocol of either model, a believable load, and injectable faults.

The meter itself (``SimulatedMeter``) is sans-I/O: request payloads in,
response bytes out. It speaks the REX-BTWATTCH1's protocol or, with
``model="btwattch2"``, the RS-BTWATTCH2's, relay included. ``serve_link`` puts it on any ``Link`` with the link
faults (latency, split writes, drops); ``TcpServer`` and ``PtyServer`` give it
an address a client can open, and ``open_embedded`` runs one inside this
process for ``sim://`` addresses.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import os
import random
import socket
import threading
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple
from urllib.parse import parse_qsl, urlsplit

from . import protocol
from .clock import Clock, utc_epoch
from .errors import SetupError
from .protocol import Measurement, btwattch2
from .traces import TRACES, trace
from .transport import Link, LinkError, LinkTimeout, make_raw, socket_link

log = logging.getLogger(__name__)

# The acknowledgement that arrives where a measurement was expected: a start
# acknowledgement from a BTWATTCH1 (as seen by one client), a clock one from a
# BTWATTCH2 (which has no start command).
STRAY_ACK_COMMAND = {"btwattch1": protocol.CMD_START, "btwattch2": btwattch2.CMD_SET_CLOCK}


@dataclass(frozen=True)
class SimOptions:
    """How the simulated meter behaves; every field is also a CLI flag and a sim:// parameter."""

    seed: int = field(default=1, metadata={"help": "seed for the load profile and the faults"})
    model: str = field(
        default=protocol.DEFAULT_MODEL,
        metadata={"help": "which meter to be: btwattch1 (REX-BTWATTCH1) or btwattch2 (RS-BTWATTCH2, with a relay)",
                  "choices": protocol.MODELS},
    )
    clock_speed: float = field(
        default=1.0,
        metadata={"help": "how fast the meter's clock runs against real time (above 1, it never goes back)"},
    )
    clock_offset: float = field(
        default=0.0,
        metadata={"help": "seconds the meter's clock starts ahead of the host's (negative: behind); a right "
                          "meter beside a host clock that lags is ahead of it"},
    )
    corrupt_rate: float = field(
        default=0.0, metadata={"help": "fraction of responses with one bit flipped"}
    )
    junk_rate: float = field(
        default=0.0, metadata={"help": "fraction of responses preceded by 1-8 junk bytes"}
    )
    stray_ack_rate: float = field(
        default=0.0, metadata={"help": "fraction of measurements preceded by a stray 6-byte ack"}
    )
    bad_status_rate: float = field(
        default=0.0, metadata={"help": "fraction of measurements answered with a non-zero status"}
    )
    split_writes: bool = field(
        default=False, metadata={"help": "send each response in several small writes"}
    )
    latency: float = field(default=0.0, metadata={"help": "seconds before each response"})
    drop_after: int = field(
        default=0, metadata={"help": "close the link after this many requests (0: never)"}
    )
    load: str = field(
        default="aircon",
        metadata={"help": "what the meter measures: aircon, or a trace with known runs (traces.py)",
                  "choices": ("aircon",) + tuple(TRACES)},
    )

    def __post_init__(self) -> None:
        for name in ("corrupt_rate", "junk_rate", "stray_ack_rate", "bad_status_rate"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1")
        if self.clock_speed <= 0:
            raise ValueError("clock_speed must be positive")
        if self.latency < 0 or self.drop_after < 0:
            raise ValueError("latency and drop_after cannot be negative")
        protocol.dialect(self.model)  # ValueError naming the known models
        if self.load != "aircon" and self.load not in TRACES:
            raise ValueError(f"load must be aircon or one of {', '.join(TRACES)}, got {self.load!r}")

    @classmethod
    def from_pairs(cls, pairs: List[Tuple[str, str]]) -> "SimOptions":
        """Build from string key/value pairs, e.g. a sim:// query string."""
        types = {f.name: f.type for f in dataclasses.fields(cls)}
        values = {}
        for key, raw in pairs:
            key = key.replace("-", "_")
            if key not in types:
                raise SetupError(f"unknown simulator option {key!r}; known: {', '.join(types)}")
            values[key] = _parse_value(key, types[key], raw)
        try:
            return cls(**values)
        except ValueError as exc:
            raise SetupError(f"simulator option: {exc}") from None


KINDS = {"int": "a whole number", "float": "a number", "bool": "true or false"}


def _parse_value(key: str, type_name: str, raw: str) -> object:
    if type_name == "str":
        return raw
    try:
        if type_name == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no", "on", "off"):
                raise ValueError(raw)
            return raw.lower() in ("1", "true", "yes", "on")
        return int(raw) if type_name == "int" else float(raw)
    except ValueError:
        raise SetupError(f"simulator option {key}={raw!r} is not {KINDS[type_name]}") from None


# --- the load -------------------------------------------------------------------


def air_conditioner(when: dt.datetime, seed: int = 1, model: str = protocol.DEFAULT_MODEL) -> Measurement:
    """An air conditioner in a Japanese home: compressor cycling by day, standby at night.

    A pure function of the meter's second, so repeated polls within one second
    agree, and a run can be replayed from its seed. The values are those that
    ``model``'s wire can carry, so a test can compare a stored row with what
    the simulated meter measured, exactly.
    """
    t = utc_epoch(when)
    rng = random.Random(seed * 1_000_003 + t)
    volts = 101.5 + 1.5 * math.sin(2 * math.pi * (t % 86400) / 86400) + rng.uniform(-0.3, 0.3)
    if 15 <= when.hour < 22:  # 00:00-07:00 in Japan: switched off, standby only
        watts, power_factor = rng.uniform(0.6, 0.8), 0.03
    else:
        cycle = random.Random(seed * 7919 + t // 1200)
        on_for = cycle.randint(600, 1000)
        into = t % 1200
        if into < on_for:  # compressor on: inrush settles, then load creeps up
            watts = 300 + 450 * min(1.0, into / 120) + 60 * math.sin(into / 90)
            watts *= rng.uniform(0.97, 1.03)
            volts -= 0.8
            power_factor = 0.93
        else:  # fan only
            watts, power_factor = rng.uniform(22.0, 28.0), 0.6
    milliamps = watts / (volts * power_factor) * 1000
    return protocol.dialect(model).quantize(Measurement(when, volts, milliamps, watts))


def played(when: dt.datetime, name: str, seed: int = 1, model: str = protocol.DEFAULT_MODEL) -> Measurement:
    """A trace's W at the meter's second (traces.py), at a steady 100 V and power factor 0.9."""
    watts = trace(name, seed).at(utc_epoch(when))
    return protocol.dialect(model).quantize(Measurement(when, 100.0, watts / 90.0 * 1000, watts))


def switched_off(m: Measurement) -> Measurement:
    """What a BTWATTCH2 measures with its relay off: the line voltage, no load."""
    return dataclasses.replace(m, milliamps=0.0, watts=0.0)


# --- the meter ------------------------------------------------------------------


class SimulatedMeter:
    """The device's side of the protocol: request payloads in, response bytes out."""

    def __init__(self, options: SimOptions, clock: Clock) -> None:
        self.options = options
        self.clock = clock
        self.dialect = protocol.dialect(options.model)
        self.rng = random.Random(options.seed)
        self.measuring = False
        self.relay = True  # a BTWATTCH2 comes out of the box switched on
        self.relay_writes: List[bytes] = []  # every 0xA7 payload, so a test can count what reached the meter
        self.identified = 0
        self._lock = threading.Lock()
        self._rtc_base = clock.now() + dt.timedelta(seconds=options.clock_offset)
        self._rtc_mono = clock.monotonic()

    def now(self) -> dt.datetime:
        """The meter's clock, running ``clock_speed`` times faster than real time."""
        elapsed = (self.clock.monotonic() - self._rtc_mono) * self.options.clock_speed
        return (self._rtc_base + dt.timedelta(seconds=elapsed)).replace(microsecond=0)

    def measure(self) -> Measurement:
        """What the meter measures now: the load, or nothing with the relay off."""
        if self.options.load == "aircon":
            m = air_conditioner(self.now(), self.options.seed, self.options.model)
        else:
            m = played(self.now(), self.options.load, self.options.seed, self.options.model)
        return m if self.relay else switched_off(m)

    def advertisement(self) -> bytes:
        """The manufacturer data (0x0B60) a BTWATTCH2 in this state would broadcast."""
        m = self.measure()
        return protocol.encode_advertisement(protocol.Advertisement(self.relay, m.volts, m.milliamps, m.watts))

    def respond(self, payload: bytes) -> bytes:
        """All bytes the meter sends back for one request, faults included."""
        with self._lock:
            return self._inject(payload[0], self._answer(payload))

    def _answer(self, payload: bytes) -> bytes:
        command, dialect = payload[0], self.dialect
        if command == protocol.CMD_SET_CLOCK:
            try:
                when = dialect.decode_clock(payload)
            except protocol.ProtocolError:
                return protocol.ack_payload(command, 0x01)
            # A fast clock only moves forward, so that hours keep passing
            # across reconnects and restarts of the client under test.
            if self.options.clock_speed <= 1 or when > self.now():
                self._rtc_base, self._rtc_mono = when, self.clock.monotonic()
            return protocol.ack_payload(command)
        if command in (protocol.CMD_START, protocol.CMD_STOP) and dialect.start_request:
            self.measuring = command == protocol.CMD_START
            log.info("measurement %s", "started" if self.measuring else "stopped")
            return protocol.ack_payload(command)
        if command == protocol.CMD_GET_DATA:
            if self.rng.random() < self.options.bad_status_rate:
                return bytes((command, 0x01)) + bytes(dialect.measurement_size - 2)
            return dialect.measurement_payload(self.measure(), self.relay)
        if command == btwattch2.CMD_RELAY and dialect.has_relay:
            return self._switch(payload)
        if command == btwattch2.CMD_IDENTIFY and dialect.identify_request:
            self.identified += 1
            log.info("identify %s: LED blinking", payload.hex(" "))
            return protocol.ack_payload(command, 0 if payload[1:] == btwattch2.IDENTIFY_ARGUMENTS else 0x01)
        return protocol.ack_payload(command, 0x01)

    def _switch(self, payload: bytes) -> bytes:
        self.relay_writes.append(payload)
        log.info("relay write %s", payload.hex(" "))
        if payload[1:] not in (b"\x00", b"\x01"):
            return btwattch2.relay_ack_payload(self.relay, 0x01)
        self.relay = payload[1] == 1
        log.info("relay switched %s", "on" if self.relay else "off")
        return btwattch2.relay_ack_payload(self.relay)

    def _inject(self, command: int, payload: bytes) -> bytes:
        opts, rng = self.options, self.rng
        frame = bytearray(self.dialect.encode_frame(payload))
        if rng.random() < opts.corrupt_rate:
            bit = rng.randrange(8, len(frame) * 8)  # anything after the sync byte
            frame[bit // 8] ^= 1 << (bit % 8)
        out = bytearray()
        if rng.random() < opts.junk_rate:
            out += bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        if command == protocol.CMD_GET_DATA and rng.random() < opts.stray_ack_rate:
            out += self.dialect.encode_frame(protocol.ack_payload(STRAY_ACK_COMMAND[opts.model]))
        return bytes(out + frame)

    def chunks(self, data: bytes) -> List[bytes]:
        """How one response is written: whole, or split at random points."""
        if not self.options.split_writes or len(data) < 2:
            return [data]
        cuts = sorted(self.rng.sample(range(1, len(data)), min(len(data) - 1, self.rng.randint(1, 4))))
        return [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def serve_link(link: Link, meter: SimulatedMeter, stop: threading.Event) -> str:
    """Answer requests on ``link`` until it fails, ``stop`` is set, or a drop is due.

    Returns why it ended, for the log.
    """
    decoder = meter.dialect.decoder()
    requests = 0
    clock, options = meter.clock, meter.options
    while not stop.is_set():
        try:
            decoder.feed(link.read(timeout=0.2))
        except LinkTimeout:
            continue
        except LinkError:
            return "the client went away"
        for frame in decoder:
            requests += 1
            response = meter.respond(frame.payload)
            if options.latency and clock.sleep(options.latency, stop):
                return "stopped"
            try:
                for chunk in meter.chunks(response):
                    link.write(chunk)
                    if options.split_writes:
                        clock.sleep(0.002)
            except LinkError:
                return "the client went away"
            if options.drop_after and requests >= options.drop_after:
                return "dropped"
    return "stopped"


# --- addresses a client can open -------------------------------------------------


class _Server:
    """A serving loop on a thread of its own; close() stops it and waits for its clean-up."""

    address = ""

    def __init__(self, meter: SimulatedMeter) -> None:
        self.meter = meter
        self.stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=type(self).__name__, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._serve()
        finally:
            self._cleanup()

    def close(self) -> None:
        self.stop.set()
        if self._thread is None:
            self._cleanup()
        else:
            self._thread.join(5)

    def _serve(self) -> None:
        raise NotImplementedError

    def _cleanup(self) -> None:
        raise NotImplementedError


class TcpServer(_Server):
    """Serves the simulated meter on a TCP port, one thread per connection."""

    def __init__(self, meter: SimulatedMeter, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(meter)
        self.listener = socket.create_server((host, port))
        self.listener.settimeout(0.2)
        host, port = self.listener.getsockname()[:2]
        self.address = f"tcp://{host}:{port}"

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve_client, args=(conn, peer), daemon=True).start()

    def _serve_client(self, conn: socket.socket, peer: object) -> None:
        # Split writes must reach the client as written, not wait on Nagle.
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with socket_link(conn, f"tcp client {peer}", timeout=5.0) as link:
            why = serve_link(link, self.meter, self.stop)
        log.info("%s: %s", link.name, why)

    def _cleanup(self) -> None:
        self.listener.close()


class PtyServer(_Server):
    """Serves the simulated meter on a pseudo-terminal, like ``rfcomm bind`` would.

    A drop closes the pty and opens a new one, re-pointing ``link_path`` at it,
    as a real /dev/rfcommN disappears and comes back with the radio link.
    """

    def __init__(self, meter: SimulatedMeter, link_path: Optional[str] = None) -> None:
        super().__init__(meter)
        self.link_path = link_path
        self.tty_path = ""
        self._open()
        self.address = link_path or self.tty_path

    def _open(self) -> None:
        self._master, self._slave = os.openpty()
        # Hold the slave open and raw: no echo of requests, and the master never
        # sees a hang-up between clients.
        make_raw(self._slave)
        self.tty_path = os.ttyname(self._slave)
        if self.link_path:
            tmp = f"{self.link_path}.{os.getpid()}.tmp"
            os.symlink(self.tty_path, tmp)
            os.replace(tmp, self.link_path)

    def _serve(self) -> None:
        while True:
            link = Link(self._master, self.tty_path, lambda: None, timeout=5.0)
            why = serve_link(link, self.meter, self.stop)
            log.info("%s: %s", self.tty_path, why)
            if self.stop.is_set():
                return
            self._close_pty()
            self._open()

    def _close_pty(self) -> None:
        for fd in (self._master, self._slave):
            try:
                os.close(fd)
            except OSError:
                pass

    def _cleanup(self) -> None:
        self._close_pty()
        if self.link_path and os.path.islink(self.link_path):
            os.unlink(self.link_path)


# --- sim:// --------------------------------------------------------------------------


def parse_sim_address(address: str, model: Optional[str] = None) -> SimOptions:
    """The options in a sim:// address; ``model`` is the model the client will speak.

    The simulated meter is that model unless the address names one; if it
    does, the two must agree, or the client would talk past the meter.
    """
    parts = urlsplit(address)
    if parts.scheme != "sim" or parts.netloc or parts.path not in ("", "/"):
        raise SetupError(f"address {address!r} must look like sim:// or sim://?clock_speed=10")
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    options = SimOptions.from_pairs(pairs)
    if model is None or model == options.model:
        return options
    if any(key == "model" for key, _ in pairs):
        raise SetupError(
            f"{address}: the simulated meter is a {options.model} but the client expects a {model}: "
            f"set model: {options.model} for this device (or --model {options.model})"
        )
    return dataclasses.replace(options, model=model)


def embedded_opener(
    address: str, timeout: float, clock: Optional[Clock] = None, model: Optional[str] = None
) -> Callable[[], Link]:
    """Opens links to one simulated meter in a thread of this process, over socketpairs."""
    meter = SimulatedMeter(parse_sim_address(address, model), clock or Clock())

    def open_link() -> Link:
        ours, theirs = socket.socketpair()
        stop = threading.Event()

        def run() -> None:
            with socket_link(theirs, "embedded meter", timeout) as link:
                serve_link(link, meter, stop)

        threading.Thread(target=run, name="simulated-meter", daemon=True).start()
        return socket_link(ours, address, timeout, on_close=stop.set)

    return open_link
