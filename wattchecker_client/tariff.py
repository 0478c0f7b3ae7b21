"""Time-of-use tariffs: the price of a kWh at any local moment. Sans-I/O: values in, prices out.

A tariff is a list of plans, each in force from its ``valid_from`` until the
next one's, plus per-kWh surcharges (Japan's fuel-cost adjustment and
renewable surcharge), each amount in force from its own ``valid_from`` until
the next amount of the same name. A plan splits the week into periods by
weekday and time of day; the first listed period that matches a moment wins.

Every boundary (period edges, ``valid_from`` times) falls on a quarter hour,
as the hourly summaries' buckets do (datadir.BUCKET_SECONDS), so one bucket
of a summary is priced at exactly one price: the report prices a year from
its summaries, no rows read.

Moments are *local wall seconds*: seconds since 1970-01-01 00:00 of the local
wall clock (UTC seconds plus the zone's offset then), which is what the
report's integrator already works in. A DST day simply has 23 or 25 hours of
wall clock; a period is priced by the wall clock, as a utility bills it.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Sequence, Tuple

SLOT_SECONDS = 900  # quarter hours: the resolution of every boundary
SLOTS_PER_DAY = 86400 // SLOT_SECONDS
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
DAY_GROUPS = {"all": WEEKDAYS, "weekdays": WEEKDAYS[:5], "weekends": WEEKDAYS[5:]}
HOURS_RE = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")
EPOCH = dt.datetime(1970, 1, 1)
FLAT = "flat"  # the one period of a plain price
CACHE_LIMIT = 40_000  # quarter hours of prices kept: a year and more (a report of a year reads each once)


@dataclass(frozen=True)
class Surcharge:
    name: str
    valid_from: int  # local wall seconds
    per_kwh: float


@dataclass(frozen=True)
class Plan:
    valid_from: int  # local wall seconds; the first plan also covers everything before it
    names: Tuple[str, ...]  # the periods' names, in the config's order
    prices: Tuple[float, ...]
    week: Tuple[int, ...]  # per quarter hour of the week (Monday 00:00 first): the period's index


class Tariff:
    """The price per kWh, surcharges included, and the period's name, at a local wall second."""

    def __init__(self, plans: Sequence[Plan], surcharges: Sequence[Surcharge] = ()) -> None:
        if not plans:
            raise ValueError("a tariff needs at least one plan")
        self.plans = sorted(plans, key=lambda p: p.valid_from)
        self.surcharges = sorted(surcharges, key=lambda s: s.valid_from)
        # quarter hour -> (period, price); emptied at CACHE_LIMIT: a service runs for months
        self._cache: Dict[int, Tuple[str, float]] = {}

    @classmethod
    def flat(cls, price: float) -> "Tariff":
        """One price at every moment: the ``report.price`` of configs without a tariff."""
        return cls([Plan(0, (FLAT,), (float(price),), (0,) * (7 * SLOTS_PER_DAY))])

    @property
    def period_names(self) -> Tuple[str, ...]:
        """Every period's name, each once, in the order the plans list them."""
        names: List[str] = []
        for plan in self.plans:
            names += [n for n in plan.names if n not in names]
        return tuple(names)

    def at(self, local: int) -> Tuple[str, float]:
        """(period name, price per kWh with the surcharges in force) at local wall second ``local``."""
        slot = local // SLOT_SECONDS
        found = self._cache.get(slot)
        if found is None:
            if len(self._cache) >= CACHE_LIMIT:
                self._cache.clear()
            found = self._cache[slot] = self._price(slot * SLOT_SECONDS)
        return found

    def _price(self, local: int) -> Tuple[str, float]:
        plan = self.plans[0]
        for later in self.plans[1:]:
            if later.valid_from <= local:
                plan = later
        weekday = (local // 86400 + 3) % 7  # 1970-01-01 was a Thursday
        index = plan.week[weekday * SLOTS_PER_DAY + local % 86400 // SLOT_SECONDS]
        in_force: Dict[str, float] = {}
        for surcharge in self.surcharges:  # sorted: a later amount of the same name replaces an earlier
            if surcharge.valid_from <= local:
                in_force[surcharge.name] = surcharge.per_kwh
        return plan.names[index], plan.prices[index] + sum(in_force.values())

    def average_price(self, local: int) -> float:
        """The week-long average price per kWh of the plan and surcharges in force at ``local``:
        what a constant load (a standby) pays per kWh from then on."""
        monday = local - local % 86400 - ((local // 86400 + 3) % 7) * 86400
        week = [max(monday, local) + i * SLOT_SECONDS for i in range(7 * SLOTS_PER_DAY)]
        return sum(self._price(t)[1] for t in week) / len(week)


def utc_pricer(tariff: Tariff, tz: dt.tzinfo) -> Callable[[int], float]:
    """UTC epoch second -> price per kWh then; one zone lookup per quarter hour (offsets change on one).

    Rows come in time order, so the last quarter hour's price is all it keeps.
    """
    last = [-1, 0.0]  # quarter hour, its price

    def price(t: int) -> float:
        quarter = t // SLOT_SECONDS
        if quarter != last[0]:
            at = quarter * SLOT_SECONDS
            offset = dt.datetime.fromtimestamp(at, dt.timezone.utc).astimezone(tz).utcoffset()
            last[0], last[1] = quarter, tariff.at(at + int(offset.total_seconds()))[1]
        return last[1]

    return price


def local_seconds(when: dt.datetime) -> int:
    """A naive local wall-clock time as local wall seconds."""
    return int((when - EPOCH).total_seconds())


# --- from the config's tariff: section ------------------------------------------------------

Fail = Callable[[List[Any], str], Exception]  # (key path, problem) -> the error to raise, naming the file and line


def parse_tariff(data: Any, fail: Fail) -> Tariff:
    """The ``tariff:`` section: ``plans`` (a list) and ``surcharges`` (a list, optional)."""
    path: List[Any] = ["tariff"]
    if not isinstance(data, dict):
        raise fail(path, "must be a mapping with plans: and optionally surcharges:")
    _known(data, ("plans", "surcharges"), path, fail)
    plans_data = data.get("plans")
    if not isinstance(plans_data, list) or not plans_data:
        raise fail(path + ["plans"], "must be a non-empty list of plans (each with periods:)")
    plans = [_plan(item, path + ["plans", i], fail, first=i == 0) for i, item in enumerate(plans_data)]
    starts = [p.valid_from for p in plans]
    for i, start in enumerate(starts):
        if start in starts[:i]:
            raise fail(path + ["plans", i, "valid_from"], "two plans start at the same moment")
    surcharges_data = data.get("surcharges") or []
    if not isinstance(surcharges_data, list):
        raise fail(path + ["surcharges"], "must be a list of {name, valid_from, per_kwh}")
    surcharges = [_surcharge(item, path + ["surcharges", i], fail) for i, item in enumerate(surcharges_data)]
    return Tariff(plans, surcharges)


def _known(data: dict, keys: Sequence[str], path: List[Any], fail: Fail) -> None:
    for key in data:
        if key not in keys:
            raise fail(path + [key], f"unknown key; known keys: {', '.join(keys)}")


def _plan(data: Any, path: List[Any], fail: Fail, first: bool) -> Plan:
    if not isinstance(data, dict):
        raise fail(path, "must be a mapping with periods: and valid_from:")
    _known(data, ("valid_from", "periods"), path, fail)
    if "valid_from" not in data and not first:
        raise fail(path + ["valid_from"], "missing (required for every plan but the first)")
    valid_from = _moment(data["valid_from"], path + ["valid_from"], fail) if "valid_from" in data else 0
    periods = data.get("periods")
    if not isinstance(periods, list) or not periods:
        raise fail(path + ["periods"], "must be a non-empty list of {name, price, days, hours}")
    week: List[int] = [-1] * (7 * SLOTS_PER_DAY)
    names: List[str] = []
    prices: List[float] = []
    for index, period in enumerate(periods):
        where = path + ["periods", index]
        name, price, slots = _period(period, where, fail)
        if name in names:
            raise fail(where + ["name"], f"{name!r} is used twice in this plan")
        names.append(name)
        prices.append(price)
        for slot in slots:
            if week[slot] == -1:  # the first listed period that matches wins
                week[slot] = index
    if -1 in week:
        slot = week.index(-1)
        day, minutes = WEEKDAYS[slot // SLOTS_PER_DAY], slot % SLOTS_PER_DAY * SLOT_SECONDS // 60
        raise fail(path + ["periods"], f"no period covers {day} {minutes // 60:02d}:{minutes % 60:02d}: "
                   "every moment of the week needs a price")
    return Plan(valid_from, tuple(names), tuple(prices), tuple(week))


def _period(data: Any, path: List[Any], fail: Fail) -> Tuple[str, float, List[int]]:
    if not isinstance(data, dict):
        raise fail(path, "must be a mapping with name:, price:, and optionally days: and hours:")
    _known(data, ("name", "price", "days", "hours"), path, fail)
    name = data.get("name")
    if not isinstance(name, str) or not re.match(r"^[A-Za-z0-9_-]{1,40}$", name):
        raise fail(path + ["name"], f"must be 1-40 letters, digits, '-' or '_', got {name!r}")
    price = _amount(data.get("price"), path + ["price"], fail, negative=False)
    days = _days(data.get("days", "all"), path + ["days"], fail)
    hours = data.get("hours", "00:00-24:00")
    spans = [hours] if isinstance(hours, str) else hours
    if not isinstance(spans, list) or not spans:
        raise fail(path + ["hours"], f"must be \"HH:MM-HH:MM\" or a list of them, got {hours!r}")
    slots = []
    for span in spans:
        for day_slot in _span(span, path + ["hours"], fail):
            slots += [WEEKDAYS.index(d) * SLOTS_PER_DAY + day_slot for d in days]
    return name, price, slots


def _days(value: Any, path: List[Any], fail: Fail) -> Tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise fail(path, f"must be all, weekdays, weekends or a list of mon..sun, got {value!r}")
    days: List[str] = []
    for item in items:
        key = str(item).strip().lower()[:3] if str(item).lower() not in DAY_GROUPS else str(item).lower()
        if key in DAY_GROUPS:
            days += DAY_GROUPS[key]
        elif key in WEEKDAYS:
            days.append(key)
        else:
            raise fail(path, f"{item!r} is not a day: use mon, tue, wed, thu, fri, sat, sun, weekdays, weekends, all")
    return tuple(dict.fromkeys(days))


def _span(value: Any, path: List[Any], fail: Fail) -> List[int]:
    """The quarter hours of one day in ``HH:MM-HH:MM`` (end exclusive; past midnight wraps: 23:00-07:00)."""
    match = HOURS_RE.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise fail(path, f"{value!r} is not \"HH:MM-HH:MM\" (quote it in YAML: \"23:00-07:00\")")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or end > 1440 or start == end:
        raise fail(path, f"{value!r} is not a span of the day (00:00 to 24:00, start and end differ)")
    if start % 15 or end % 15:
        raise fail(path, f"{value!r}: edges must fall on a quarter hour (:00, :15, :30, :45)")
    first, last = start // 15, end // 15
    return list(range(first, last)) if first < last else list(range(first, SLOTS_PER_DAY)) + list(range(0, last))


def _surcharge(data: Any, path: List[Any], fail: Fail) -> Surcharge:
    if not isinstance(data, dict):
        raise fail(path, "must be a mapping with name:, valid_from: and per_kwh:")
    _known(data, ("name", "valid_from", "per_kwh"), path, fail)
    name = data.get("name")
    if not isinstance(name, str) or not name.strip():
        raise fail(path + ["name"], f"must be a non-empty string, got {name!r}")
    if "valid_from" not in data:
        raise fail(path + ["valid_from"], "missing (required)")
    return Surcharge(name.strip(), _moment(data["valid_from"], path + ["valid_from"], fail),
                     _amount(data.get("per_kwh"), path + ["per_kwh"], fail, negative=True))


def _amount(value: Any, path: List[Any], fail: Fail, negative: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) == float("inf"):
        raise fail(path, f"must be a number (a price per kWh), got {value!r}")
    if value < 0 and not negative:
        raise fail(path, f"must not be negative, got {value!r}")
    return float(value)


def _moment(value: Any, path: List[Any], fail: Fail) -> int:
    """A local date (its midnight) or date and time on a quarter hour: 2025-04-01, "2025-04-01 12:00"."""
    when = value
    if isinstance(value, str):
        try:
            when = dt.datetime.fromisoformat(value.strip())
        except ValueError:
            raise fail(path, f"{value!r} is not a date (YYYY-MM-DD) or \"YYYY-MM-DD HH:MM\"") from None
    if isinstance(when, dt.datetime):
        if when.tzinfo is not None:
            raise fail(path, f"{value!r}: give the local time without a zone (report.timezone applies)")
    elif isinstance(when, dt.date):
        when = dt.datetime(when.year, when.month, when.day)
    else:
        raise fail(path, f"{value!r} is not a date (YYYY-MM-DD) or \"YYYY-MM-DD HH:MM\"")
    seconds = local_seconds(when)
    if seconds % SLOT_SECONDS:
        raise fail(path, f"{value!r}: must fall on a quarter hour (:00, :15, :30, :45)")
    return seconds
