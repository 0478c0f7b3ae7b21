"""Opt-in: the installed unit under a real systemd, booted in systemd-nspawn (about 15 s).

Runs when WATTCHECKER_NSPAWN=1 and systemd-nspawn exists (apt-get install
systemd-container); skips otherwise. The container boots this machine's own
/usr with an empty, volatile /etc; the install, its config and data folder are
bound in. A probe unit records what systemd says of the service, stops it and
powers the container off.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from .test_systemd import PREFIX, install

pytestmark = pytest.mark.skipif(
    os.environ.get("WATTCHECKER_NSPAWN") != "1" or not shutil.which("systemd-nspawn") or os.geteuid() != 0,
    reason="opt-in: set WATTCHECKER_NSPAWN=1, as root, with systemd-nspawn installed",
)

UID = 64990  # the container's `wattchecker` user; unused on the host
PROBE = """\
[Unit]
Description=probe the wattchecker service, then power off
After=wattchecker_client.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'sleep 12; \\
  systemctl show wattchecker_client -p ActiveState -p SubState -p StatusText -p NRestarts -p WatchdogUSec \\
    > /opt/wattchecker-client/log/probe.txt; \\
  systemctl stop wattchecker_client; \\
  systemctl show wattchecker_client -p Result -p ExecMainStatus >> /opt/wattchecker-client/log/probe.txt; \\
  systemctl poweroff'
"""


def nspawn_scratch() -> None:
    """nspawn cleans up under /run/systemd/nspawn and insists that it is a tmpfs."""
    path = Path("/run/systemd/nspawn")
    path.mkdir(parents=True, exist_ok=True)
    if subprocess.run(["mountpoint", "-q", str(path)]).returncode != 0:
        subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(path)], check=True)


def nspawn_works() -> None:
    nspawn_scratch()
    probe = subprocess.run(
        ["systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "--quiet", "--pipe",
         "/bin/true"], capture_output=True, text=True, timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(f"systemd-nspawn cannot start a container here: {probe.stderr.strip()[-300:]}")


@pytest.mark.process
def test_the_unit_runs_under_real_systemd_with_notify_and_watchdog(tmp_path):
    nspawn_works()
    root = tmp_path / "root"
    install(root, "--address", "sim://")
    target = root / PREFIX.lstrip("/")
    config = target / "config.yaml"
    config.write_text(config.read_text().replace("data_buffer_size: 180", "data_buffer_size: 2"))
    os.chown(target / "log", UID, UID)
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    passwd.write_text(Path("/etc/passwd").read_text() + f"wattchecker:x:{UID}:{UID}::{PREFIX}:/usr/sbin/nologin\n")
    group.write_text(Path("/etc/group").read_text() + f"wattchecker:x:{UID}:\n")
    # A 3 s watchdog: without a ping every 1.5 s systemd would kill and restart it.
    dropin = tmp_path / "watchdog.conf"
    dropin.write_text("[Service]\nWatchdogSec=3\n")
    probe = tmp_path / "probe.service"
    probe.write_text(PROBE)
    unit = root / "etc/systemd/system/wattchecker_client.service"
    boot = subprocess.run(
        [
            "systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "--quiet",
            f"--bind={target}:{PREFIX}",
            f"--bind-ro={passwd}:/etc/passwd", f"--bind-ro={group}:/etc/group",
            f"--bind-ro={unit}:/etc/systemd/system/wattchecker_client.service",
            f"--bind-ro={dropin}:/etc/systemd/system/wattchecker_client.service.d/watchdog.conf",
            f"--bind-ro={probe}:/etc/systemd/system/probe.service",
            "-b", "systemd.firstboot=off", "systemd.wants=wattchecker_client.service", "systemd.wants=probe.service",
        ],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    probe_file = target / "log" / "probe.txt"
    assert probe_file.exists(), boot.stdout[-3000:] + boot.stderr[-3000:]
    state = dict(line.split("=", 1) for line in probe_file.read_text().splitlines())
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    # ProtectClock=yes refuses adjtimex and no timesyncd runs in the container: the clock counts as synchronised.
    assert state["StatusText"] == "reading wattchecker at sim://; clock: the system's (synchronised)"
    assert state["WatchdogUSec"] == "3s"
    assert state["NRestarts"] == "0"  # the watchdog was fed for 12 s
    assert state["Result"] == "success" and state["ExecMainStatus"] == "0"  # SIGTERM: clean exit
    rows = (target / "log" / "wattchecker-data.csv").read_text().splitlines()
    assert len(rows) >= 8
    assert (target / "log" / "wattchecker-data.csv").stat().st_uid == UID  # ran as the service user
