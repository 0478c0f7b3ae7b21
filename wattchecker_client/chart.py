"""The chart people used to build by hand: kWh and cost per day, Wh per hour under it.

Both panels keep their bars a readable width whatever the range: days sit in
at least a week's worth of slots, hours on the full local days shown. Hours
and days only partly covered by data (the first, the current one, a gap) are
drawn lighter and hatched, so a short hour is never read as a drop in use.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import List, Optional

from .clock import time_zone
from .errors import SetupError
from .report import DayTotal, MeterReport, local_midnight_utc

MIN_DAY_SLOTS = 7  # one day of data is drawn as one bar of a week, not the whole width
FULL_SHARE = 0.99  # an hour or day with less data than this share of it is partial
DAY_COLOUR, HOUR_COLOUR = "#2b6cb0", "#2f855a"
PARTIAL = {"alpha": 0.35, "hatch": "///"}


def combined(reports: List[MeterReport]) -> MeterReport:
    """Several meters as one: energies add up, peaks do not (they are left out)."""
    if len(reports) == 1:
        return reports[0]
    total = MeterReport(", ".join(r.meter for r in reports))
    for report in reports:
        for day, d in report.days.items():
            t = total.days.setdefault(day, DayTotal(day))
            t.watt_seconds += d.watt_seconds
            t.covered_seconds = max(t.covered_seconds, d.covered_seconds)
        for hour, wh in report.hourly_wh.items():
            total.hourly_wh[hour] = total.hourly_wh.get(hour, 0.0) + wh
            total.hourly_seconds[hour] = max(total.hourly_seconds.get(hour, 0), report.hourly_seconds[hour])
    return total


def day_seconds(day: dt.date, tz: dt.tzinfo) -> int:
    """The local day's length: 23 or 25 hours on DST days."""
    return local_midnight_utc(day + dt.timedelta(days=1), tz) - local_midnight_utc(day, tz)


def render(reports: List[MeterReport], path: Path, tz_name: str, price: Optional[float], currency: str) -> None:
    """``price`` None: a time-of-use tariff (the days' costs are labelled, no cost axis: it is not one line)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SetupError("--png needs matplotlib: pip install 'wattchecker-client[report]'") from None
    report = combined(reports)
    days = sorted(report.days)
    if not days:
        raise SetupError("--png: no readings in the chosen days, nothing to draw")
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), height_ratios=[3, 2], constrained_layout=True)
    pricing = f"{price:g} {currency}/kWh" if price is not None else f"time-of-use tariff, {currency}"
    fig.suptitle(f"{report.meter}: {days[0]} to {days[-1]} ({tz_name} days, {pricing})")
    draw_days(top, report, days, time_zone(tz_name), price, currency)
    draw_hours(bottom, report, days, tz_name)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_days(ax, report: MeterReport, days: List[dt.date], tz: dt.tzinfo, price: Optional[float],
              currency: str) -> None:
    """One bar per day (kWh on the left axis, cost on the right), centred in at least a week of slots."""
    totals = [report.days[d] for d in days]
    partial = [t.covered_seconds < FULL_SHARE * day_seconds(d, tz) for d, t in zip(days, totals)]
    kwh = [t.kwh for t in totals]
    positions = list(range(len(days)))
    for is_partial in (False, True):
        chosen = [i for i in positions if partial[i] == is_partial]
        if not chosen:
            continue
        style = PARTIAL if is_partial else {}
        ax.bar(chosen, [kwh[i] for i in chosen], 0.7, color=DAY_COLOUR, edgecolor=DAY_COLOUR, linewidth=0.5,
               label="partial day (data for part of it)" if is_partial else "energy (kWh)", **style)
    slots = max(len(days), MIN_DAY_SLOTS)
    margin = (slots - len(days)) / 2
    ax.set_xlim(-0.5 - margin, len(days) - 0.5 + margin)
    ax.set_xticks(positions)
    ax.set_xticklabels([d.strftime("%m-%d\n%a") for d in days], fontsize=8 if len(days) > 14 else 9)
    if len(days) > 31:  # keep about 30 labels
        for i, label in enumerate(ax.get_xticklabels()):
            label.set_visible(i % (len(days) // 30 + 1) == 0)
    ax.set_ylabel("energy per day (kWh)")
    ax.set_ylim(0, max(kwh) * 1.25 or 1)
    if price:
        cost = ax.secondary_yaxis("right", functions=(lambda k: k * price, lambda c: c / price))
        cost.set_ylabel(f"cost per day ({currency})")
    if len(days) <= 31:
        for i, t in enumerate(totals):
            label = f"{t.kwh:.2f}\n{t.cost:.0f} {currency}"
            if partial[i]:
                label += f"\n{t.hours_covered:.1f} h"
            ax.annotate(label, (i, kwh[i]), xytext=(0, 2), textcoords="offset points",
                        ha="center", va="bottom", fontsize=7)
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(axis="y", alpha=0.3)


def draw_hours(ax, report: MeterReport, days: List[dt.date], tz_name: str) -> None:
    """One bar per local hour on the whole days shown: an hour without data is no bar, not a ramp."""
    import matplotlib.dates as mdates

    hours = sorted(report.hourly_wh)
    partial = {h for h in hours if report.hourly_seconds[h] < FULL_SHARE * 3600}
    width = 1 / 24 * (0.85 if len(days) <= 14 else 1.0)  # in days; wide ranges close the gaps
    for is_partial in (False, True):
        chosen = [h for h in hours if (h in partial) == is_partial]
        if not chosen:
            continue
        style = PARTIAL if is_partial else {}
        ax.bar(chosen, [report.hourly_wh[h] for h in chosen], width, align="edge", color=HOUR_COLOUR,
               edgecolor=HOUR_COLOUR, linewidth=0.5 if len(days) <= 14 else 0,
               label="partial hour (data for part of it)" if is_partial else "energy per hour (Wh)", **style)
    start = dt.datetime.combine(days[0], dt.time())
    # end a minute short of midnight, so the axis's date note names the last day shown
    ax.set_xlim(start, dt.datetime.combine(days[-1], dt.time(23, 59)))
    locator = mdates.AutoDateLocator(minticks=4, maxticks=12)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))
    ax.set_ylabel("energy per hour (Wh)")
    ax.set_xlabel(f"local time ({tz_name})")
    ax.set_ylim(0, max(report.hourly_wh.values()) * 1.3 or 1)  # room for the legend
    ax.legend(loc="upper left", fontsize=9)
    ax.grid(alpha=0.3)
