"""The page's run band in a real headless Chromium, at phone and desktop sizes."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from pathlib import Path
from typing import Optional, Tuple

import pytest

from wattchecker_client.clock import Clock, FakeClock, utc_epoch
from wattchecker_client.report import meter_rows
from wattchecker_client.runs import detect
from wattchecker_client.simulator import played
from wattchecker_client.traces import trace
from wattchecker_client.writer import Writer

from .conftest import free_port, wait_for
from .test_web import METER, http_config, serving

pytest.importorskip("prometheus_client", reason="pip install 'wattchecker-client[http]'")


def seed_with_runs(now: int, lasting: int = 300) -> Tuple[int, bool]:
    """A fridge trace seed whose last hour before ``now`` holds a finished run, and a run going on (for
    ``lasting`` seconds more) if one can."""
    fallback: Optional[int] = None
    for seed in range(1, 400):
        tr = trace("fridge", seed)
        runs = [(now - (now - s) % tr.period, e - s) for s, e in tr.runs]  # (latest start, length) before now
        runs = [(s, s + length) for s, length in runs]
        # ended, its quiet wait over, and its middle inside the chart's last hour (where the band is looked for)
        finished = any(now - 3300 < (s + e) / 2 and e < now - 600 for s, e in runs)
        going = any(now - 2400 < s < now - 120 and e > now + lasting for s, e in runs)
        if finished and going:
            return seed, True
        if finished and fallback is None:
            fallback = seed
    assert fallback is not None
    return fallback, False


def seed_files(data_dir: Path, seed: int, end: dt.datetime) -> None:
    """Two hours of the fridge the simulator plays, written by the real Writer as the service would have."""
    clock = FakeClock(end - dt.timedelta(hours=2))
    writer = Writer(data_dir, {METER: "wattchecker-data"}, ["csv", "json"], clock, buffer_seconds=3600)
    writer.recover()
    while clock.now() < end:
        writer.add(METER, played(clock.now(), "fridge", seed))
        clock.advance(1)
        if clock.now().second == 0:
            writer.tick()
    writer.flush()


BAND_PIXEL = """(() => {
  const u = wattcheckerCharts['%s'].line, r = wattcheckerCharts['%s'].runs.find((r) => !r.running);
  const x = Math.round(u.valToPos((r.start + r.end) / 2, 'x', true)), y = Math.round(u.bbox.top + 3);
  const outside = Math.round(u.valToPos(r.end + 120, 'x', true));
  const px = (x) => Array.from(u.ctx.getImageData(x, y, 1, 1).data);
  return [px(x), px(outside), x > u.bbox.left];
})()"""


@pytest.mark.process
@pytest.mark.parametrize("width,height,mobile", [(390, 844, True), (1280, 800, False)], ids=["phone", "desktop"])
def test_the_chart_shows_each_run_as_a_band(tmp_path, simulator, daemons, width, height, mobile):
    from tests.browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("needs a headless browser: apt-get install chromium")
    now = Clock().now().replace(microsecond=0)
    seed, going = seed_with_runs(utc_epoch(now) + 60)
    data_dir = tmp_path / "data"
    seed_files(data_dir, seed, now - dt.timedelta(seconds=20))
    runs, _ = detect(list(meter_rows(data_dir, "wattchecker-data", -(2**62), 2**62, [])), trace("fridge", seed).settings)
    sim = simulator("--seed", str(seed), "--load", "fridge")
    port = free_port()
    config = http_config(tmp_path, sim.addresses[0], port)
    config.write_text(config.read_text().replace("  timeout: 2\n", "  timeout: 2\n  runs: {start_watts: 30, stop_watts: 10, "
                                                 "stop_after: 120}\n"))
    daemons(config, tmp_path)
    wait_for(serving(port), 30, what="the http server")
    browser = Browser(tmp_path / "chromium", width, height, mobile)
    try:
        browser.open(f"http://127.0.0.1:{port}/")
        count = f"(window.wattcheckerCharts?.['{METER}']?.runs || []).filter((r) => !r.running).length"
        wait_for(lambda: browser.evaluate(count), 60, what="a finished run on the page")  # a failure bound
        bands = browser.evaluate(f"wattcheckerCharts['{METER}'].runs")
        finished = [b for b in bands if not b["running"]]
        last = runs[-1]
        assert (finished[-1]["start"], finished[-1]["end"]) == (last.start, last.end)  # the files' last run
        assert finished[-1]["kwh"] == round(last.kwh, 6)
        assert any(b["running"] for b in bands) == going
        inside, outside, visible = browser.evaluate(BAND_PIXEL % (METER, METER))
        assert visible and inside != outside  # the band is painted behind the line, and only over the run
        text = browser.evaluate("document.querySelector('.meter dd.run').textContent")
        assert ("now" in text) == going and f"{bands[-1]['kwh']:.3f} kWh" in text
        assert browser.errors() == []
        shot = browser.screenshot(tmp_path / f"runs-{width}x{height}.png")
        keep = os.environ.get("WATTCHECKER_SCREENSHOTS")
        if keep:
            shutil.copy(shot, Path(keep) / shot.name)
    finally:
        browser.close()
