"""The RS-BTWATTCH2 beside the BTWATTCH1: config, session, relay, simulator, and real processes end to end."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import signal
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from wattchecker_client.clock import Clock, FakeClock
from wattchecker_client.config import ConfigError, parse_config
from wattchecker_client.errors import SetupError
from wattchecker_client.formats import json_line
from wattchecker_client.meter import MeterReader, MeterSession, NoRelayError, ReaderSettings
from wattchecker_client.protocol import FrameDecoder, btwattch2
from wattchecker_client.simulator import (
    SimOptions,
    SimulatedMeter,
    air_conditioner,
    parse_sim_address,
    serve_link,
    switched_off,
)
from wattchecker_client.transport import LinkError, socket_link

from .conftest import ROOT, cli, free_port, run_cli, wait_for
from .datacheck import check_data_dir, read
from .test_cli import parse_json_rows
from .test_daemon import FAST, FAULTS, final_rows_received

T0 = dt.datetime(2026, 7, 2, 9, 0, 0)


# --- config: the model key ------------------------------------------------------------------


def device_config(device: str) -> str:
    return "general:\n  data_dir: data\ndevice:\n" + device


def test_model_defaults_to_btwattch1_and_accepts_btwattch2():
    assert parse_config(device_config("  address: tcp://127.0.0.1:9\n")).devices[0].model == "btwattch1"
    config = parse_config(device_config("  address: tcp://127.0.0.1:9\n  model: BTWATTCH2\n"))
    assert config.devices[0].model == "btwattch2"


@pytest.mark.parametrize(
    "device, message",
    [
        ("  address: tcp://127.0.0.1:9\n  model: btwattch3\n",
         "<config>:5: device.model: must be btwattch1 (REX-BTWATTCH1, Bluetooth Classic) or btwattch2 "
         "(RS-BTWATTCH2, Bluetooth LE), got 'btwattch3'"),
        ("  address: 00:0C:BF:12:34:56\n  model: btwattch2\n  channel: 6\n",
         "<config>:6: device.channel: only applies to a btwattch1 (REX-BTWATTCH1); an RS-BTWATTCH2 "
         "(model: btwattch2) is reached over Bluetooth LE by its MAC: remove it"),
        ("  model: btwattch2\n  start_argument: 0\n  address: 00:0C:BF:12:34:56\n",
         "<config>:5: device.start_argument: only applies to a btwattch1"),
        ("  address: /dev/rfcomm0\n  model: btwattch2\n",
         "<config>:4: device.address: /dev/rfcomm0 is a Bluetooth Classic (RFCOMM) tty, but an RS-BTWATTCH2 "
         "speaks Bluetooth LE: use its MAC"),
        ("  address: 'sim://?model=btwattch2'\n",
         "<config>:3: device.model: is btwattch1, but the address simulates a btwattch2: set model: btwattch2"),
    ],
)
def test_model_is_checked_against_the_other_keys(device, message):
    with pytest.raises(ConfigError) as err:
        parse_config(device_config(device))
    assert str(err.value).startswith(message)


def test_a_btwattch2_on_a_pty_or_tcp_bridge_is_fine():
    for address in ("/dev/pts/3", "tcp://bridge:4001", "sim://?model=btwattch2", "AA:BB:CC:DD:EE:FF"):
        config = parse_config(device_config(f"  address: '{address}'\n  model: btwattch2\n"))
        assert config.devices[0].address == address


# --- the session over a real socketpair, against the simulated meter -------------------------


class Recording(SimulatedMeter):
    """The simulated meter, keeping every request payload it was sent."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.requests = []

    def respond(self, payload: bytes) -> bytes:
        self.requests.append(payload)
        return super().respond(payload)


@pytest.fixture
def meter_link():
    """(meter, link): a Recording BTWATTCH2 served on the far end of a real socketpair."""
    ours, theirs = socket.socketpair()
    stop = threading.Event()
    meter = Recording(SimOptions(model="btwattch2", seed=3), FakeClock(T0))
    far = socket_link(theirs, "meter", 2.0)
    thread = threading.Thread(target=serve_link, args=(far, meter, stop), daemon=True)
    thread.start()
    link = socket_link(ours, "host", 2.0)
    yield meter, link
    stop.set()
    thread.join(5)
    link.close()
    far.close()


def test_session_sets_the_clock_polls_and_switches_in_btwattch2_bytes(meter_link):
    meter, link = meter_link
    session = MeterSession(link, FakeClock(T0), model="btwattch2")
    session.start()
    assert meter.requests == [btwattch2.set_clock_request(T0)[3:-1]]  # no start command: it has none
    assert session.poll() == air_conditioner(T0, 3, "btwattch2") and session.relay is True
    assert session.switch_relay(False) is False
    assert session.poll() == switched_off(air_conditioner(T0, 3, "btwattch2")) and session.relay is False
    assert session.switch_relay(None) is False
    assert session.switch_relay(True) is True
    session.stop()  # no stop command either: nothing is sent
    assert meter.requests[1:] == [b"\x08", b"\xa7\x00", b"\x08", b"\x08", b"\xa7\x01"]


def test_a_btwattch1_session_refuses_the_relay_without_sending_anything(meter_link):
    meter, link = meter_link
    with pytest.raises(NoRelayError, match="this meter \\(REX-BTWATTCH1\\) has no relay"):
        MeterSession(link, FakeClock(T0)).switch_relay(True)
    assert meter.requests == []


def test_a_refused_relay_command_is_a_protocol_error():
    meter = SimulatedMeter(SimOptions(model="btwattch2"), FakeClock(T0))
    decoder = FrameDecoder(big_endian=True)
    decoder.feed(meter.respond(b"\xa7\x05"))
    (frame,) = list(decoder)
    assert frame.payload == b"\xa7\x01\x01"  # status 1, still on
    with pytest.raises(btwattch2.ProtocolError, match="refused"):
        btwattch2.decode_relay_ack(frame.payload)


# --- the reader: relay requests from another thread -------------------------------------------


def start_reader(address: str, model: str = "btwattch1"):
    stop = threading.Event()
    reader = MeterReader(ReaderSettings(address, model=model, poll_interval=0.05, backoff=(0.05, 0.2)), Clock(), stop)
    rows = []
    thread = threading.Thread(target=lambda: rows.extend(reader.readings()), daemon=True)
    thread.start()
    return reader, stop, thread, rows


def test_relay_requests_from_another_thread_are_run_between_polls():
    # The address does not name the model: the reader's model must reach the simulated meter.
    reader, stop, thread, rows = start_reader("sim://?clock_speed=20&seed=4", "btwattch2")
    try:
        wait_for(lambda: reader.relay is True, timeout=60, what="a first reading")
        assert reader.request_relay(False).result(timeout=60) is False
        assert reader.request_relay(None).result(timeout=60) is False
        count = len(rows)
        wait_for(lambda: len(rows) > count + 3, timeout=60, what="readings with the relay off")
        off = rows[count:]
        assert reader.request_relay(True).result(timeout=60) is True
        assert reader.relay is True
    finally:
        stop.set()
        thread.join(60)
    assert all(m == switched_off(air_conditioner(m.time, 4, "btwattch2")) for m in off)
    assert rows[0] == air_conditioner(rows[0].time, 4, "btwattch2")


def test_a_btwattch1_reader_fails_relay_requests_at_once():
    stop = threading.Event()
    reader = MeterReader(ReaderSettings("sim://", name="aircon"), Clock(), stop)
    error = reader.request_relay(True).exception(timeout=0)
    assert isinstance(error, NoRelayError)
    assert str(error).startswith("aircon: this meter (REX-BTWATTCH1) has no relay")
    assert reader.relay is None


def test_pending_relay_requests_fail_when_the_reader_stops():
    with socket.socket() as sock:  # a port nobody listens on: the reader keeps reconnecting
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    reader, stop, thread, _ = start_reader(address, "btwattch2")
    future = reader.request_relay(False)
    wait_for(lambda: reader.stats.link_errors >= 1, timeout=60, what="a failed connect")
    stop.set()
    thread.join(60)
    with pytest.raises(LinkError, match="stopped before the relay request ran"):
        future.result(timeout=0)
    with pytest.raises(LinkError, match="stopping"):
        reader.request_relay(True).result(timeout=0)


# --- the simulated BTWATTCH2 -----------------------------------------------------------------


def test_sim_address_takes_the_model_of_the_client_unless_it_names_another():
    assert parse_sim_address("sim://?clock_speed=5", "btwattch2") == SimOptions(model="btwattch2", clock_speed=5)
    assert parse_sim_address("sim://?model=btwattch2").model == "btwattch2"
    with pytest.raises(SetupError, match="the simulated meter is a btwattch2 but the client expects a btwattch1"):
        parse_sim_address("sim://?model=btwattch2", "btwattch1")
    with pytest.raises(ValueError, match="unknown meter model 'x'"):
        SimOptions(model="x")


@pytest.mark.parametrize("option", ["corrupt_rate", "junk_rate", "stray_ack_rate", "bad_status_rate"])
def test_every_fault_speaks_btwattch2_framing(option):
    meter = SimulatedMeter(SimOptions(model="btwattch2", seed=5, **{option: 1.0}), FakeClock(T0))
    little, big = FrameDecoder(), FrameDecoder(big_endian=True)
    for _ in range(30):
        response = meter.respond(b"\x08")
        little.feed(response)
        big.feed(response)
    assert little.frames_ok == 0  # nothing the BTWATTCH1 framing would accept
    payloads = [f.payload for f in big]
    if option == "stray_ack_rate":
        assert payloads[::2] == [b"\x01\x00"] * 30 and all(len(p) == 27 for p in payloads[1::2])
    elif option == "bad_status_rate":
        assert payloads == [b"\x08\x01" + bytes(25)] * 30
    elif option == "corrupt_rate":
        assert big.crc_errors + big.bad_lengths >= 30 - len(payloads)
        assert all(p != btwattch2.measurement_payload(air_conditioner(T0, 5, "btwattch2")) for p in payloads)
    else:
        assert big.junk_bytes >= 30 and len(payloads) == 30


def test_the_advertisement_follows_the_relay():
    meter = SimulatedMeter(SimOptions(model="btwattch2", seed=2), FakeClock(T0))
    m = air_conditioner(T0, 2, "btwattch2")
    on = btwattch2.decode_advertisement(meter.advertisement())
    assert on.relay is True and on.volts == round(m.volts, 1) and on.watts == round(m.watts, 3)
    meter.respond(btwattch2.relay_request(False)[3:-1])
    off = btwattch2.decode_advertisement(meter.advertisement())
    assert (off.relay, off.milliamps, off.watts) == (False, 0.0, 0.0)


def test_the_two_models_quantize_the_same_load_differently():
    for seconds in range(0, 86400, 3601):
        when = T0 + dt.timedelta(seconds=seconds)
        one, two = air_conditioner(when, 7), air_conditioner(when, 7, "btwattch2")
        assert one != two and one.time == two.time
        assert abs(one.watts - two.watts) < 0.01 and abs(one.volts - two.volts) < 0.001
        assert btwattch2.quantize(two) == two


# --- real processes -----------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "pty"])
def test_read_with_model_btwattch2_over_tcp_and_a_pty(simulator, tmp_path, transport):
    where = [] if transport == "tcp" else ["--pty", "--link", str(tmp_path / "tty")]
    (address,) = simulator(*where, "--model", "btwattch2", "--seed", "6", "--clock-speed", "10", "--all-faults",
                           "--drop-after", "6").addresses
    result = run_cli("read", address, "--model", "btwattch2", "--count", "12", "--interval", "0.1")
    assert result.returncode == 0, result.stderr
    rows = parse_json_rows(result.stdout)
    assert len(rows) == 12 and all(row == air_conditioner(row.time, 6, "btwattch2") for row in rows)
    assert len({row.time for row in rows}) == 12
    assert re.search(r"connects=([3-9]|\d\d)", result.stderr), result.stderr  # the drops were survived


def test_run_with_a_btwattch1_and_a_btwattch2_side_by_side_through_every_fault(simulator, daemons, tmp_path):
    (one,) = simulator("--seed", "7", *FAST[2:], *FAULTS).addresses
    (two,) = simulator("--model", "btwattch2", "--seed", "8", *FAST[2:], *FAULTS).addresses
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"general:\n  data_dir: {data_dir}\n  data_buffer_size: 1\n  data_format: [csv, json]\n"
        "  poll_interval: 0.002\n  status_interval: 2\n"
        f"devices:\n  - name: one\n    address: {one}\n    timeout: 2\n"
        f"  - name: two\n    address: {two}\n    model: btwattch2\n    timeout: 2\n"
    )
    daemon = daemons(config, tmp_path)

    def closed(name: str) -> list:
        return sorted(data_dir.glob(f"wattchecker-data-{name}.json.*.gz"))

    wait_for(lambda: len(closed("one")) >= 2 and len(closed("two")) >= 2, timeout=90, what="2 hours per meter")
    assert daemon.stop() == 0, daemon.stderr()
    held_one = check_data_dir(data_dir, 7, base="wattchecker-data-one")
    held_two = check_data_dir(data_dir, 8, base="wattchecker-data-two", model="btwattch2")
    assert len(held_one["csv"]) + len(held_two["csv"]) == final_rows_received(daemon.stderr())
    # The check tells the models apart: no BTWATTCH2 row reads as a BTWATTCH1 one would.
    rows_two = [line for path in closed("two") for line in read(path)]
    assert not any(line == json_line(air_conditioner(json_time(line), 8)) for line in rows_two)
    log = daemon.stderr()
    for name in ("one", "two"):
        status = re.search(rf"final status {name}: readings=(\d+).* crc_errors=(\d+)", log)
        assert status and int(status.group(1)) > 0 and int(status.group(2)) > 0, log[-2000:]


def json_time(line: str) -> dt.datetime:
    return dt.datetime.strptime(json.loads(line)["datetime"], "%Y-%m-%d %H:%M:%S")


def echoed(daemon) -> list:
    return [json.loads(line) for line in daemon.out_path.read_text().splitlines(keepends=True) if line.endswith("\n")]


def relay_runs(data_dir: Path) -> list:
    """The relay's story told by the rows, in the meter's time: e.g. ['on', 'off', 'on']."""
    rows = [json.loads(line) for path in data_dir.glob("wattchecker-data.json*") for line in read(path)]
    states = ["off" if row["W"] == 0 and row["mA"] == 0 else "on" for row in sorted(rows, key=lambda r: r["datetime"])]
    return [state for state, _ in itertools.groupby(states)]


def test_switch_off_and_on_shows_in_the_files(simulator, daemons, tmp_path):
    (address,) = simulator("--model", "btwattch2", "--seed", "9", "--clock-speed", "120", *FAULTS).addresses
    data_dir = tmp_path / "data"
    config = tmp_path / "config.yaml"
    config.write_text(
        f"general:\n  data_dir: {data_dir}\n  data_buffer_size: 1\n  data_format: [csv, json]\n"
        f"  poll_interval: 0.01\ndevice:\n  address: {address}\n  model: btwattch2\n  timeout: 2\n"
    )
    switch = ["switch", address, "--model", "btwattch2"]
    assert run_cli(*switch[:2], "status", *switch[2:]).stdout == f"{address}: relay on\n"
    daemon = daemons(config, tmp_path, args=("--echo",))
    wait_for(lambda: len(echoed(daemon)) >= 20, timeout=30, what="readings with the relay on")

    off = run_cli(*switch[:2], "off", *switch[2:])
    assert (off.returncode, off.stdout) == (0, f"{address}: relay off\n"), off.stderr
    wait_for(lambda: sum(1 for row in echoed(daemon) if row["W"] == 0) >= 20, timeout=30, what="rows at 0 W")
    status = run_cli("switch", "wattchecker", "status", "--config", str(config))
    assert (status.returncode, status.stdout) == (0, "wattchecker: relay off\n"), status.stderr

    on = run_cli(*switch[:2], "on", *switch[2:])
    assert (on.returncode, on.stdout) == (0, f"{address}: relay on\n"), on.stderr
    wait_for(lambda: echoed(daemon)[-1]["W"] > 0, timeout=30, what="the load back")
    count = len(echoed(daemon))
    wait_for(lambda: len(echoed(daemon)) >= count + 20, timeout=30, what="more readings with the relay on")
    assert daemon.stop() == 0, daemon.stderr()

    check_data_dir(data_dir, 9, model="btwattch2", relay_switched=True)
    assert relay_runs(data_dir) == ["on", "off", "on"]


@pytest.mark.process
def test_switch_refuses_a_meter_without_a_relay_in_one_line(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("devices:\n  - name: aircon\n    address: tcp://127.0.0.1:9\n")
    by_name = run_cli("switch", "aircon", "off", "--config", str(config))
    assert (by_name.returncode, by_name.stdout) == (2, "")
    assert by_name.stderr == ("wattchecker-client: error: aircon: this meter (REX-BTWATTCH1) has no relay; only an "
                              "RS-BTWATTCH2 (model: btwattch2) can switch its load\n")
    by_address = run_cli("switch", "tcp://127.0.0.1:9", "on")
    assert by_address.returncode == 2 and by_address.stderr.endswith("(is it one? pass --model btwattch2)\n")
    unknown = run_cli("switch", "fridge", "on", "--config", str(config))
    assert unknown.returncode == 2
    assert unknown.stderr == f"wattchecker-client: error: {config}: no device named 'fridge' (known: aircon)\n"


@pytest.mark.process
def test_switch_says_in_one_line_when_the_meter_cannot_be_reached():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        address = f"tcp://127.0.0.1:{sock.getsockname()[1]}"
    result = run_cli("switch", address, "on", "--model", "btwattch2", "--timeout", "1")
    assert result.returncode == 1 and result.stdout == ""
    assert re.fullmatch(rf"wattchecker-client: error: {address}: connect failed: [^\n]+\n", result.stderr)


@pytest.mark.process
def test_demo_with_model_btwattch2(tmp_path):
    data_dir = tmp_path / "demo"
    proc = subprocess.Popen(cli("demo", "--model", "btwattch2", "--data-dir", str(data_dir), "--speed", "600",
                                "--port", str(free_port())),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        shown = [proc.stdout.readline(), proc.stdout.readline()]
    finally:
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "demo: a simulated RS-BTWATTCH2" in err
    held = check_data_dir(data_dir, 1, model="btwattch2")["json"]
    stored = {json_line(air_conditioner(when, 1, "btwattch2")) + "\n" for when in held}
    assert set(shown + out.splitlines(keepends=True)) <= stored  # what it showed is what it wrote


@pytest.mark.process
def test_read_refuses_a_channel_for_a_btwattch2():
    result = run_cli("read", "AA:BB:CC:DD:EE:FF", "--model", "btwattch2", "--channel", "6")
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr == ("wattchecker-client: error: --channel only applies to a btwattch1 (RFCOMM); an "
                             "RS-BTWATTCH2 is reached over Bluetooth LE by its MAC\n")


# --- identify (0x3E): blink the LED -----------------------------------------------------------------


def test_identify_sends_0x3e_byte_exact_and_the_simulated_meter_answers(meter_link):
    assert btwattch2.identify_request() == bytes.fromhex("AA 00 05 3E 01 02 02 0F 8E")
    meter, link = meter_link
    assert MeterSession(link, FakeClock(T0), model="btwattch2").identify() is True
    assert meter.requests == [bytes.fromhex("3E 01 02 02 0F")] and meter.identified == 1
    assert meter.relay_writes == []  # identify never touches the relay


def test_switch_identify_blinks_the_plug(simulator):
    sim = simulator("--model", "btwattch2")
    (address,) = sim.addresses
    result = run_cli("switch", address, "identify", "--model", "btwattch2")
    assert (result.returncode, result.stdout) == (0, f"{address}: LED blinking\n"), result.stderr
    assert "identify 3e 01 02 02 0f: LED blinking" in sim.log()
