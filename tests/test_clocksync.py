"""Who says the system clock is synchronised: the rule as a table, the bus client against a real dbus-daemon
with a stand-in timedate1, and a process whose adjtimex is refused as under ProtectClock=yes."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys

import pytest

from wattchecker_client import clocksync
from wattchecker_client.clocksync import KERNEL, NOBODY, TIMEDATED, TIMESYNCD, SyncAnswer, SyncCheck, decide
from wattchecker_client.sysbus import BusError, get_property, method_call, parse_message, unix_socket_path

from .conftest import ROOT
from .test_timesync import REFUSE_ADJTIMEX
from .timedate1 import timedate1_on_a_bus

# (kernel, timedate1, timesyncd): None where that one cannot tell -> (synchronised, who said so, who was asked)
CASES = {
    (True, None, None): (True, KERNEL, [KERNEL]),
    (False, True, True): (False, KERNEL, [KERNEL]),  # the kernel knows best when it may be asked
    (None, True, None): (True, TIMEDATED, [KERNEL, TIMEDATED]),  # ProtectClock=yes, chrony or ntpd
    (None, False, True): (False, TIMEDATED, [KERNEL, TIMEDATED]),  # timedated asks the kernel itself
    (None, None, True): (True, TIMESYNCD, [KERNEL, TIMEDATED, TIMESYNCD]),  # no bus, timesyncd synchronised
    (None, None, False): (False, TIMESYNCD, [KERNEL, TIMEDATED, TIMESYNCD]),
    (None, None, None): (False, NOBODY, [KERNEL, TIMEDATED, TIMESYNCD]),  # nobody can tell: not synchronised
}


@pytest.mark.parametrize("answers, expected", CASES.items(), ids=[str(k) for k in CASES])
def test_the_first_source_that_can_tell_decides(answers, expected):
    asked = []

    def source(name, answer):
        return name, lambda: asked.append(name) or answer

    got = decide([source(KERNEL, answers[0]), source(TIMEDATED, answers[1]), source(TIMESYNCD, answers[2])])
    assert (got.synchronised, got.source, asked) == expected


def test_the_check_asks_at_most_every_ten_seconds_and_follows_a_change(caplog):
    answers = [None, False]
    asked = []
    check = SyncCheck([(TIMEDATED, lambda: asked.append(1) or answers[len(asked) - 1 if len(asked) <= 2 else 1])],
                      every=10.0)
    caplog.set_level("INFO", logger="wattchecker_client.clocksync")
    assert [check.synchronised(t) for t in (0.0, 1.0, 9.9)] == [False] * 3
    assert len(asked) == 1
    answers[1] = True
    assert check.synchronised(10.0) is True and len(asked) == 2
    assert "neither org.freedesktop.timedate1" in caplog.text  # nobody, then timedate1: each told once
    assert caplog.text.count("org.freedesktop.timedate1 says whether the system clock is synchronised") == 1


def test_once_synchronised_the_check_asks_every_five_minutes():
    asked = []
    check = SyncCheck([(TIMEDATED, lambda: asked.append(1) or True)], every=10.0, every_synchronised=300.0)
    assert all(check.synchronised(t) for t in (0.0, 10.0, 299.0))
    assert len(asked) == 1
    assert check.synchronised(300.0) and len(asked) == 2


def test_a_check_where_the_kernel_answers_logs_nothing(caplog):
    caplog.set_level("DEBUG", logger="wattchecker_client.clocksync")
    assert SyncCheck([(KERNEL, lambda: True)]).synchronised(0.0) is True
    assert caplog.text == ""


# --- the bus client ------------------------------------------------------------------------------


def test_a_method_call_reads_back_as_written():
    message = method_call(7, "org.freedesktop.timedate1", "/org/freedesktop/timedate1",
                          "org.freedesktop.DBus.Properties", "Get", "ss", ("org.freedesktop.timedate1", "NTP"))
    kind, fields, body, order = parse_message(message)
    assert (kind, order) == (1, "<")
    assert fields == {1: "/org/freedesktop/timedate1", 2: "org.freedesktop.DBus.Properties", 3: "Get",
                      6: "org.freedesktop.timedate1", 8: "ss"}
    assert body == b"\x19\0\0\0org.freedesktop.timedate1\0\0\0\x03\0\0\0NTP\0"


@pytest.mark.parametrize("address, path", [
    ("unix:path=/run/dbus/system_bus_socket", "/run/dbus/system_bus_socket"),
    ("unix:abstract=/tmp/dbus-x,guid=01", "\0/tmp/dbus-x"),
    ("tcp:host=h,port=1;unix:path=/a%20b", "/a b"),
])
def test_bus_addresses(address, path):
    assert unix_socket_path(address) == path


def test_a_bus_address_without_a_unix_socket_is_a_bus_error():
    with pytest.raises(BusError, match="no unix socket"):
        unix_socket_path("tcp:host=localhost,port=1")


@pytest.mark.process
@pytest.mark.parametrize("synchronised", [True, False])
def test_timedate1s_answer_is_read_from_a_real_bus(tmp_path, synchronised):
    with timedate1_on_a_bus(tmp_path, synchronised) as timedate1:
        assert clocksync.timedated_synchronised(timedate1.address) is synchronised
        assert get_property(timedate1.address, "org.freedesktop.timedate1", "/org/freedesktop/timedate1",
                            "org.freedesktop.timedate1", "Timezone", 5) == "Asia/Tokyo"
        assert timedate1.gets >= 1  # dbus-fast may read a property more than once per Get


@pytest.mark.process
def test_no_timedate1_on_the_bus_no_bus_and_a_bus_that_never_answers_cannot_tell(tmp_path):
    from .bluez import bus_without_bluez

    with bus_without_bluez(tmp_path) as address:
        assert clocksync.timedated_synchronised(address) is None  # ServiceUnknown
        with pytest.raises(BusError, match="ServiceUnknown"):
            get_property(address, "org.freedesktop.timedate1", "/org/freedesktop/timedate1",
                         "org.freedesktop.timedate1", "NTPSynchronized", 5)
    assert clocksync.timedated_synchronised(f"unix:path={tmp_path / 'none'}") is None
    mute = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    mute.bind(str(tmp_path / "mute"))
    mute.listen(1)  # takes the connection, never says a word
    try:
        assert clocksync.timedated_synchronised(f"unix:path={tmp_path / 'mute'}", timeout=0.5) is None
    finally:
        mute.close()


# --- under a seccomp filter that refuses adjtimex, as ProtectClock=yes does -----------------------

REFUSED_THEN_ASK = REFUSE_ADJTIMEX.split("print(clocksync.kernel_clock())")[0] + """
from wattchecker_client import clocksync
print(clocksync.kernel_clock(), clock.Clock().synchronised())
"""


@pytest.mark.process
@pytest.mark.skipif(platform.machine() != "x86_64", reason="the test's seccomp filter is written for x86_64")
@pytest.mark.parametrize("timedate1, expected", [(True, "True"), (False, "False"), (None, "False")])
def test_where_adjtimex_is_refused_timedate1_decides_and_nobody_means_not_synchronised(tmp_path, timedate1,
                                                                                       expected):
    def run(address: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", REFUSED_THEN_ASK], capture_output=True, text=True, timeout=30,
                              cwd=ROOT, env={**os.environ, "DBUS_SYSTEM_BUS_ADDRESS": address})

    if timedate1 is None:  # no bus; and timesyncd's folder is not there on this machine
        assert not os.path.isdir(clocksync.TIMESYNCD_RUN_DIR)
        result = run(f"unix:path={tmp_path / 'no-bus'}")
    else:
        with timedate1_on_a_bus(tmp_path, timedate1) as stand_in:
            result = run(stand_in.address)
            assert stand_in.gets >= 1  # it was asked
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["None", expected]
    if timedate1 is None:
        assert "the system clock counts as not synchronised, and the wait for it (time_sync_wait) runs its course" \
            in result.stderr
