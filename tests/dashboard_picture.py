"""A picture of a Grafana dashboard drawn with matplotlib from its panels' real query results.

Not Grafana's own rendering: the same grid (``gridPos``), titles, units and
panel kinds (time series as lines or bars, stats as a number, state timelines
as bands), so a reader sees what each panel shows before installing Grafana.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Dict, List, Tuple

Series = Tuple[str, List[Tuple[float, float]]]  # legend, [(unix seconds, value)]

UNITS = {"watt": "W", "volt": "V", "amp": "A", "kwatth": "kWh", "short": "", "none": ""}
ROW_INCHES = 0.38  # one unit of gridPos height
WIDTH_INCHES = 16.0


def render(dashboard: dict, results: Dict[int, List[Series]], path: Path, tz: dt.tzinfo, subtitle: str) -> None:
    """Draw every panel of ``dashboard`` from ``results`` (panel id -> its series) into ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt

    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dashboard["panels"])
    height = bottom * ROW_INCHES + 0.8
    fig = plt.figure(figsize=(WIDTH_INCHES, height), dpi=80, facecolor="#111217")
    fig.text(0.01, 1 - 0.3 / height, f"{dashboard['title']}  —  {subtitle}", color="white", fontsize=13,
             va="center")
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        left, width = g["x"] / 24 + 0.035, g["w"] / 24 - 0.045  # room for the y labels
        top = 1 - (0.6 + g["y"] * ROW_INCHES) / height
        box = fig.add_axes([left, top - g["h"] * ROW_INCHES / height + 0.35 / height, width,
                            g["h"] * ROW_INCHES / height - 0.75 / height], facecolor="#181b1f")
        box.set_title(panel["title"], color="#ccccdc", fontsize=10, loc="left")
        for spine in box.spines.values():
            spine.set_color("#2c3235")
        box.tick_params(colors="#8e8e8e", labelsize=7)
        unit = UNITS.get(panel["fieldConfig"]["defaults"].get("unit", "none"), "")
        series = results.get(panel["id"], [])
        if panel["type"] == "stat":
            as_time = panel["options"].get("reduceOptions", {}).get("fields") == "Time"
            _stat(box, series, unit, tz if as_time else None)
        elif panel["type"] == "state-timeline":
            _timeline(box, series, mdates, tz)
        else:
            bars = panel["fieldConfig"]["defaults"].get("custom", {}).get("drawStyle") == "bars"
            _lines(box, series, unit, bars, mdates, tz)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, facecolor=fig.get_facecolor())
    plt.close(fig)


def _when(points, tz):
    return [dt.datetime.fromtimestamp(t, tz) for t, _ in points]


def _stat(box, series: List[Series], unit: str, time_in=None) -> None:
    """The last value of each series; ``time_in`` (a zone): its time instead, as Grafana's "Time" field."""
    box.set_xticks([])
    box.set_yticks([])
    values = [(name, points[-1]) for name, points in series if points]
    for i, (name, (t, value)) in enumerate(values):
        y = 0.5 + (len(values) / 2 - i - 0.5) * 0.45
        shown = (dt.datetime.fromtimestamp(t, time_in).strftime("%Y-%m-%d %H:%M:%S") if time_in
                 else f"{value:,.3f} {unit}".strip())
        box.text(0.5, y, shown, color="#73bf69", fontsize=20, ha="center", va="center",
                 transform=box.transAxes)
        box.text(0.5, y - 0.22, name, color="#8e8e8e", fontsize=8, ha="center", transform=box.transAxes)


def _lines(box, series: List[Series], unit: str, bars: bool, mdates, tz) -> None:
    for name, points in series:
        if not points:
            continue
        when, values = _when(points, tz), [v for _, v in points]
        if bars:
            widths = 0.8 * ((points[1][0] - points[0][0]) / 86400 if len(points) > 1 else 1.0)
            box.bar(when, values, width=widths, align="edge", label=name, color="#5794f2")
            for x, v in zip(when, values) if len(values) <= 20 else ():  # a number on each of a few bars
                box.text(x + dt.timedelta(days=widths / 2), v, f"{v:.2f}", color="#ccccdc", fontsize=7,
                         ha="center", va="bottom")
        else:
            box.plot(when, values, label=name, linewidth=1)
    box.set_ylabel(unit, color="#8e8e8e", fontsize=8)
    _time_axis(box, mdates, tz)
    if series:
        box.legend(fontsize=7, facecolor="#181b1f", labelcolor="#ccccdc", edgecolor="#2c3235", loc="upper left")


def _timeline(box, series: List[Series], mdates, tz) -> None:
    names = [name for name, points in series if points]
    for row, (name, points) in enumerate(s for s in series if s[1]):
        for (t, value), (later, _) in zip(points, points[1:] + [(points[-1][0] + 1, 0)]):
            start = dt.datetime.fromtimestamp(t, tz)
            alarm = "latch" in name  # a latch is good at 0; a link or a relay at 1
            box.barh(row, (later - t) / 86400, left=start, height=0.6,
                     color="#73bf69" if (value >= 1) != alarm else "#f2495c")
    box.set_yticks([])
    for row, name in enumerate(names):  # inside the band: a meter's name is longer than the margin
        box.text(0.01, row, name, color="#111217", fontsize=8, va="center", transform=box.get_yaxis_transform())
    _time_axis(box, mdates, tz)


def _time_axis(box, mdates, tz) -> None:
    locator = mdates.AutoDateLocator(tz=tz)
    box.xaxis.set_major_locator(locator)
    box.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator, tz=tz))
