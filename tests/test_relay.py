"""The relay's desired state as a table of cases: facts in, what to write out (sans I/O, no clock)."""

from __future__ import annotations

import json

import pytest

from wattchecker_client.relay import RelayPolicy, RelaySettings


def run(policy: RelayPolicy, events):
    """Feed (time, event, args) in order; the writes the policy asked for, as (time, on, why), each acknowledged."""
    writes = []
    for now, event, *args in events:
        if event == "command":
            policy.command(args[0], now)
        elif event == "connect":
            policy.connected(now)
        elif event == "seen":  # (state, watts[, the meter's seconds]): by default they keep pace with the host's
            policy.seen(args[0], args[1], now, args[2] if len(args) > 2 else now)
        decision = policy.due(now)
        if decision.switch is not None:
            writes.append((now, decision.switch.on, decision.switch.why))
            policy.switched(decision.switch.on, now)
    return writes


def polls(start, end, state=True, watts=100.0, step=0.5):
    """A measurement every ``step`` seconds."""
    t = start
    out = []
    while t < end:
        out.append((t, "seen", state, watts))
        t += step
    return out


def test_a_flood_ends_in_the_last_state_with_one_switch_per_interval():
    policy = RelayPolicy(RelaySettings(min_interval=2.0))
    events = [(0.0, "seen", True, 100.0)]
    events += [(0.01 * i, "command", i % 2 == 0) for i in range(1, 200)]  # ends with ON... then OFF
    events += [(2.0, "command", False)] + [(2.0 + 0.25 * i, "seen", None, 100.0) for i in range(20)]
    writes = run(policy, events)
    assert [w[1] for w in writes] == [False, True, False][: len(writes)]
    assert writes[-1][1] is False and len(writes) <= 3
    assert all(b[0] - a[0] >= 2.0 for a, b in zip(writes, writes[1:]))


def test_a_command_for_the_state_it_is_in_writes_nothing():
    policy = RelayPolicy(RelaySettings())
    assert run(policy, [(0.0, "seen", False, 0.0), (1.0, "command", False), (1.5, "seen", False, 0.0)]) == []
    assert policy.wanted is None


def test_a_command_older_than_the_deadline_is_dropped():
    policy = RelayPolicy(RelaySettings(max_age=30.0))
    policy.seen(True, 100.0, 0.0, 0.0)
    policy.command(False, 1.0)
    decision = policy.due(31.5)  # the link came back 30.5 s later
    assert decision.switch is None and decision.dropped.on is False and policy.wanted is None
    policy.command(False, 40.0)
    assert policy.due(69.9).switch.on is False  # 29.9 s: still for now


@pytest.mark.parametrize("mode, last_set, state, expected", [
    ("keep", False, True, []),
    ("on", None, False, [True]),
    ("off", None, True, [False]),
    ("restore", False, True, [False]),
    ("restore", True, False, [True]),
    ("restore", None, True, []),  # nothing set yet: nothing to restore
])
def test_on_connect(mode, last_set, state, expected):
    policy = RelayPolicy(RelaySettings(on_connect=mode), last_set=last_set)
    writes = run(policy, [(0.0, "connect"), (0.1, "seen", state, 50.0 if state else 0.0)])
    assert [w[1] for w in writes] == expected


def test_on_connect_asks_the_meter_first_what_changed_while_the_link_was_down():
    policy = RelayPolicy(RelaySettings(on_connect="off"))
    assert run(policy, [(0.0, "connect"), (0.1, "seen", True, 50.0)]) == [(0.1, False, "on_connect")]
    # Switched on by its button while the link was down: the old "off" is not trusted.
    assert run(policy, [(10.0, "connect"), (10.1, "seen", True, 50.0)]) == [(10.1, False, "on_connect")]


def test_on_connect_leaves_a_waiting_command_alone():
    policy = RelayPolicy(RelaySettings(on_connect="off"))
    policy.command(True, 0.0)
    assert run(policy, [(5.0, "connect"), (5.1, "seen", False, 0.0)]) == [(5.0, True, "command")]


def test_over_power_trips_after_max_watts_for_latches_and_an_explicit_on_clears_it():
    policy = RelayPolicy(RelaySettings(max_watts=1500, max_watts_for=10, min_interval=2))
    events = polls(0, 5, watts=1000) + polls(5, 9, watts=1600) + [(9.0, "seen", True, 1000.0)]  # a short peak
    assert run(policy, events) == [] and not policy.overloaded
    writes = run(policy, polls(10, 22, watts=1600))
    assert writes == [(20.0, False, "overload")] and policy.overloaded
    # these polls still say "on" after the write (as the button would): its on-time counts from 20.5 again
    assert policy.memory == {"overloaded": True, "last_set": False, "on_since": 20.5}
    # Switched on behind its back while latched (the button): off again; on_connect: on cannot undo it.
    assert [w[1] for w in run(policy, [(30.0, "seen", True, 1000.0), (31.0, "connect")])] == [False]
    policy.settings = RelaySettings(on_connect="on", max_watts=1500, max_watts_for=10)
    assert run(policy, [(40.0, "connect"), (40.5, "seen", False, 0.0)]) == []
    assert run(policy, [(50.0, "command", True), (50.5, "seen", False, 0.0)]) == [(50.0, True, "command")]
    assert not policy.overloaded


def test_a_latch_read_back_after_a_restart_keeps_the_relay_off():
    policy = RelayPolicy(RelaySettings(max_watts=1500, on_connect="restore"), overloaded=True, last_set=True)
    assert [w[1] for w in run(policy, [(0.0, "connect"), (0.5, "seen", True, 10.0)])] == [False]


def test_auto_off_after_any_on():
    policy = RelayPolicy(RelaySettings(auto_off_after=60, min_interval=2))
    writes = run(policy, polls(0, 70, watts=10, step=1))
    assert writes == [(60, False, "auto_off_after")]
    # An ON by another path (the button, `switch on`): seen in a measurement, it goes off 60 s later.
    writes = run(policy, polls(100, 130, state=False, watts=0, step=1) + polls(130, 191, watts=10, step=1))
    assert writes == [(190, False, "auto_off_after")]
    # An ON the service wrote itself counts from the write.
    policy = RelayPolicy(RelaySettings(auto_off_after=60, min_interval=2))
    writes = run(policy, [(299, "seen", False, 0.0), (300, "command", True)] + polls(300.5, 370, watts=10, step=1))
    assert writes == [(300, True, "command"), (360.5, False, "auto_off_after")]


# --- the timers on the meter's evidence (issue 27) -------------------------------------------------------

def test_an_outage_between_two_readings_over_the_limit_never_trips_the_latch():
    policy = RelayPolicy(RelaySettings(max_watts=0.5, max_watts_for=20))
    events = [(0.0, "seen", True, 100.0), (25.0, "connect"), (25.1, "seen", True, 100.0)]
    assert run(policy, events) == [] and not policy.overloaded
    # Still over after the reconnect: it trips 20 s after that first reading, not after the first one.
    writes = run(policy, polls(25.6, 45.2, watts=100.0))
    assert writes == [(45.1, False, "overload")] and policy.overloaded


def test_readings_further_apart_than_two_polls_start_the_count_again():
    policy = RelayPolicy(RelaySettings(max_watts=0.5, max_watts_for=10), poll_interval=1.0)
    # One poll lost (2 s between two readings) is still one stretch; 3 s is a gap.
    assert run(policy, polls(0, 5, step=1) + polls(6, 9, step=1) + polls(12, 21, step=1)) == []
    assert run(policy, polls(21, 23, step=1)) == [(22, False, "overload")]  # 10 s after 12


def test_a_continuous_overload_trips_on_time_by_the_meters_seconds():
    policy = RelayPolicy(RelaySettings(max_watts=0.5, max_watts_for=20))
    writes = []
    state = True
    for k in range(30):  # the host's monotonic clock runs at twice the meter's: only the meter's counts
        policy.seen(state, 100.0 if state else 0.0, 2.0 * k, 1000.0 + k)
        decision = policy.due(2.0 * k)
        if decision.switch is not None:
            writes.append((1000 + k, decision.switch.why))
            policy.switched(decision.switch.on, 2.0 * k)
            state = decision.switch.on
    assert writes == [(1020, "overload")]


def test_a_dropped_command_changes_nothing():
    """A stale ON neither clears the latch nor lets on_connect: on switch the load back on."""
    policy = RelayPolicy(RelaySettings(max_watts=0.5, on_connect="on", max_age=30.0), overloaded=True, last_set=False)
    policy.seen(False, 0.0, 0.0, 0.0)
    policy.command(True, 1.0)
    assert policy.due(40.0).dropped.on is True
    assert policy.overloaded and policy.memory == {"overloaded": True, "last_set": False}
    assert run(policy, [(41.0, "connect"), (41.5, "seen", False, 0.0)]) == []


def test_an_on_waiting_while_latched_is_carried_out_and_only_then_clears_the_latch():
    policy = RelayPolicy(RelaySettings(max_watts=1500, min_interval=2), overloaded=True)
    policy.switched(False, 0.0)
    policy.command(True, 1.0)
    assert policy.due(1.0).switch is None and policy.overloaded  # within min_interval: not yet, still latched
    assert run(policy, [(2.5, "seen", False, 0.0)]) == [(2.5, True, "command")] and not policy.overloaded
    # Switched on by its button while an ON waits: the latch does not turn that ON into an OFF; it is done.
    policy = RelayPolicy(RelaySettings(max_watts=1500, min_interval=2), overloaded=True)
    policy.switched(False, 0.0)
    policy.command(True, 1.0)
    assert run(policy, [(1.5, "seen", True, 10.0)]) == [] and not policy.overloaded and policy.wanted is None


def test_auto_off_carries_the_on_time_across_a_restart():
    settings = RelaySettings(auto_off_after=6)
    first = RelayPolicy(settings)
    run(first, polls(100, 104, step=1))
    assert first.memory["on_since"] == 100
    # Down 1.5 s; the next run reads the saved memory, and the relay was on all along.
    second = RelayPolicy.restored(settings, json.loads(json.dumps(first.memory)))
    assert run(second, [(0.0, "connect")] + [(t - 100.0, "seen", True, 10.0, t) for t in (105.5, 106.5)]) == [
        (6.5, False, "auto_off_after")]


def test_auto_off_counts_nothing_across_a_restart_that_finds_the_relay_off():
    policy = RelayPolicy.restored(RelaySettings(auto_off_after=6), {"overloaded": False, "on_since": 100.0})
    run(policy, [(0.0, "seen", False, 0.0, 200.0)])
    assert "on_since" not in policy.memory
    assert run(policy, [(1.0, "seen", True, 10.0, 201.0), (6.0, "seen", True, 10.0, 206.0)]) == []


def test_setting_the_meters_clock_keeps_the_on_time_count():
    policy = RelayPolicy(RelaySettings(auto_off_after=60))
    run(policy, [(0.0, "seen", True, 10.0, 1000.0)])
    policy.meter_clock_moved(-3600.0)  # it was an hour ahead: set back
    assert run(policy, [(59.0, "seen", True, 10.0, 1000.0 - 3600 + 59)]) == []
    assert run(policy, [(60.0, "seen", True, 10.0, 1000.0 - 3600 + 60)]) == [(60.0, False, "auto_off_after")]


@pytest.mark.parametrize("memory", [{}, {"overloaded": "yes", "last_set": 1, "on_since": "soon"},
                                    {"overloaded": None, "on_since": True}])
def test_a_memory_of_the_wrong_types_is_ignored(memory):
    policy = RelayPolicy.restored(RelaySettings(), memory)
    assert policy.memory == {"overloaded": False, "last_set": None}
