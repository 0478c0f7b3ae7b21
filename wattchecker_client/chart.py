"""The chart people used to build by hand: kWh and cost per day, Wh per hour under it."""

from __future__ import annotations

from pathlib import Path
from typing import List

from .report import DayTotal, MeterReport
from .transport import SetupError


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
    return total


def render(reports: List[MeterReport], path: Path, tz_name: str, price: float, currency: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.dates as mdates
        import matplotlib.pyplot as plt
    except ImportError:
        raise SetupError("--png needs matplotlib: pip install 'wattchecker-client[report]'") from None
    report = combined(reports)
    days = sorted(report.days)
    if not days:
        raise SetupError("--png: no readings in the chosen days, nothing to draw")
    kwh = [report.days[d].kwh for d in days]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(11, 7.5), height_ratios=[3, 2], constrained_layout=True)
    fig.suptitle(f"{report.meter}: {days[0]} to {days[-1]} ({tz_name} days, {price:g} {currency}/kWh)")

    positions = range(len(days))
    width = 0.4
    bars = top.bar([p - width / 2 for p in positions], kwh, width, color="#2b6cb0", label="energy (kWh)")
    top.set_ylabel("energy per day (kWh)")
    top.set_xticks(list(positions))
    top.set_xticklabels([d.strftime("%m-%d\n%a") for d in days], fontsize=8 if len(days) > 14 else 9)
    cost_axis = top.twinx()
    costs = cost_axis.bar([p + width / 2 for p in positions], [k * price for k in kwh], width, color="#dd6b20",
                          label=f"cost ({currency})")
    cost_axis.set_ylabel(f"cost per day ({currency})")
    top.set_ylim(0, max(kwh) * 1.2 or 1)
    cost_axis.set_ylim(0, max(kwh) * price * 1.2 or 1)
    if len(days) <= 31:
        top.bar_label(bars, labels=[f"{k:.2f}" for k in kwh], fontsize=7, padding=2)
        cost_axis.bar_label(costs, labels=[f"{k * price:.0f}" for k in kwh], fontsize=7, padding=2)
    handles = [bars, costs]
    top.legend(handles, [h.get_label() for h in handles], loc="upper left", fontsize=9)
    top.grid(axis="y", alpha=0.3)

    hours = sorted(report.hourly_wh)
    bottom.plot(hours, [report.hourly_wh[h] for h in hours], color="#2f855a", linewidth=1)
    bottom.fill_between(hours, [report.hourly_wh[h] for h in hours], color="#2f855a", alpha=0.15)
    bottom.set_ylabel("energy per hour (Wh)")
    bottom.set_xlabel(f"local time ({tz_name})")
    bottom.xaxis.set_major_formatter(mdates.DateFormatter("%m-%d %H:%M"))
    bottom.set_ylim(bottom=0)
    bottom.grid(alpha=0.3)
    fig.savefig(path, dpi=110)
    plt.close(fig)
