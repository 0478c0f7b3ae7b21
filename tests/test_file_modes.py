"""A manual run (no unit, so no UMask=0027) under the loosest umask still keeps its files from other users."""

from __future__ import annotations

import shlex
import stat
import subprocess

from tests.conftest import ROOT, cli, free_port, wait_for, write_config

OLD_HOUR_ROW = "2019-09-07 09:24:30,102.93,2311.75,181.38\n"


def test_data_log_and_energy_files_are_0640_after_a_manual_run_with_umask_0(tmp_path, simulator):
    sim = simulator()
    data = tmp_path / "data"
    data.mkdir()
    # A current file left by an earlier run with a row of a past hour: start-up closes and gzips it.
    (data / "wattchecker-data.csv").write_text(OLD_HOUR_ROW)
    (data / "wattchecker-data.csv").chmod(0o640)
    config = write_config(tmp_path / "config.yaml", data, sim.addresses[0], log_file="wattchecker-client.log")
    config.write_text(config.read_text() + f"http:\n  listen: 127.0.0.1:{free_port()}\n")  # energy is kept
    command = "umask 000; exec " + " ".join(shlex.quote(a) for a in cli("run", "--config", str(config)))
    with open(tmp_path / "daemon.err", "wb") as err:
        proc = subprocess.Popen(["sh", "-c", command], cwd=ROOT, stdout=err, stderr=err)
    try:
        csv = data / "wattchecker-data.csv"  # each flush writes it after the JSON: it may not exist yet
        wait_for(lambda: (data / "wattchecker-data.json").exists() and csv.exists() and csv.stat().st_size
                 > len(OLD_HOUR_ROW), 60, what="rows in both current files")
    finally:
        proc.terminate()
        assert proc.wait(30) == 0, (tmp_path / "daemon.err").read_text()
    modes = {path.name: stat.S_IMODE(path.stat().st_mode) for path in data.iterdir() if path.is_file()}
    expected = {"wattchecker-data.csv", "wattchecker-data.json", "wattchecker-data.csv.2019-09-07_09.gz",
                "energy.json", "wattchecker-client.log"}
    assert expected <= set(modes), sorted(modes)
    assert {name: oct(mode) for name, mode in modes.items() if mode != 0o640} == {}
