"""Opt-in: the installed unit under a real systemd, booted in systemd-nspawn (about 15 s).

Runs when WATTCHECKER_NSPAWN=1 and systemd-nspawn exists (apt-get install
systemd-container); skips otherwise. The container boots this machine's own
/usr with an empty, volatile /etc; the install, its config and data folder are
bound in. A probe unit records what systemd says of the service, stops it and
powers the container off.

Twice (about 30 s each, 35 s both with -n 2): with no NTP client, and with
Debian's chrony package (fetched with ``apt-get download``, unpacked, its
binaries, unit and an offline config bound in; run with -x, as a container may
not set the clock). Both are an offline boot whose clock lags a right meter by
an hour: the service must ask timedate1 (ProtectClock=yes refuses adjtimex),
hear "not synchronised", and keep the meter's time.
"""

from __future__ import annotations

import datetime as dt
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


AHEAD = 3600  # the meter's clock is this far ahead of the container's: a right meter, a host clock that lags
CHRONY_CONF = """\
# Offline: the one server is a loopback port nobody answers on (tests talk to 127.0.0.1 only).
server 127.0.0.1 port 12323 iburst
driftfile /var/lib/chrony/chrony.drift
makestep 1 3
"""
# Debian's own chrony.service, run without clock control (-x): a container has no CAP_SYS_TIME, and
# chronyd must not touch the host's clock.
CHRONY_DROPIN = """\
[Unit]
ConditionCapability=
[Service]
ExecStart=
ExecStart=!/opt/chrony/chronyd -x $DAEMON_OPTS
"""
CHRONY_PROBE = ("systemctl show chrony -p ActiveState --value > /opt/wattchecker-client/log/chrony.txt; "
                "/opt/chrony/chronyc -n tracking >> /opt/wattchecker-client/log/chrony.txt 2>&1; ")


@pytest.fixture(scope="module")
def chrony_package(tmp_path_factory) -> Path:
    """Debian's chrony package, unpacked (``apt-get download``: nothing is installed on this machine)."""
    folder = tmp_path_factory.mktemp("chrony")
    got = subprocess.run(["apt-get", "download", "chrony"], cwd=folder, capture_output=True, text=True, timeout=300)
    debs = list(folder.glob("chrony_*.deb"))
    if got.returncode != 0 or not debs:
        pytest.skip(f"apt-get download chrony failed: {got.stderr.strip()[-300:]}")
    subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(folder / "root")], check=True, timeout=60)
    return folder / "root"


def boot(tmp_path: Path, binds=(), wants=(), probe_before: str = "", users=()) -> Path:
    """Install the service (a simulated meter AHEAD s ahead), boot the container, return the install's folder."""
    root = tmp_path / "root"
    install(root, "--address", "sim://")
    target = root / PREFIX.lstrip("/")
    config = target / "config.yaml"
    config.write_text(config.read_text().replace("data_buffer_size: 180", "data_buffer_size: 2")
                      .replace('"sim://"', f'"sim://?clock_offset={AHEAD}"'))
    os.chown(target / "log", UID, UID)
    passwd, group = tmp_path / "passwd", tmp_path / "group"
    users = [("wattchecker", UID, PREFIX), *users]  # (name, uid and gid, home)
    passwd.write_text(Path("/etc/passwd").read_text()
                      + "".join(f"{name}:x:{uid}:{uid}::{home}:/usr/sbin/nologin\n" for name, uid, home in users))
    group.write_text(Path("/etc/group").read_text() + "".join(f"{name}:x:{uid}:\n" for name, uid, _ in users))
    # A 3 s watchdog: without a ping every 1.5 s systemd would kill and restart it.
    dropin = tmp_path / "watchdog.conf"
    dropin.write_text("[Service]\nWatchdogSec=3\n")
    probe = tmp_path / "probe.service"
    probe.write_text(PROBE.replace("sleep 12; \\\n", "sleep 12; \\\n  " + probe_before + "\\\n") if probe_before
                     else PROBE)
    unit = root / "etc/systemd/system/wattchecker_client.service"
    boot = subprocess.run(
        [
            "systemd-nspawn", "-D", "/", "--volatile=yes", "--register=no", "--keep-unit", "--quiet",
            f"--bind={target}:{PREFIX}",
            f"--bind-ro={passwd}:/etc/passwd", f"--bind-ro={group}:/etc/group",
            f"--bind-ro={unit}:/etc/systemd/system/wattchecker_client.service",
            f"--bind-ro={dropin}:/etc/systemd/system/wattchecker_client.service.d/watchdog.conf",
            f"--bind-ro={probe}:/etc/systemd/system/probe.service", *binds,
            "-b", "systemd.firstboot=off", "systemd.wants=wattchecker_client.service", "systemd.wants=probe.service",
            *(f"systemd.wants={unit_}" for unit_ in wants),
        ],
        capture_output=True, text=True, timeout=180, cwd=tmp_path,
    )
    assert (target / "log" / "probe.txt").exists(), boot.stdout[-3000:] + boot.stderr[-3000:]
    return target


def probed(target: Path) -> dict:
    return dict(line.split("=", 1) for line in (target / "log" / "probe.txt").read_text().splitlines())


def assert_the_meter_kept_its_time(target: Path) -> None:
    """An offline boot, the host clock (here: the container's) an hour behind a right meter: no set-back."""
    booted = (target / "log" / "probe.txt").stat().st_mtime - 30  # the boot took far less than 30 s
    rows = (target / "log" / "wattchecker-data.csv").read_text().splitlines()
    assert len(rows) >= 8
    stamps = [dt.datetime.strptime(row.split(",", 1)[0], "%Y-%m-%d %H:%M:%S") for row in rows]
    host = dt.datetime.fromtimestamp(booted, dt.timezone.utc).replace(tzinfo=None)
    assert all(stamp > host + dt.timedelta(seconds=AHEAD - 60) for stamp in stamps), (host, stamps[:3])
    state = probed(target)
    assert state["StatusText"].startswith(
        "reading wattchecker at sim://?clock_offset=3600; clock: the meter's (the system clock is not synchronised "
        "and may lag; a meter behind it is set forward, never back); the system clock is not synchronised yet "
        "(a warning if it is not within 180 s)"), state
    log = (target / "log" / "wattchecker-client.log").read_text()
    assert "org.freedesktop.timedate1 says whether the system clock is synchronised" in log  # ProtectClock=yes


@pytest.mark.process
def test_the_unit_runs_under_real_systemd_with_notify_and_watchdog_and_nothing_to_sync_the_clock(tmp_path):
    nspawn_works()
    target = boot(tmp_path)
    state = probed(target)
    assert state["ActiveState"] == "active" and state["SubState"] == "running", state
    assert state["WatchdogUSec"] == "3s"
    assert state["NRestarts"] == "0"  # the watchdog was fed for 12 s
    assert state["Result"] == "success" and state["ExecMainStatus"] == "0"  # SIGTERM: clean exit
    assert (target / "log" / "wattchecker-data.csv").stat().st_uid == UID  # ran as the service user
    # ProtectClock=yes refuses adjtimex; no NTP client: timedate1 (bus-activated) says not synchronised.
    assert_the_meter_kept_its_time(target)


@pytest.mark.process
def test_with_chrony_an_offline_boot_with_a_lagging_clock_does_not_set_the_meter_back(tmp_path, chrony_package):
    nspawn_works()
    conf, chrony_dropin = tmp_path / "chrony.conf", tmp_path / "chrony-x.conf"
    conf.write_text(CHRONY_CONF)
    chrony_dropin.write_text(CHRONY_DROPIN)
    binds = [f"--bind-ro={chrony_package / 'usr/sbin/chronyd'}:/opt/chrony/chronyd",
             f"--bind-ro={chrony_package / 'usr/bin/chronyc'}:/opt/chrony/chronyc",
             f"--bind-ro={conf}:/etc/chrony/chrony.conf",
             f"--bind-ro={chrony_package / 'lib/systemd/system/chrony.service'}:/etc/systemd/system/chrony.service",
             f"--bind-ro={chrony_dropin}:/etc/systemd/system/chrony.service.d/no-clock-control.conf"]
    target = boot(tmp_path, binds, wants=["chrony.service"], probe_before=CHRONY_PROBE,
                  users=[("_chrony", UID + 1, "/var/lib/chrony")])
    state = probed(target)
    assert state["ActiveState"] == "active" and state["NRestarts"] == "0", state
    chrony = (target / "log" / "chrony.txt").read_text()
    assert chrony.startswith("active\n") and "Leap status     : Not synchronised" in chrony, chrony
    assert_the_meter_kept_its_time(target)
