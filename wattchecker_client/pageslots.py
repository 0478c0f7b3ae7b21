"""Slots for open pages' event streams, shared fairly between clients.

Each open page holds a thread and a connection, so their number is capped.
A plain cap with a per-client share still lets a few clients fill it (four
browsers with four tabs each took all 16). Here a newcomer takes a slot from
the client holding the most, as long as that client would still hold more
than the newcomer, so no client can keep another out; its oldest page is
told to end (the browser's EventSource reconnects, and is refused while the
shares are even, which stops the see-saw). Every loopback address
(127.0.0.0/8, ::1) is one client: they are all this machine.

Sans-I/O: ``take`` and ``give_back`` under one lock; the caller ends a stream
whose ticket's ``ended`` event is set.
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from typing import Callable, Dict, Optional

MAX_STREAMS = 16  # open pages at once; more get 503 rather than a thread each
MAX_STREAMS_PER_CLIENT = 4  # one machine's tabs
LOOPBACK = "loopback"


def client_key(address: str) -> str:
    """The client an address belongs to: every loopback address is the one local machine, and an
    IPv4-mapped IPv6 address its IPv4 client (whose text Python 3.13 writes differently)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    if mapped is not None:  # an IPv4 client reaching a dual-stack socket is that IPv4 client
        ip = mapped
    return LOOPBACK if ip.is_loopback else str(ip)


class Ticket:
    """One open stream's slot; ``ended`` is set when a newcomer took it."""

    def __init__(self, client: str) -> None:
        self.client = client
        self.ended = threading.Event()


class StreamSlots:
    """``total`` slots, at most ``per_client`` a client; a newcomer may take one from the largest holder."""

    def __init__(self, total: int = MAX_STREAMS, per_client: int = MAX_STREAMS_PER_CLIENT,
                 key: Callable[[str], str] = client_key) -> None:
        self.total = total
        self.per_client = per_client
        self.key = key  # address -> client
        self._lock = threading.Lock()
        self._held: Dict[str, "OrderedDict[Ticket, None]"] = {}  # client -> its tickets, oldest first
        self.taken_over = 0  # streams ended to make room for another client

    def take(self, address: str) -> Optional[Ticket]:
        """A slot for a stream from ``address``, or None (answer 503)."""
        client = self.key(address)
        with self._lock:
            mine = self._held.get(client, OrderedDict())
            if len(mine) >= self.per_client:
                return None
            if sum(len(tickets) for tickets in self._held.values()) >= self.total and not self._free_one(len(mine)):
                return None
            ticket = Ticket(client)
            self._held.setdefault(client, mine)[ticket] = None
            return ticket

    def _free_one(self, newcomer_holds: int) -> bool:
        """End the oldest stream of the largest holder, if it would still hold more than the newcomer."""
        largest = max(self._held.values(), key=len)
        if len(largest) < newcomer_holds + 2:
            return False
        oldest = next(iter(largest))
        self._drop(oldest)
        oldest.ended.set()
        self.taken_over += 1
        return True

    def give_back(self, ticket: Ticket) -> None:
        """The stream ended; nothing if its slot was already taken over."""
        with self._lock:
            self._drop(ticket)

    def _drop(self, ticket: Ticket) -> None:
        tickets = self._held.get(ticket.client)
        if tickets is not None and ticket in tickets:
            del tickets[ticket]
            if not tickets:
                del self._held[ticket.client]

    def held(self) -> Dict[str, int]:
        """Client -> open streams, for tests and status."""
        with self._lock:
            return {client: len(tickets) for client, tickets in self._held.items()}
