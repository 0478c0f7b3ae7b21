"""What outlives the process (saved.py): each file read once, each change written whole, bad files cost one line."""

from __future__ import annotations

import json
import logging

from wattchecker_client.saved import ENERGY_FILE, ENERGY_VERSION, RELAY_FILE, SavedMeters, load_meters, saved_energy


def relay_file(tmp_path) -> SavedMeters:
    return SavedMeters(tmp_path / RELAY_FILE, "no relay is latched", "the relay's latch would not survive a restart")


def test_an_entry_saved_is_read_back_by_the_next_run_and_the_others_are_kept(tmp_path):
    first = relay_file(tmp_path)
    first.put("heater", {"overloaded": True, "last_set": False})
    first.put("fridge", {"overloaded": False, "last_set": True, "on_since": 1796563606.0})
    first.put("heater", {"overloaded": False, "last_set": True})
    assert json.loads((tmp_path / RELAY_FILE).read_text()) == {"meters": {
        "fridge": {"overloaded": False, "last_set": True, "on_since": 1796563606.0},
        "heater": {"overloaded": False, "last_set": True}}}
    again = relay_file(tmp_path)
    assert again.get("fridge") == {"overloaded": False, "last_set": True, "on_since": 1796563606.0}
    assert again.get("nobody") == {}
    assert [p.name for p in tmp_path.iterdir()] == [RELAY_FILE]  # no temporary file left behind


def test_a_damaged_file_is_one_warning_and_a_first_run(tmp_path, caplog):
    (tmp_path / RELAY_FILE).write_text('{"meters": {"heater": {"overloaded": tr')
    assert relay_file(tmp_path).get("heater") == {}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line.startswith(f"{tmp_path / RELAY_FILE}: unreadable (") and line.endswith("); no relay is latched")
    (tmp_path / RELAY_FILE).write_text('{"meters": ["heater"]}')
    assert load_meters(tmp_path / RELAY_FILE, "x") is None
    assert load_meters(tmp_path / "absent.json", "x") is None


def test_a_save_that_fails_is_one_error_line_and_the_service_carries_on(tmp_path, caplog):
    (tmp_path / RELAY_FILE).mkdir()  # a folder where the file should be: every write fails
    saved = relay_file(tmp_path)
    saved.put("heater", {"overloaded": True, "last_set": False})
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == ["heater: cannot save relay.json (Is a directory): the relay's latch would not survive a restart"]
    assert saved.get("heater") == {"overloaded": True, "last_set": False}  # this run still knows it


def test_the_energy_file_is_read_once_and_handed_to_the_live_state(tmp_path, caplog):
    """The daemon reads energy.json at start and hands it on; the live state neither opens nor names it itself."""
    from wattchecker_client.clock import FakeClock
    from wattchecker_client.live import Accumulator, LiveState

    entry = {"stem": "wattchecker-data", "credited_joules": 7200.0, "last": [1796563606, 100.0],
             "floor_joules": 7200.0}
    (tmp_path / ENERGY_FILE).write_text(json.dumps({"version": ENERGY_VERSION, "meters": {"m": entry}}))
    handed = saved_energy(tmp_path)
    (tmp_path / ENERGY_FILE).unlink()  # read once: what was read at start is what the live state restores
    live = LiveState(FakeClock(), tmp_path / "data", {"m": "wattchecker-data"}, energy_file=handed)
    live.restore({"m": None})
    shown = live.snapshot()["m"].energy_joules
    assert shown == Accumulator.from_json(entry).joules > 7200.0  # its last row's second on top
    live.save(force=True)  # written through the handed file, where the daemon said
    assert json.loads((tmp_path / ENERGY_FILE).read_text())["meters"]["m"] == {**entry, "floor_joules": shown}
    assert not (tmp_path / "data" / ENERGY_FILE).exists()


def test_an_energy_file_of_another_version_is_one_warning_and_a_count_from_the_files(tmp_path, caplog):
    (tmp_path / ENERGY_FILE).write_text('{"version": 2, "meters": {"m": {}}}')
    assert saved_energy(tmp_path).entries() == {}
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == f"{tmp_path / ENERGY_FILE}: unreadable (not a version 1 file); counting energy from the data files"


def test_an_energy_file_that_cannot_be_saved_is_one_error_the_shown_energy_stays_put_and_catches_up(tmp_path, caplog):
    """energy.json is saved before the energy is shown: while it cannot be, what was shown stays."""
    from wattchecker_client.clock import FakeClock
    from wattchecker_client.live import LiveState

    live = LiveState(FakeClock(), tmp_path, {"m": "wattchecker-data"})
    live.restore({"m": None})  # nothing on disk: 0 J, saved
    live.durable("m", [(1796563600, 100.0), (1796563601, 100.0)])
    (tmp_path / ENERGY_FILE).unlink()
    (tmp_path / ENERGY_FILE).mkdir()  # a folder where the file should be: every save fails
    live.save(force=True)
    live.save(force=True)
    assert live.snapshot()["m"].energy_joules == 0.0 and live.stats.checkpoint_errors == 2
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [f"cannot save {tmp_path / ENERGY_FILE} (Is a directory); energy shown stays put until it can"]
    (tmp_path / ENERGY_FILE).rmdir()
    live.save(force=True)
    assert live.snapshot()["m"].energy_joules == 200.0
    assert f"{tmp_path / ENERGY_FILE} saved again" in caplog.text
    assert json.loads((tmp_path / ENERGY_FILE).read_text())["version"] == ENERGY_VERSION
