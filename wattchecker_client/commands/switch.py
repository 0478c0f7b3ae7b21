"""`switch ADDRESS on|off|status`: switch an RS-BTWATTCH2's relay (and the load behind it), or read it."""

from __future__ import annotations

import argparse
import sys
from typing import NamedTuple, Optional

from ..clock import Clock
from ..config import ConfigError, load_config
from ..meter import MeterSession, link_opener, no_relay
from ..protocol import DEFAULT_MODEL, MODELS, ProtocolError, dialect
from ..transport import DEFAULT_TIMEOUT, LinkError
from .common import EXIT_FAILED, EXIT_OK, adapter_option, positive_float

STATES = {"on": True, "off": False, "status": None}
IDENTIFY = "identify"


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "switch",
        help="switch an RS-BTWATTCH2's relay on or off, or read it",
        description="Switch the relay of an RS-BTWATTCH2 (and so the load plugged into it) on or off, or read "
        "its state; prints the state the meter acknowledged. A BLE meter takes one connection at a time: "
        "stop a service that is reading it first.",
    )
    p.add_argument("address", help="the meter's address (MAC, tcp://HOST:PORT, tty, sim://), "
                                   "or with --config the name of a configured device")
    p.add_argument("state", choices=(*STATES, IDENTIFY),
                   help="on, off, status (only read it), or identify (blink its LED to tell plugs apart)")
    p.add_argument("--model", choices=MODELS,
                   help="the meter's model when ADDRESS is an address; only btwattch2 has a relay")
    p.add_argument("--config", help="config.yaml: ADDRESS names one of its devices (address and model from there)")
    p.add_argument("--timeout", type=positive_float, default=DEFAULT_TIMEOUT, help="link timeout in seconds")
    p.add_argument("--adapter", type=adapter_option,
                   help="the Bluetooth adapter to use (hci1); default: the device's adapter: or BlueZ's default")
    p.set_defaults(func=run)


class Target(NamedTuple):
    name: str
    address: str
    model: str
    channel: Optional[int]
    timeout: float
    adapter: Optional[str] = None  # a btwattch2's Bluetooth adapter (hci1)


def target(args: argparse.Namespace) -> Target:
    """The meter to switch: a configured device by name, or an address and --model."""
    if args.config is None:
        return Target(args.address, args.address, args.model or DEFAULT_MODEL, None, args.timeout, args.adapter)
    config = load_config(args.config)
    for device in config.devices:
        if device.name == args.address:
            if args.model not in (None, device.model):
                raise ConfigError(f"--model {args.model}: {args.config} says {device.name} is a {device.model}")
            return Target(device.name, device.address, device.model, device.channel, device.timeout,
                          args.adapter or device.adapter)
    known = ", ".join(d.name for d in config.devices)
    raise ConfigError(f"{args.config}: no device named {args.address!r} (known: {known})")


def run(args: argparse.Namespace) -> int:
    from ..ble import client_on  # asyncio: only when this command runs

    meter = target(args)
    if not dialect(meter.model).has_relay:
        hint = "" if args.config or args.model else " (is it one? pass --model btwattch2)"
        raise no_relay(meter.name, dialect(meter.model), hint)
    opener = link_opener(meter.address, channel=meter.channel, timeout=meter.timeout, model=meter.model,
                         ble_client_factory=client_on(meter.adapter))
    try:
        with opener() as link:
            session = MeterSession(link, Clock(), model=meter.model)
            if args.state == IDENTIFY:
                answered = session.identify()
                print(f"{meter.name}: LED blinking" + ("" if answered else " (sent; the meter did not answer)"))
                return EXIT_OK
            state = session.switch_relay(STATES[args.state])
    except (LinkError, ProtocolError) as exc:
        print(f"wattchecker-client: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"{meter.name}: relay {'on' if state else 'off'}")
    return EXIT_OK
