"""`scan`: list the RATOC meters near this machine, so a user can tell which plug is which.

A Bluetooth scan through bleak for ``--seconds``: each RS-BTWATTCH2 with its
address, name, signal strength and the values its advertisements carry
(relay, V, mA, W; they change only about every 30 s), and each REX-BTWATTCH1
("WATT CHECKER", Bluetooth Classic) that answers the inquiry.
"""

from __future__ import annotations

import argparse
import logging
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

from ..clock import Clock
from ..errors import SetupError
from ..protocol import btwattch2
from ..protocol.frames import ProtocolError
from .common import EXIT_OK, adapter_option, on_stop_signals, positive_float

log = logging.getLogger("wattchecker_client")

BTWATTCH1_NAME = "WATT CHECKER"
BTWATTCH2_PREFIX = "BTWATTCH2"
# Starting and stopping a scan is one D-Bus round trip each; more means BlueZ is stuck.
STEP_TIMEOUT = 10.0
# BR/EDR as well as LE, so a BTWATTCH1 (Classic only) answers too; bleak asks for LE only by default.
BLUEZ_ARGS = {"filters": {"Transport": "auto"}}

ScannerFactory = Callable[..., Any]  # bleak.BleakScanner or a stand-in


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("scan", help="list nearby RATOC meters (Bluetooth scan)")
    p.add_argument("--seconds", type=positive_float, default=10.0, help="how long to scan (default 10)")
    p.add_argument("--adapter", type=adapter_option, help="the Bluetooth adapter to scan with (hci1); default: BlueZ's")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..ble import import_bleak  # asyncio and ssl: only when this command runs

    stop = threading.Event()
    on_stop_signals(stop)

    def started() -> None:
        print(f"scanning for {args.seconds:g} s ...", file=sys.stderr, flush=True)

    bleak = import_bleak("scanning for meters")
    sightings, others = scan(bleak.BleakScanner, args.seconds, Clock(), stop, started, adapter=args.adapter)
    for line in report(sightings, others, args.seconds):
        print(line)
    return EXIT_OK


@dataclass
class Sighting:
    """What the scan learnt about one meter; later advertisements refine earlier ones."""

    address: str
    model: str
    name: str = ""
    rssi: Optional[int] = None
    advertisement: Optional[btwattch2.Advertisement] = None
    odd_data: bytes = b""


def classify(name: str, manufacturer_data: Dict[int, bytes]) -> Optional[str]:
    """``btwattch2``, ``btwattch1`` or None (not a RATOC meter) from one advertisement."""
    if btwattch2.MANUFACTURER_ID in manufacturer_data or name.startswith(BTWATTCH2_PREFIX):
        return "btwattch2"
    if name.startswith(BTWATTCH1_NAME):
        return "btwattch1"
    return None


class Sightings:
    """The detection callback's side: called on the scan's loop thread, read after the scan."""

    def __init__(self) -> None:
        self.meters: Dict[str, Sighting] = {}
        self.others: set = set()
        self._lock = threading.Lock()

    def __call__(self, device: Any, advertisement_data: Any) -> None:
        name = advertisement_data.local_name or getattr(device, "name", None) or ""
        data = dict(advertisement_data.manufacturer_data or {})
        address = device.address.upper()
        with self._lock:
            known = self.meters.get(address)
            model = known.model if known else classify(name, data)
            if model is None:
                self.others.add(address)
                return
            if known is None:
                known = self.meters[address] = Sighting(address, model)
            known.name = name or known.name
            known.rssi = advertisement_data.rssi
            self._values(known, data.get(btwattch2.MANUFACTURER_ID))

    @staticmethod
    def _values(sighting: Sighting, raw: Optional[bytes]) -> None:
        if raw is None:
            return
        try:
            sighting.advertisement = btwattch2.decode_advertisement(bytes(raw))
        except ProtocolError:
            sighting.odd_data = bytes(raw)

    def result(self) -> Tuple[List[Sighting], int]:
        with self._lock:
            return list(self.meters.values()), len(self.others)


def scan(
    factory: ScannerFactory,
    seconds: float,
    clock: Clock,
    stop: threading.Event,
    started: Callable[[], None] = lambda: None,
    adapter: Optional[str] = None,
) -> Tuple[List[Sighting], int]:
    """Scan for ``seconds`` (or until ``stop``); the meters seen, and how many other devices were.

    SetupError, in one line, when no scan can start (no adapter, no BlueZ, no D-Bus).
    """
    import concurrent.futures

    from ..ble import LoopThread, adapter_args, explain

    seen = Sightings()
    loop = LoopThread("ble scan")

    async def start() -> Any:
        scanner = factory(detection_callback=seen, **adapter_args(adapter, **BLUEZ_ARGS))
        await scanner.start()
        return scanner

    try:
        try:
            scanner = loop.run(start(), STEP_TIMEOUT)
        except concurrent.futures.TimeoutError:
            raise SetupError(f"cannot scan for meters: BlueZ did not start a scan within {STEP_TIMEOUT:g} s") from None
        except Exception as exc:  # bleak and D-Bus raise many types; explain() sorts them
            raise SetupError(f"cannot scan for meters: {explain(exc)}") from None
        started()
        try:
            clock.sleep(seconds, stop)
        finally:
            try:
                loop.run(scanner.stop(), STEP_TIMEOUT)
            except Exception as exc:
                log.debug("stopping the scan: %s", explain(exc))
    finally:
        loop.close()
    return seen.result()


def plain(value: float) -> str:
    """Up to the advertisement's finest step (1 mW), without trailing zeros: 25.125, 101.2, 0."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def describe(s: Sighting) -> str:
    """One line per meter: what it is and, for a BTWATTCH2, what it last advertised."""
    signal = f"{s.rssi} dBm" if s.rssi is not None else "? dBm"
    head = f"{s.address}  {s.name or '(no name)':<16} {signal:>8}  "
    if s.model == "btwattch1":
        return head + "REX-BTWATTCH1 (Classic: model btwattch1, pair with PIN 0000)"
    head += "RS-BTWATTCH2  "
    ad = s.advertisement
    if ad is not None:
        relay = {True: "on", False: "off", None: "?"}[ad.relay]
        return head + f"relay {relay}, {plain(ad.volts)} V, {plain(ad.milliamps)} mA, {plain(ad.watts)} W"
    if s.odd_data:
        return head + f"advertised values not understood ({s.odd_data.hex(' ')})"
    return head + "no values advertised yet"


def report(sightings: List[Sighting], others: int, seconds: float) -> List[str]:
    """The meters, strongest signal (nearest) first, and a last line that counts."""
    nearest_first = sorted(sightings, key=lambda s: (-(s.rssi if s.rssi is not None else -999), s.address))
    lines = [describe(s) for s in nearest_first]
    other = f" ({others} other Bluetooth device{'s' if others != 1 else ''} ignored)" if others else ""
    if not sightings:
        lines.append(
            f"no RATOC meter found in {seconds:g} s{other}: is it plugged in and near? "
            "A BTWATTCH2 connected to another host (a phone app) may not advertise"
        )
    else:
        lines.append(f"{len(sightings)} meter{'s' if len(sightings) != 1 else ''} found in {seconds:g} s{other}")
    return lines
