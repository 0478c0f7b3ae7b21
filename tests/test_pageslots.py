"""Open pages' stream slots as tables: no client can keep another out; loopback is one client."""

from __future__ import annotations

import pytest

from wattchecker_client.pageslots import LOOPBACK, StreamSlots, client_key


@pytest.mark.parametrize("address, key", [
    ("127.0.0.1", LOOPBACK), ("127.0.0.2", LOOPBACK), ("127.255.1.9", LOOPBACK), ("::1", LOOPBACK),
    ("::ffff:127.0.0.3", LOOPBACK), ("192.168.1.5", "192.168.1.5"), ("fe80::1%eth0", "fe80::1"),
    ("::ffff:192.168.1.5", "192.168.1.5"), ("not-an-ip", "not-an-ip"),
])
def test_client_keys(address, key):
    assert client_key(address) == key


def test_loopback_addresses_share_one_clients_share():
    slots = StreamSlots(total=16, per_client=4)
    tickets = [slots.take(f"127.0.0.{n}") for n in range(1, 6)]
    assert [t is not None for t in tickets] == [True] * 4 + [False]
    assert slots.held() == {LOOPBACK: 4}


def test_four_browsers_cannot_lock_a_fifth_out():
    slots = StreamSlots(total=16, per_client=4)
    held = {f"10.0.0.{n}": [slots.take(f"10.0.0.{n}") for _ in range(4)] for n in range(1, 5)}
    assert all(all(held_) for held_ in held.values()) and sum(slots.held().values()) == 16
    fifth = slots.take("10.0.0.5")
    assert fifth is not None
    ended = [t for tickets in held.values() for t in tickets if t.ended.is_set()]
    assert len(ended) == 1 and ended[0] is held["10.0.0.1"][0]  # the largest holder's oldest page
    assert slots.held() == {"10.0.0.1": 3, "10.0.0.2": 4, "10.0.0.3": 4, "10.0.0.4": 4, "10.0.0.5": 1}
    # The page that lost its slot reconnects: refused while the shares are even (no see-saw).
    assert slots.take("10.0.0.1") is None
    slots.give_back(ended[0])  # its thread ends later: nothing changes
    assert sum(slots.held().values()) == 16
    assert slots.taken_over == 1


def test_sixteen_clients_with_one_page_each_fill_it_and_a_seventeenth_waits():
    slots = StreamSlots(total=16, per_client=4)
    assert all(slots.take(f"10.0.1.{n}") for n in range(16))
    assert slots.take("10.0.1.99") is None
    assert slots.taken_over == 0


def test_a_newcomer_always_gets_in_while_someone_holds_two_more():
    """Any order of arrivals: the newcomer is refused only when nobody holds 2 more than it does."""
    slots = StreamSlots(total=6, per_client=4)
    for client in ["a", "a", "a", "a", "b", "b", "c", "d", "e", "c", "d", "e", "f"]:
        before = slots.held()
        got = slots.take(client)
        mine = before.get(client, 0)
        full = sum(before.values()) >= 6
        can_take = not full or max(before.values()) >= mine + 2
        assert (got is not None) == (mine < 4 and can_take), (client, before)
        assert sum(slots.held().values()) <= 6


def test_giving_back_frees_the_slot():
    slots = StreamSlots(total=1, per_client=1)
    ticket = slots.take("10.0.0.1")
    assert slots.take("10.0.0.2") is None
    slots.give_back(ticket)
    assert slots.take("10.0.0.2") is not None
    assert slots.held() == {"10.0.0.2": 1}
