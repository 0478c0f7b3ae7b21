"""Tariffs: golden costs over period edges, midnight, a mid-day valid_from, DST days; config errors."""

from __future__ import annotations

import datetime as dt

import pytest

from wattchecker_client.config import ConfigError, parse_config
from wattchecker_client.report import meter_report, time_zone

from .test_report import constant, write

TOKYO = time_zone("Asia/Tokyo")
BERLIN = time_zone("Europe/Berlin")

TARIFF = """
device:
  address: sim://
tariff:
  plans:
    - periods:
        - {name: night, price: 20, hours: "23:00-07:00"}
        - {name: weekend, price: 25, days: weekends}
        - {name: day, price: 30}
    - valid_from: "2026-07-02 12:00"
      periods:
        - {name: night, price: 21, hours: ["23:00-24:00", "00:00-07:00"]}
        - {name: day, price: 40, hours: "07:00-23:00"}
  surcharges:
    - {name: renewable, valid_from: 2026-07-03, per_kwh: 4}
    - {name: fuel, valid_from: 2026-01-01, per_kwh: -2}
    - {name: fuel, valid_from: 2026-07-03, per_kwh: -1}
"""


def tariff():
    return parse_config(TARIFF).pricing()


def local(day: str, time: str, tz=TOKYO) -> dt.datetime:
    """A local wall time as the naive UTC datetime the files use."""
    when = dt.datetime.fromisoformat(f"{day} {time}").replace(tzinfo=tz)
    return when.astimezone(dt.timezone.utc).replace(tzinfo=None)


def days(tmp_path, tz, use_summaries=True):
    return meter_report(tmp_path, "wattchecker-data", "m", tz, tariff=tariff(), use_summaries=use_summaries).days


@pytest.mark.parametrize("use_summaries", [True, False])
def test_a_weekday_of_1_kw_costs_8_night_and_16_day_hours(tmp_path, use_summaries):
    write(tmp_path, constant(local("2026-06-30", "00:00"), 86400, 1000.0))  # a Tuesday
    d = days(tmp_path, TOKYO, use_summaries)[dt.date(2026, 6, 30)]
    assert d.cost == pytest.approx(8 * (20 - 2) + 16 * (30 - 2))
    assert d.periods["night"] == pytest.approx([8 * 3_600_000, 8 * 18])
    assert d.periods["day"] == pytest.approx([16 * 3_600_000, 16 * 28])


@pytest.mark.parametrize("edge, before, after", [("07:00", 20, 30), ("23:00", 30, 20)])
def test_two_minutes_across_a_period_edge_are_priced_a_minute_each(tmp_path, edge, before, after):
    start = local("2026-06-30", edge) - dt.timedelta(minutes=1)
    write(tmp_path, constant(start, 120, 3600.0))  # 0.06 kWh each side
    d = days(tmp_path, TOKYO)[dt.date(2026, 6, 30)]
    assert d.kwh == pytest.approx(0.12)
    assert d.cost == pytest.approx(0.06 * (before - 2) + 0.06 * (after - 2))


def test_two_minutes_across_midnight_go_to_each_day_at_the_night_price(tmp_path):
    write(tmp_path, constant(local("2026-06-30", "23:59"), 120, 3600.0))
    got = days(tmp_path, TOKYO)
    assert [got[d].cost for d in sorted(got)] == pytest.approx([0.06 * 18, 0.06 * 18])
    assert sorted(got) == [dt.date(2026, 6, 30), dt.date(2026, 7, 1)]


@pytest.mark.parametrize("use_summaries", [True, False])
def test_a_plan_from_noon_and_surcharges_from_midnight(tmp_path, use_summaries):
    write(tmp_path, constant(local("2026-07-02", "00:00"), 2 * 86400, 1000.0))  # Thursday and Friday
    got = days(tmp_path, TOKYO, use_summaries)
    thursday = 7 * (20 - 2) + 5 * (30 - 2) + 11 * (40 - 2) + 1 * (21 - 2)
    friday = 8 * (21 - 1 + 4) + 16 * (40 - 1 + 4)
    assert got[dt.date(2026, 7, 2)].cost == pytest.approx(thursday)
    assert got[dt.date(2026, 7, 3)].cost == pytest.approx(friday)


def test_a_weekend_day_before_the_new_plan_has_its_own_period(tmp_path):
    write(tmp_path, constant(local("2026-06-27", "00:00"), 86400, 1000.0))  # a Saturday
    d = days(tmp_path, TOKYO)[dt.date(2026, 6, 27)]
    assert set(d.periods) == {"night", "weekend"}
    assert d.cost == pytest.approx(8 * 18 + 16 * 23)


@pytest.mark.parametrize("use_summaries", [True, False])
@pytest.mark.parametrize("date, night_hours, cost", [
    ("2026-03-30", 8, 8 * 18 + 16 * 28),  # a Monday, no switch
    ("2026-03-29", 7, 7 * 18 + 16 * 23),  # a Sunday: the weekend period by day
    ("2026-10-25", 9, 9 * (21 + 3) + 16 * (40 + 3)),  # the plan from July 2nd, both surcharges
])
def test_dst_days_are_priced_by_the_wall_clock(tmp_path, use_summaries, date, night_hours, cost):
    """Berlin: a 23-hour day loses a night hour (02:00-03:00), a 25-hour one gains it twice."""
    day = dt.date.fromisoformat(date)
    seconds = int((local(str(day + dt.timedelta(days=1)), "00:00", BERLIN) - local(date, "00:00", BERLIN)).total_seconds())
    write(tmp_path, constant(local(date, "00:00", BERLIN), seconds, 1000.0))
    d = days(tmp_path, BERLIN, use_summaries)[day]
    assert d.kwh == pytest.approx(night_hours + 16)
    assert d.cost == pytest.approx(cost)


def test_the_flat_price_is_the_one_period_case(tmp_path):
    write(tmp_path, constant(local("2026-06-30", "00:00"), 3600, 2000.0))
    config = parse_config("device:\n  address: sim://\nreport:\n  price: 31\n")
    d = meter_report(tmp_path, "wattchecker-data", "m", TOKYO, tariff=config.pricing()).days[dt.date(2026, 6, 30)]
    assert d.cost == pytest.approx(2 * 31) and list(d.periods) == ["flat"]


@pytest.mark.parametrize("tariff, message", [
    ("plans: [{periods: [{name: day, price: 30, hours: '07:00-23:00'}]}]",
     "tariff.plans[0].periods: no period covers mon 00:00"),
    ("plans: [{periods: [{name: day, price: 30, hours: '07:10-23:00'}]}]", "edges must fall on a quarter hour"),
    ("plans: [{periods: [{name: day, price: 30, days: [mon, funday]}]}]", "'funday' is not a day"),
    ("plans: [{periods: [{name: day, price: 30}]}, {periods: [{name: day, price: 30}]}]",
     "tariff.plans[1].valid_from: missing"),
    ("plans: [{periods: [{name: day, price: -1}]}]", "tariff.plans[0].periods[0].price: must not be negative"),
    ("plans: [{periods: [{name: day, price: 30}]}]\nsurcharges: [{name: x, per_kwh: 1}]",
     "tariff.surcharges[0].valid_from: missing"),
    ("plans: [{valid_from: '2026-07-01 12:05', periods: [{name: day, price: 30}]}]", "quarter hour"),
])
def test_a_bad_tariff_names_its_key_and_line(tariff, message):
    text = "device:\n  address: sim://\ntariff:\n  " + tariff.replace("\n", "\n  ") + "\n"
    with pytest.raises(ConfigError) as info:
        parse_config(text, "c.yaml")
    assert message in str(info.value) and str(info.value).startswith("c.yaml:")


def test_the_sample_tariff_parses_once_uncommented():
    from pathlib import Path

    sample = (Path(__file__).parent.parent / "config_sample.yaml").read_text(encoding="utf-8").splitlines()
    first = sample.index("# tariff:")
    block = []
    for line in sample[first:]:
        if not line.startswith("#"):
            break
        block.append(line[2:])
    config = parse_config("device:\n  address: sim://\n" + "\n".join(block) + "\n")
    assert config.tariff.period_names == ("night", "weekend", "day")
    assert config.tariff.at(0) == ("night", 10.0)  # 1970: before the plan's valid_from, the first plan holds


def test_the_price_cache_stays_bounded_over_years_of_uptime():
    from wattchecker_client.tariff import CACHE_LIMIT

    priced = tariff()
    for quarter in range(0, 3 * 35_040):  # three years of quarter hours, as a service running that long
        priced.at(1_700_000_000 // 900 * 900 + quarter * 900)
    assert 0 < len(priced._cache) <= CACHE_LIMIT
