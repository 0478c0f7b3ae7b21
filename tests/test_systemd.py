"""The unit file (systemd-analyze verify and security) and install.sh into a temporary root."""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import os
import sys
from pathlib import Path
from typing import Iterator, Optional, Tuple

import pytest

from .conftest import ROOT

UNIT = ROOT / "wattchecker_client.service"
PREFIX = "/opt/wattchecker-client"
needs_analyze = pytest.mark.skipif(not shutil.which("systemd-analyze"), reason="systemd-analyze not installed")


def system_python() -> str:
    """The Python a Pi would use: /usr/bin/python3 when it can make a venv, else this one."""
    probe = subprocess.run(["/usr/bin/python3", "-c", "import ensurepip, venv"], capture_output=True)
    return "/usr/bin/python3" if probe.returncode == 0 else sys.executable


def install(root: Path, *args: str, env: Optional[dict] = None) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", str(ROOT / "install.sh"), "--root", str(root), "--python", system_python(), *args],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """An install into a temporary root, with a systemctl on PATH that notes any call: --root makes none."""
    root = tmp_path_factory.mktemp("root")
    bin_dir = tmp_path_factory.mktemp("bin")
    tripwire = bin_dir / "systemctl"
    tripwire.write_text(f"#!/bin/sh\necho \"$@\" >> {bin_dir / 'called'}\n")
    tripwire.chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    first = install(root, "--address", "00:0C:BF:12:34:56", "--channel", "3", env=env)
    assert not (bin_dir / "called").exists(), (bin_dir / "called").read_text()
    return root, first


def test_install_lays_out_a_working_service(installed):
    root, result = installed
    target = root / PREFIX.lstrip("/")
    config = (target / "config.yaml").read_text()
    assert 'address: "00:0C:BF:12:34:56"' in config and "\n  channel: 3\n" in config
    assert (target / "log").is_dir()
    unit = (root / "etc/systemd/system/wattchecker_client.service").read_text()
    assert f"ExecStart={PREFIX}/venv/bin/python -m wattchecker_client run --config {PREFIX}/config.yaml" in unit
    check = subprocess.run(
        [str(target / "venv/bin/wattchecker-client"), "check-config", "--config", str(target / "config.yaml")],
        capture_output=True, text=True,
    )
    assert check.returncode == 0, check.stderr
    assert "meters: wattchecker at 00:0C:BF:12:34:56 channel 3" in check.stdout


def test_install_into_a_root_says_it_writes_inside_it(installed):
    root, result = installed
    assert f"installing into {root}{PREFIX}\n" in result.stdout
    assert f"writing {root}{PREFIX}/config.yaml from the sample\n" in result.stdout


@pytest.mark.process
def test_install_help_is_the_header_without_the_code():
    result = subprocess.run(["bash", str(ROOT / "install.sh"), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stderr == ""
    assert result.stdout.startswith("Turn a fresh Raspberry Pi OS")
    assert result.stdout.endswith("  --no-start           install and enable, but do not start now\n")
    assert "set -euo" not in result.stdout and "#" not in result.stdout


def test_install_caps_the_wait_for_time_sync_and_says_what_to_enable(installed):
    """--root cannot tell the time service nor run systemctl: it writes the cap and says the rest."""
    root, result = installed
    dropin = root / "etc/systemd/system/systemd-time-wait-sync.service.d/wattchecker-client.conf"
    assert "[Service]\nTimeoutStartSec=90s\n" in dropin.read_text()
    assert "systemctl enable systemd-time-wait-sync.service" in result.stdout
    unit = (root / "etc/systemd/system/wattchecker_client.service").read_text()
    assert "\nWants=bluetooth.target time-sync.target\n" in unit
    assert re.search(r"\nAfter=.*\btime-sync\.target\b", unit)


def test_install_again_keeps_the_users_config_and_data(installed):
    root, _ = installed
    target = root / PREFIX.lstrip("/")
    config = target / "config.yaml"
    edited = config.read_text().replace("data_buffer_size: 180", "data_buffer_size: 60")
    config.write_text(edited)
    (target / "log" / "wattchecker-data.csv").write_text("2019-09-07 09:24:30,102.93,2311.75,181.38\n")
    result = install(root, "--address", "00:0C:BF:99:99:99")
    assert f"keeping the existing {config}\n" in result.stdout  # inside --root, where it is
    assert config.read_text() == edited
    assert (target / "log" / "wattchecker-data.csv").read_text().startswith("2019-09-07 09:24:30")


@contextlib.contextmanager
def fresh_config(installed, *args: str) -> Iterator[Tuple[str, str]]:
    """install.sh run again with no config.yaml, so it writes one from ``args``: (its text, check-config's output).
    The fixture's config is put back after."""
    root, _ = installed
    target = root / PREFIX.lstrip("/")
    kept = (target / "config.yaml").read_text()
    (target / "config.yaml").unlink()
    try:
        install(root, *args)
        check = subprocess.run(
            [str(target / "venv/bin/wattchecker-client"), "check-config", "--config", str(target / "config.yaml")],
            capture_output=True, text=True,
        )
        assert check.returncode == 0, check.stderr
        yield (target / "config.yaml").read_text(), check.stdout
    finally:
        (target / "config.yaml").write_text(kept)


def test_install_writes_a_config_for_an_rs_btwattch2(installed):
    """--model btwattch2: the sample loses the keys only a BTWATTCH1 has, and check-config passes."""
    with fresh_config(installed, "--address", "F0:12:34:56:78:9A", "--model", "btwattch2") as (config, checked):
        assert 'address: "F0:12:34:56:78:9A"' in config and "\n  model: btwattch2\n" in config
        assert "\n  channel:" not in config and "\n  start_argument:" not in config
        assert "meters: wattchecker at F0:12:34:56:78:9A" in checked


@pytest.mark.parametrize("address", ["sim://", "tcp://127.0.0.1:5555"])
def test_install_takes_the_simulator_and_tcp_addresses(installed, address):
    """The nspawn test installs with sim://; a bridge user with tcp://HOST:PORT."""
    with fresh_config(installed, "--address", address) as (config, checked):
        assert f'address: "{address}"' in config and f"at {address}" in checked


@pytest.mark.process
def test_install_refuses_bad_options(tmp_path):
    result = subprocess.run(["bash", str(ROOT / "install.sh"), "--root", str(tmp_path), "--bogus"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "unknown option --bogus" in result.stderr


@pytest.mark.parametrize("args, message", [
    (["--address", "00:0C:BF:12:34:5G"], "--address 00:0C:BF:12:34:5G: not a Bluetooth MAC"),
    (["--address", 'x"|s|/|;e id'], "--address "),
    (["--address", "/dev/rfcomm0; rm -rf /"], "not a Bluetooth MAC (00:0C:BF:12:34:56), a tty"),
    (["--address", "tcp://host:1|e"], "tcp://HOST:PORT or sim://"),
    (["--address", "sim://x"], "--address sim://x: not a Bluetooth MAC"),
    (["--channel", "31"], "--channel 31: must be a number from 1 to 30"),
    (["--channel", "6|e"], "--channel 6\\|e: must be a number from 1 to 30"),
    (["--model", "btwattch3"], "--model btwattch3: must be btwattch1 or btwattch2"),
    (["--prefix", "/opt/a|b"], "--prefix must be an absolute path"),
])
@pytest.mark.process
def test_install_refuses_a_bad_value_before_touching_anything(tmp_path, args, message):
    root = tmp_path / "root"
    root.mkdir()
    result = subprocess.run(["bash", str(ROOT / "install.sh"), "--root", str(root), *args],
                            capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.startswith("install.sh: --") and message in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert list(root.iterdir()) == []


@needs_analyze
def test_unit_verifies(installed, tmp_path):
    """systemd-analyze verify, with the unit's paths pointed at the temporary install."""
    root, _ = installed
    unit = (root / "etc/systemd/system/wattchecker_client.service").read_text()
    checked = tmp_path / "wattchecker_client.service"
    checked.write_text(unit.replace(PREFIX, str(root / PREFIX.lstrip("/"))))
    result = subprocess.run(["systemd-analyze", "verify", str(checked)], capture_output=True, text=True)
    problems = [l for l in result.stderr.splitlines() if "wattchecker_client.service" in l]
    assert result.returncode == 0 and not problems, result.stderr


@pytest.mark.process
@needs_analyze
def test_unit_is_hardened(tmp_path):
    checked = tmp_path / "wattchecker_client.service"
    shutil.copy(UNIT, checked)
    result = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", str(checked)], capture_output=True, text=True
    )
    match = re.search(r"Overall exposure level for wattchecker_client.service: (\d+\.\d+)", result.stdout)
    assert match, result.stdout + result.stderr
    assert float(match.group(1)) <= 1.9
    for setting in ("NoNewPrivileges=yes", "ProtectSystem=strict", "ReadWritePaths=/opt/wattchecker-client/log",
                    "Type=notify", "WatchdogSec=", "Restart=always", "User=wattchecker", "TasksMax=128",
                    "MemoryMax=256M"):
        assert setting in UNIT.read_text()
    assert re.search(r"RestrictAddressFamilies=.*AF_BLUETOOTH", UNIT.read_text())
