"""Who is who when several Pis share one broker, one BigQuery table and one Prometheus.

A meter's id names it everywhere a name could collide across hosts: its MQTT
topics, its Home Assistant node, its BigQuery ``device`` value (unless the user
named it) and a ``/metrics`` label. It needs no configuration and survives
restarts:

- a Bluetooth meter is its address (``000cbf1234ab``): unique in the world;
- a ``tcp://`` or tty meter is its address on this host: ``/dev/rfcomm0`` on
  two Pis is two meters, so the host's key goes in front.

The host's key (``<hostname>-<8 hex>``) names the service's client id and its
status (last-will) topic. Two Pis left at the same hostname still differ: the
hex comes from ``/etc/machine-id`` and the meter ids this service reads.

An upgrade keeps what Home Assistant already knows: a data folder made before
ids existed gives its tty and tcp meters the old, host-less id, and the choice
is written down (``meter-ids.json``) so it never changes again.
"""

from __future__ import annotations

import logging
import re
import socket
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from .config import DEFAULT_NAME
from .transport import MAC_RE
from .saved import ENERGY_FILE, IDS_FILE, load_meters, write_meters

if TYPE_CHECKING:
    from .config import Config

log = logging.getLogger(__name__)

MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))


def address_key(address: str) -> str:
    """An address as a topic/id part: a MAC's 12 hex digits, else its letters and digits joined by ``_``."""
    if MAC_RE.match(address.strip()):
        return address.strip().replace(":", "").lower()
    return re.sub(r"[^a-z0-9]+", "_", address.lower()).strip("_")


def is_global(address: str) -> bool:
    """A Bluetooth address names one meter in the world; a tty or tcp:// address only on its host."""
    return bool(MAC_RE.match(address.strip()))


def meter_id(address: str, host_label: str) -> str:
    """The id of a meter first seen by this release: see the module docstring."""
    key = address_key(address)
    return key if is_global(address) else f"{address_key(host_label)}_{key}"


def short_hash(text: str, digits: int) -> str:
    """Hex digits of a CRC-32: stable, and spread enough to tell hosts apart. Not a secret, so
    not hashlib, whose OpenSSL would cost the service about 4 MB of memory for a name."""
    return f"{zlib.crc32(text.encode()):08x}"[:digits]


def host_key(hostname: str, machine_id: str, meter_ids: Iterable[str]) -> str:
    """``<hostname>-<8 hex>``: readable, and distinct for two services even on one hostname."""
    digest = short_hash("\n".join([machine_id.strip(), *sorted(meter_ids)]), 8)
    name = re.sub(r"[^A-Za-z0-9_-]+", "-", hostname).strip("-") or "host"
    return f"{name}-{digest}"


def collisions(addresses: Mapping[str, str]) -> List[Tuple[str, str, str]]:
    """(first name, second name, id) for two meters of one config that would share an id."""
    seen: Dict[str, str] = {}
    found = []
    for name, address in addresses.items():
        key = address_key(address)
        if key in seen:
            found.append((seen[key], name, key))
        else:
            seen[key] = name
    return found


def read_machine_id(paths: Sequence[Path] = MACHINE_ID_FILES) -> str:
    """The host's machine id; empty where none is kept (then the hostname alone names the host)."""
    for path in paths:
        try:
            text = path.read_text(encoding="ascii", errors="replace").strip()
        except OSError:
            continue
        if text:
            return text
    return ""


@dataclass(frozen=True)
class Identity:
    """The names this service goes by: per meter (by configured name) and per host."""

    meters: Dict[str, str]  # meter name -> meter id
    host: str
    # Set only on the first start after an upgrade: the retained topics of the old layout, to clear once.
    legacy_topics_due: bool = False

    @property
    def client_id(self) -> str:
        return f"wattchecker-{self.host}"


def derive(addresses: Mapping[str, str], *, hostname: Optional[str] = None, machine_id: Optional[str] = None,
           known: Optional[Mapping[str, str]] = None) -> Identity:
    """Ids for meters (name -> address); ``known`` ids (written down earlier) win over new ones."""
    hostname = socket.gethostname() if hostname is None else hostname
    machine_id = read_machine_id() if machine_id is None else machine_id
    label = f"{hostname}-{short_hash(machine_id, 6)}" if machine_id else hostname
    known = known or {}
    meters = {name: known.get(name) or meter_id(address, label) for name, address in addresses.items()}
    return Identity(meters, host_key(hostname, machine_id, meters.values()))


def made_before_ids(data_dir: Path) -> bool:
    """The folder holds data of a release without ids: hour files or saved energy, and no ids file."""
    if (data_dir / IDS_FILE).exists():
        return False
    return (data_dir / ENERGY_FILE).exists() or any(data_dir.glob("wattchecker-data*"))


def _resolve(data_dir: Path, addresses: Mapping[str, str], hostname: Optional[str],
             machine_id: Optional[str]) -> Tuple[Identity, bool]:
    """The identity ``data_dir`` holds or implies, and whether it must be written down."""
    upgrading = made_before_ids(data_dir)
    saved = load_meters(data_dir / IDS_FILE, "the meter ids are derived again")
    known, first = saved or {}, saved is None
    if first and upgrading:  # the ids the old release gave to discovery: Home Assistant's entities keep theirs
        known = {name: address_key(address) for name, address in addresses.items()}
    identity = derive(addresses, hostname=hostname, machine_id=machine_id, known=known)
    if first and upgrading:
        identity = Identity(identity.meters, identity.host, legacy_topics_due=True)
    return identity, first or identity.meters != known


def peek(data_dir: Path, addresses: Mapping[str, str]) -> Identity:
    """What ``for_data_dir`` would give, writing nothing (for check-config)."""
    return _resolve(data_dir, addresses, None, None)[0]


def for_data_dir(data_dir: Path, addresses: Mapping[str, str], *,
                 hostname: Optional[str] = None, machine_id: Optional[str] = None) -> Identity:
    """The service's identity, kept in ``data_dir`` (see the module docstring)."""
    identity, changed = _resolve(data_dir, addresses, hostname, machine_id)
    if changed:
        try:
            write_meters(data_dir / IDS_FILE, identity.meters)
        except OSError as exc:  # the ids stay derivable; the daemon's own checks report the folder
            log.warning("cannot keep the meter ids in %s: %s", data_dir / IDS_FILE, exc.strerror or exc)
    return identity


def for_config(config: "Config") -> Identity:
    """The identity of the service a config describes, kept in its data folder."""
    return for_data_dir(config.general.data_dir, {d.name: d.address for d in config.devices})


def device_value(name: str, meter: str) -> str:
    """BigQuery's ``device``: the name the user gave, else the meter's id (two Pis' default names agree)."""
    return meter if name == DEFAULT_NAME else name


def device_values(config: "Config", identity: Identity) -> Dict[str, str]:
    """File-name suffix (``wattchecker-data-<suffix>``; empty for one meter) -> BigQuery ``device``."""
    return {(d.name if config.named_files else ""): device_value(d.name, identity.meters[d.name])
            for d in config.devices}
