"""MQTT's hardening with real parts: a password file others can read, and a reconnect that cannot get
a thread (a real pids cgroup at its limit, as the unit's TasksMax makes it) and recovers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import run_cli, wait_for, write_config
from tests.test_mqtt import STATE, brokers, subscribers  # noqa: F401 (fixtures)

PIDS = Path("/sys/fs/cgroup/pids")


@pytest.mark.process
def test_a_password_file_others_can_read_warns_like_the_bigquery_key(tmp_path):
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://")
    password = tmp_path / "mqtt-password"
    password.write_text("secret\n")
    password.chmod(0o666)
    config.write_text(config.read_text() + f"mqtt:\n  host: 127.0.0.1\n  username: me\n  password_file: {password}\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"wattchecker-client: warning: {password} is readable by other users (mode 666): chmod o-rwx it" in \
        result.stderr.splitlines()
    password.chmod(0o640)
    result = run_cli("check-config", "--config", str(config))
    assert "readable by other users" not in result.stderr


@pytest.fixture
def pids_cgroup():
    group = PIDS / f"wattchecker-test-{os.getpid()}"
    try:
        group.mkdir()
    except OSError:
        pytest.skip("needs a writable pids cgroup (cgroup v1 at /sys/fs/cgroup/pids, as root)")
    yield group
    (group / "pids.max").write_text("max")
    for pid in (group / "cgroup.procs").read_text().split():
        (PIDS / "cgroup.procs").write_text(pid)
    group.rmdir()


def test_a_reconnect_without_a_thread_is_retried_not_fatal(simulator, daemons, brokers, subscribers, tmp_path,
                                                            pids_cgroup):
    broker = brokers()
    sub = subscribers(broker.port)
    (address,) = simulator("--clock-speed", "1200").addresses
    config = write_config(tmp_path / "config.yaml", tmp_path / "data", address, log_level="DEBUG")
    config.write_text(config.read_text() + f"mqtt:\n  host: 127.0.0.1\n  port: {broker.port}\n  publish_interval: 1\n")
    daemon = daemons(config, tmp_path)
    wait_for(lambda: len(sub.matching(STATE)) >= 5, timeout=30, what="states")

    broker.stop()
    wait_for(lambda: "still cannot connect" in daemon.stderr(), timeout=30, what="a failed reconnect")
    # paho's thread has ended; the service may now have no more threads than it has.
    (pids_cgroup / "cgroup.procs").write_text(str(daemon.proc.pid))
    (pids_cgroup / "pids.max").write_text((pids_cgroup / "pids.current").read_text().strip())
    broker.start()
    wait_for(lambda: "cannot start its network thread" in daemon.stderr(), timeout=60,
             what="a connect whose network thread could not start")
    assert daemon.proc.poll() is None
    since = len(sub.matching(STATE))
    (pids_cgroup / "pids.max").write_text("max")
    wait_for(lambda: "mqtt: connected again" in daemon.stderr(), timeout=60, what="MQTT back once threads are")
    wait_for(lambda: len(sub.matching(STATE)) >= since + 5, timeout=30, what="states again")
    assert daemon.stop() == 0
    assert "Traceback" not in daemon.stderr()
