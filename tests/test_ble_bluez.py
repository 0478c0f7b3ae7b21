"""The RS-BTWATTCH2 end to end through the real bleak and a real D-Bus: `run`, `scan` and `switch`
as real processes, a stand-in BlueZ (tests/bluez.py) on a private dbus-daemon, the simulated meter
behind it. What is compared is what a user sees: the hourly files' rows against the ledger of what
the stand-in served, the log's lines, the relay's bytes on the characteristic.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import shutil
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Tuple

import pytest

pytest.importorskip("bleak", reason="bleak is the [ble] extra: pip install -e '.[test]'")
from wattchecker_client.clock import Clock  # noqa: E402
from wattchecker_client.formats import json_line  # noqa: E402
from wattchecker_client.protocol import btwattch2  # noqa: E402
from wattchecker_client.simulator import SimOptions, SimulatedMeter  # noqa: E402

from .bluez import PI_MTU, SKIP_REASON, TEMPORARY_TIMEOUT, PiBehaviour, stand_in_bluez  # noqa: E402
from .conftest import DaemonProcess, count_between_writes, run_cli, wait_for  # noqa: E402
from .datacheck import read  # noqa: E402

if shutil.which("dbus-daemon") is None:  # one line for the whole file, not one per test
    pytest.skip(SKIP_REASON, allow_module_level=True)
pytestmark = pytest.mark.process  # a private dbus-daemon per test, and the real `run`

MAC = "F0:12:34:56:78:9A"
NAME = f"{MAC} (BLE)"


# What a Raspberry Pi's BlueZ does: a larger MTU, answers that overtake the write's reply, a bonded meter.
PI = PiBehaviour(mtu=PI_MTU, notify_before_reply=True, bonded=True)


@pytest.fixture
def stand_in(tmp_path):
    """Start the stand-in BlueZ with the behaviour a test asks for; one per test."""
    with contextlib.ExitStack() as stack:

        def start(pi: PiBehaviour = PiBehaviour(), deny_connect: bool = False):
            meter = SimulatedMeter(SimOptions(model="btwattch2", seed=3), Clock())
            return stack.enter_context(stand_in_bluez(tmp_path, MAC, meter, pi, deny_connect))

        yield start


@pytest.fixture
def bluez(stand_in):
    return stand_in()


def write_config(tmp_path: Path, poll_interval: float = 1.0, timeout: float = 2, adapter: str = "") -> Path:
    """The plug through BlueZ, and a second meter (simulated in-process) that must never stop."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"general:\n  data_dir: {tmp_path / 'data'}\n  data_buffer_size: 1\n  data_format: [json]\n"
        f"  poll_interval: {poll_interval}\n  status_interval: 600\n"
        "devices:\n"
        f"  - name: plug\n    address: '{MAC}'\n    model: btwattch2\n    timeout: {timeout}\n"
        + (f"    adapter: {adapter}\n" if adapter else "")
        + "  - name: other\n    address: 'sim://?seed=8'\n"
    )
    return config


def rows(data_dir: Path, name: str) -> List[str]:
    """Every JSON row of one meter, closed hours and the current file, in file order."""
    lines: List[str] = []
    for path in sorted(data_dir.glob(f"wattchecker-data-{name}.json.*.gz")):
        lines += read(path)
    current = data_dir / f"wattchecker-data-{name}.json"
    return lines + (read(current) if current.exists() else [])


def seconds_of(lines: List[str]) -> List[dt.datetime]:
    return [dt.datetime.strptime(json.loads(line)["datetime"], "%Y-%m-%d %H:%M:%S") for line in lines]


def check_against_ledger(lines: List[str], bluez) -> Dict[str, int]:
    """Each row is exactly what the stand-in served at that second, none twice; the counts."""
    served = {}
    for second, m, up in bluez.served():
        served.setdefault(second, []).append((json_line(m), up))
    stamps = seconds_of(lines)
    assert len(stamps) == len(set(stamps)), "a second written twice"
    assert stamps == sorted(stamps)
    for line, second in zip(lines, stamps):
        assert line in [text for text, _ in served.get(second, [])], f"not what was served: {line}"
    up = {second for second, answers in served.items() if any(u for _, u in answers)}
    return {"served_up": len(up), "written": len(stamps), "lost_up": len(up - set(stamps))}


def test_run_writes_59_of_60_wall_clock_seconds_through_bluez_as_a_pi_runs_it(stand_in, tmp_path):
    """`run` at 1 Hz, MTU 247, answers before the write's reply: rows written over 60 s of the wall
    clock (not over the seconds the stand-in happened to answer), exact values, none twice."""
    bluez = stand_in(PI)
    daemon = DaemonProcess(write_config(tmp_path), tmp_path, env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address})
    data_dir, clock = tmp_path / "data", Clock()
    try:
        wait_for(lambda: len(rows(data_dir, "plug")) >= 2, timeout=60, what="the plug's first rows")
        before = count_between_writes(lambda: len(rows(data_dir, "plug")))
        clock.sleep(60.0)  # the wall clock's minute, whatever the link did in it
        captured = len(rows(data_dir, "plug")) - before
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    counts = check_against_ledger(rows(data_dir, "plug"), bluez)
    print(f"{captured}/60 wall-clock seconds written", counts)
    assert captured >= 59
    assert counts["lost_up"] == 0
    assert set(bluez.notified) == {31}  # each answer whole, in one notification
    assert bluez.connects == 1 and "Disconnect" in bluez.calls  # one link, let go at shutdown
    assert " re-subscribing" not in daemon.stderr() and "StopNotify" not in bluez.calls
    assert len(rows(data_dir, "other")) >= 55


def test_answers_before_the_writes_reply_never_look_like_silence_at_a_slow_poll(stand_in, tmp_path):
    """poll_interval 5 s with the silence timer at 3 s, scaled: 1.5 s and 0.5 s (timeout: 0.5), 8 polls."""
    bluez = stand_in(PI)
    config = write_config(tmp_path, poll_interval=1.5, timeout=0.5)
    daemon = DaemonProcess(config, tmp_path, env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address})
    try:
        wait_for(lambda: len(rows(tmp_path / "data", "plug")) >= 8, timeout=60, what="8 rows at 1.5 s")
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    assert " re-subscribing" not in daemon.stderr() and " WARNING " not in daemon.stderr()
    assert bluez.calls.count("StartNotify") == 1 and "StopNotify" not in bluez.calls
    assert check_against_ledger(rows(tmp_path / "data", "plug"), bluez)["lost_up"] == 0


def test_scan_lists_the_plug_with_its_advertised_values(bluez, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
    result = run_cli("scan", "--seconds", "1")
    assert (result.returncode, result.stderr) == (0, "scanning for 1 s ...\n")
    first, last = result.stdout.splitlines()
    advertised = [btwattch2.decode_advertisement(data) for data in bluez.advertised]
    assert first in [  # one of them: the scan's last before it stopped listening
        f"{MAC}  BTWATTCH2_789A    -60 dBm  RS-BTWATTCH2  "
        f"relay on, {ad.volts:g} V, {ad.milliamps:g} mA, {ad.watts:g} W" for ad in advertised
    ]
    assert all(ad.relay is True and 90 < ad.volts < 110 for ad in advertised)
    assert last == "1 meter found in 1 s"
    assert bluez.calls[:2] == ["SetDiscoveryFilter", "StartDiscovery"] and "StopDiscovery" in bluez.calls


def test_switch_turns_the_plugs_relay_with_the_exact_bytes(bluez, monkeypatch):
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
    off = run_cli("switch", MAC, "off", "--model", "btwattch2")
    assert (off.returncode, off.stdout) == (0, f"{MAC}: relay off\n"), off.stderr
    assert bluez.meter.relay is False
    assert bluez.writes[-1] == bytes.fromhex("AA 00 02 A7 00 DC")
    on = run_cli("switch", MAC, "on", "--model", "btwattch2")
    assert (on.returncode, on.stdout) == (0, f"{MAC}: relay on\n"), on.stderr
    assert bluez.meter.relay is True
    assert bluez.writes[-1] == bytes.fromhex("AA 00 02 A7 01 59")
    assert bluez.calls.count("Connect") == 2 and bluez.calls.count("Disconnect") == 2


# --- the faults BlueZ shows in practice: each heals by itself, loses nothing served, stops no other meter ---

DROPPED = "the meter or BlueZ dropped the BLE connection"
GONE = ("write to the meter failed: bluetoothd is not running (no org.bluez on the D-Bus system bus): "
        "`sudo systemctl start bluetooth`")
DENIED = ("D-Bus denied this process a call to BlueZ (org.bluez.Device1.Connect): run the service as root or "
          "as a member of group `bluetooth` (`sudo usermod -aG bluetooth USER`, then restart it)")


class Fault(NamedTuple):
    before: Optional[Callable] = None  # set before `run` starts
    during: Optional[Callable] = None  # applied while reading...
    undo: Optional[Callable] = None  # ...and undone HEAL_AFTER s later
    warning: Optional[str] = None  # the one warning
    links: Tuple[int, int] = (1, 1)  # (Connect calls the stand-in saw, links made)
    pi: PiBehaviour = PiBehaviour()
    deny_connect: bool = False  # the bus refuses Connect for the first HEAL_AFTER s


FAULTS = {
    "notifications stop, re-subscribing heals": Fault(during=lambda b: b.mute()),
    "notifications stop for good on that link": Fault(
        during=lambda b: b.mute(heals_on_resubscribe=False),
        warning="no notification for 2 s, even after re-subscribing", links=(2, 2),
    ),
    "the device disappears": Fault(during=lambda b: b.vanish(), undo=lambda b: b.reappear(), warning=DROPPED,
                                   links=(2, 2)),
    "the adapter powers off": Fault(during=lambda b: b.power(False), undo=lambda b: b.power(True), warning=DROPPED,
                                    links=(2, 2)),
    "services never resolve": Fault(
        before=lambda b: b.half_open(1),
        warning="timed out (is the meter plugged in, in range, and not connected to a phone?)", links=(2, 2),
    ),
    "subscribing fails": Fault(before=lambda b: b.fail_subscribes(1), links=(2, 2)),
    "Connect fails": Fault(
        before=lambda b: b.fail_connects(2),
        warning="BlueZ failed: le-connection-abort-by-remote "
        "(is the meter plugged in, in range, and not connected to a phone?)", links=(3, 1),
    ),
    # What a Pi meets besides:
    "bluetoothd restarts (the GATT objects at new paths)": Fault(
        during=lambda b: b.leave(), undo=lambda b: b.come_back(), warning=GONE, links=(2, 2), pi=PI,
    ),
    "a bonded meter out of range (its objects stay)": Fault(
        during=lambda b: b.vanish(), undo=lambda b: b.reappear(), warning=DROPPED, links=(2, 2), pi=PI,
    ),
    "an unpaired meter out of range (removed, found again)": Fault(
        during=lambda b: b.vanish(), undo=lambda b: b.reappear(), warning=DROPPED, links=(2, 2),
        pi=PiBehaviour(mtu=PI_MTU, paired=False),
    ),
    "D-Bus refuses Connect (not in group bluetooth)": Fault(warning=DENIED, deny_connect=True),
}
HEAL_AFTER = 3.0  # longer than TEMPORARY_TIMEOUT: an unpaired meter is forgotten meanwhile
# A bluetoothd restart heals within this many seconds of org.bluez coming back.
BACK_WITHIN = dt.timedelta(seconds=10)


@pytest.mark.parametrize("fault", FAULTS)
def test_run_heals_by_itself(stand_in, tmp_path, fault):
    """One line per outage, healed without help, no served second lost, the other meter never held up."""
    f = FAULTS[fault]
    bluez = stand_in(f.pi, f.deny_connect)
    if f.before:
        f.before(bluez)
    daemon = DaemonProcess(write_config(tmp_path), tmp_path, env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address})
    data_dir = tmp_path / "data"
    back, forgotten = None, 0
    try:
        if f.deny_connect:
            wait_for(lambda: DENIED in daemon.stderr(), timeout=60, what="the refusal's line")
            Clock().sleep(HEAL_AFTER)  # retried, refused; then the user adds the group and it is allowed
            bluez.deny_connect(False)
        wait_for(lambda: len(rows(data_dir, "plug")) >= 3, timeout=60, what="the plug's first rows")
        if f.during:
            f.during(bluez)
            if f.undo:
                Clock().sleep(HEAL_AFTER)  # an outage a user would notice
                forgotten = bluez.removals
                f.undo(bluez)
                back = bluez.meter.now()
        healed_from = len(rows(data_dir, "plug"))
        wait_for(lambda: len(rows(data_dir, "plug")) >= healed_from + 3, timeout=60, what="rows after the fault")
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    log = daemon.stderr()
    warnings = [line.split(" WARNING ", 1)[1] for line in log.splitlines() if " WARNING " in line]
    assert warnings == ([f"wattchecker_client.meter: plug: {NAME}: {f.warning}; reconnecting"] if f.warning else [])
    assert "Traceback" not in log and " ERROR " not in log
    resubscribed = "stop" in fault
    assert log.count("re-subscribing\n") == resubscribed
    assert bluez.calls.count("StopNotify") == resubscribed
    assert log.count("dropping that link\n") == (fault == "subscribing fails")  # half-open: retried in the same open
    assert (bluez.calls.count("Connect"), bluez.connects) == f.links
    counts = check_against_ledger(rows(data_dir, "plug"), bluez)
    assert counts["lost_up"] == 0 and counts["written"] >= 6
    other = seconds_of(rows(data_dir, "other"))
    assert max(b - a for a, b in zip(other, other[1:])) <= dt.timedelta(seconds=2)  # never held up
    if back is not None:
        healed = min(s for s in seconds_of(rows(data_dir, "plug")) if s >= back.replace(microsecond=0))
        print(f"{fault}: the first row {(healed - back).total_seconds():.1f} s after the undo")
        assert healed - back <= BACK_WITHIN
    if f.pi.bonded:
        assert bluez.gatt_exports == 1 + bluez.restarts  # kept across the disconnect; moved by a restart only
    if not f.pi.paired:
        assert forgotten == 1  # forgotten while out of range, then found by the reconnect's scan


# --- the Pi's other ways, one command each ----------------------------------------------------

GET_DATA = bytes.fromhex("AA 00 01 08 B3")  # protocol.md's request for a measurement


def test_two_answers_in_one_notification_are_two_frames(stand_in, monkeypatch):
    """MTU 247: two requests in one write come back in one 62-byte notification, and read as two frames."""
    from wattchecker_client.ble import BleOpener
    from wattchecker_client.protocol.frames import FrameDecoder

    bluez = stand_in(PiBehaviour(mtu=PI_MTU))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
    opener = BleOpener(MAC, 2.0)
    frames = []
    try:
        with opener() as link:
            link.write(GET_DATA + GET_DATA)
            decoder = FrameDecoder(big_endian=True)
            while len(frames) < 2:
                decoder.feed(link.read(timeout=2.0))
                frames += list(decoder)
    finally:
        opener.close()
    assert bluez.notified == [62] and bluez.writes == [GET_DATA + GET_DATA]
    assert bluez.write_types == ["request"]  # with response: the characteristic allows it
    served = [m for _, m, _ in bluez.served()]
    assert [btwattch2.decode_measurement(f.payload) for f in frames] == served and len(served) == 2


def test_adapter_hci1_is_used_by_scan_switch_and_run(stand_in, tmp_path, monkeypatch):
    """The plug is in range of hci1 only: `adapter: hci1` (or --adapter hci1) reaches it."""
    bluez = stand_in(PiBehaviour(adapters=("hci0", "hci1"), device_adapter="hci1"))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
    on_hci0 = run_cli("scan", "--seconds", "1", "--adapter", "hci0")  # (bleak's default is either: a set's first)
    assert on_hci0.stdout.splitlines()[-1].startswith("no RATOC meter found in 1 s"), on_hci0.stderr
    on_hci1 = run_cli("scan", "--seconds", "1", "--adapter", "hci1")
    assert on_hci1.stdout.splitlines()[-1] == "1 meter found in 1 s", on_hci1.stderr
    assert on_hci1.stdout.startswith(f"{MAC}  BTWATTCH2_789A")
    assert bluez.calls.count("StartDiscovery hci1") == 1  # hci1 scanned once; hci0 (the first) by the first scan
    config = write_config(tmp_path, adapter="hci1")
    off = run_cli("switch", "plug", "off", "--config", str(config))
    assert (off.returncode, off.stdout) == (0, "plug: relay off\n"), off.stderr
    assert bluez.meter.relay is False and bluez.calls.count("StartDiscovery hci1") == 2
    daemon = DaemonProcess(config, tmp_path, env={"DBUS_SYSTEM_BUS_ADDRESS": bluez.address})
    try:
        wait_for(lambda: len(rows(tmp_path / "data", "plug")) >= 3, timeout=60, what="the plug's rows over hci1")
    finally:
        assert daemon.stop() == 0, daemon.stderr()
    assert " WARNING " not in daemon.stderr() and bluez.calls.count("StartDiscovery hci1") == 3
    assert check_against_ledger(rows(tmp_path / "data", "plug"), bluez)["written"] >= 3


def test_an_unpaired_meter_forgotten_by_bluez_is_found_again(stand_in, monkeypatch):
    """Not paired: BlueZ removes it after the scan and the disconnect; the next command finds it anew."""
    bluez = stand_in(PiBehaviour(paired=False))
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", bluez.address)
    off = run_cli("switch", MAC, "off", "--model", "btwattch2")
    assert (off.returncode, off.stdout) == (0, f"{MAC}: relay off\n"), off.stderr
    wait_for(lambda: bluez.removals == 1, timeout=10 * TEMPORARY_TIMEOUT, what="BlueZ forgetting the meter")
    on = run_cli("switch", MAC, "on", "--model", "btwattch2")
    assert (on.returncode, on.stdout) == (0, f"{MAC}: relay on\n"), on.stderr
    assert bluez.meter.relay is True and bluez.connects == 2
