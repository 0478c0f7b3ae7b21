// The live page: one card per meter, fed by the service's server-sent events.
// "init" carries the last hour and today's totals; "reading" adds a chart point,
// "status" the figures now, "summary" today's kWh and the hourly bars.
"use strict";

(function () {
  const HOUR = 3600;
  const root = document.getElementById("meters");
  const link = document.getElementById("link");
  const cards = {};
  let settings = null;
  window.wattcheckerCharts = {}; // meter -> {line, bars}, for the test and the curious

  function css(name) {
    return getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  }

  function el(tag, cls, text) {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function clockText(epoch, withSeconds) {
    const options = { timeZone: settings.timezone, hour: "2-digit", minute: "2-digit", hour12: false };
    if (withSeconds) options.second = "2-digit";
    const when = new Date(epoch * 1000);
    const day = when.toLocaleDateString("en-CA", { timeZone: settings.timezone });
    const today = new Date().toLocaleDateString("en-CA", { timeZone: settings.timezone });
    const time = when.toLocaleTimeString("en-GB", options);
    return day === today ? time : day + " " + time;
  }

  function money(amount) {
    try {
      return new Intl.NumberFormat(undefined, { style: "currency", currency: settings.currency }).format(amount);
    } catch (e) {
      return amount.toFixed(2) + " " + settings.currency;
    }
  }

  function watts(w) {
    return w >= 1000 ? w.toFixed(0) : w >= 10 ? w.toFixed(1) : w.toFixed(2);
  }

  // 24-hour clock labels in the given zone; a date where the day changes.
  function timeLabels(zone) {
    return (u, splits) => splits.map((ts) => {
      const parts = {};
      for (const p of new Intl.DateTimeFormat("en-GB", { timeZone: zone, month: "numeric", day: "numeric",
        hour: "2-digit", minute: "2-digit", hourCycle: "h23" }).formatToParts(new Date(ts * 1000))) {
        parts[p.type] = p.value;
      }
      return parts.hour === "00" && parts.minute === "00" ? parts.month + "/" + parts.day
        : parts.hour + ":" + parts.minute;
    });
  }

  function axes(zone, valueLabel) {
    const stroke = css("--muted");
    const grid = { stroke: css("--line"), width: 1 };
    return [
      { stroke: stroke, grid: grid, ticks: grid, values: timeLabels(zone) },
      { stroke: stroke, grid: grid, ticks: grid, size: 56, label: valueLabel, labelSize: 18,
        values: (u, ticks) => ticks.map((v) => (v >= 1000 ? (v / 1000).toFixed(1) + "k" : String(+v.toFixed(3)))) },
    ];
  }

  // The runs (runs.py) as bands behind the line: finished ones shaded, the one going on to the right edge.
  function runBands(c) {
    return { hooks: { drawAxes: [(u) => {
      const { left, top, width, height } = u.bbox;
      const ctx = u.ctx;
      ctx.save();
      for (const r of c.runs || []) {
        const end = r.running ? u.scales.x.max : r.end;
        const x0 = Math.max(left, u.valToPos(r.start, "x", true));
        const x1 = Math.min(left + width, u.valToPos(end, "x", true));
        if (x1 <= x0) continue;
        ctx.fillStyle = css(r.running ? "--run-now" : "--run");
        ctx.fillRect(x0, top, x1 - x0, height);
      }
      ctx.restore();
    }] } };
  }

  function runText(r) {
    const minutes = Math.round((r.end - r.start) / 60);
    return clockText(r.start) + "–" + (r.running ? "now" : clockText(r.end)) + " · " + minutes + " min · "
      + r.kwh.toFixed(3) + " kWh · " + money(r.cost);
  }

  function lineChart(box, history, c) {
    const zone = settings.timezone;
    return new uPlot({
      plugins: [runBands(c)],
      width: Math.max(200, box.clientWidth), height: 200,
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), zone),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: {
        // Always the whole last hour, filling from the right as readings arrive.
        x: { time: true, range: (u, min, max) => {
          const end = max === null ? Date.now() / 1000 : max;
          return [end - HOUR, end];
        } },
        y: { range: (u, min, max) => [0, Math.max(10, max * 1.1)] },
      },
      axes: axes(zone, "W"),
      series: [{}, { label: "W", stroke: css("--accent"), width: 1.5, fill: css("--accent") + "22",
                     points: { show: false } }],
    }, history, box);
  }

  function barChart(box, bars) {
    return new uPlot({
      width: Math.max(200, box.clientWidth), height: 150,
      // Bars are stamped with the local wall clock, so they are drawn as UTC.
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"),
      legend: { show: false },
      cursor: { drag: { x: false, y: false } },
      scales: { y: { range: (u, min, max) => [0, Math.max(0.01, max * 1.1)] } },
      axes: axes("Etc/UTC", "kWh"),
      series: [{}, { label: "kWh", fill: css("--bar"), stroke: css("--bar"), width: 0,
                     paths: uPlot.paths.bars({ size: [0.8, 40] }), points: { show: false } }],
    }, bars, box);
  }

  function card(name, meter) {
    const node = el("section", "meter");
    node.dataset.meter = name;
    const top = el("div", "top");
    const left = el("div");
    left.append(el("h2", "name", name), el("div", "state", ""), el("div", "power none", "–"));
    const figures = el("dl", "figures");
    const parts = {};
    for (const [key, label] of [["v", "Voltage"], ["a", "Current"], ["kwh", "Today"], ["cost", "Cost today"],
                                ["run", "Run"]]) {
      figures.append(el("dt", "", label));
      parts[key] = figures.appendChild(el("dd", key, "–"));
    }
    top.append(left, figures);
    const lineBox = el("div", "chart");
    lineBox.append(el("h3", "", "Last hour, W (one point per second)"));
    const barBox = el("div", "chart");
    barBox.append(el("h3", "", "kWh per hour, last 48 hours"));
    node.append(top, lineBox, barBox);
    root.append(node);
    const c = {
      node: node, state: left.querySelector(".state"), power: left.querySelector(".power"), parts: parts,
      data: meter.history, line: null, bars: null, barBox: barBox, lineBox: lineBox, runs: [],
    };
    c.line = lineChart(lineBox, meter.history, c);
    window.wattcheckerCharts[name] = c;
    new ResizeObserver(() => fit(c)).observe(node);
    return c;
  }

  function showStatus(c, s) {
    if (!s) return;
    const up = s.connected;
    c.state.classList.toggle("up", up);
    if (up) c.state.textContent = "connected" + (s.since ? " since " + clockText(Date.parse(s.since) / 1000) : "");
    else if (s.last) c.state.textContent = "no reading since " + clockText(s.last, true);
    else c.state.textContent = "not connected" + (s.since ? " since " + clockText(Date.parse(s.since) / 1000) : "");
    if (s.overloaded) c.state.textContent += " · relay off: overloaded (an ON clears it)";
    c.state.classList.toggle("overloaded", !!s.overloaded);
    c.power.classList.toggle("none", s.w === null);
    c.power.replaceChildren(s.w === null ? "–" : watts(s.w), el("small", "", "W"));
    c.parts.v.textContent = s.v === null ? "–" : s.v.toFixed(1) + " V";
    c.parts.a.textContent = s.a === null ? "–" : s.a.toFixed(3) + " A";
  }

  function showSummary(summary) {
    for (const [name, s] of Object.entries(summary)) {
      const c = cards[name];
      if (!c) continue;
      c.parts.kwh.textContent = s.kwh.toFixed(3) + " kWh";
      c.parts.cost.textContent = money(s.cost);
      c.runs = s.runs || [];
      const last = c.runs[c.runs.length - 1];
      c.parts.run.textContent = last ? runText(last) : "at rest";
      c.parts.run.classList.toggle("running", !!(last && last.running));
      c.line.redraw(false, false);
      if (c.bars) c.bars.setData(s.bars);
      else {
        c.bars = barChart(c.barBox, s.bars);
        fit(c);
      }
    }
  }

  function addReading(d) {
    const c = cards[d.m];
    if (!c) return;
    const [t, w] = c.data;
    t.push(d.t);
    w.push(d.w);
    let drop = 0;
    while (drop < t.length && t[drop] <= d.t - HOUR) drop++;
    if (drop) { t.splice(0, drop); w.splice(0, drop); }
    c.line.setData(c.data);
  }

  function setup(info) {
    settings = info;
    root.replaceChildren();
    for (const name of Object.keys(cards)) delete cards[name];
    for (const [name, meter] of Object.entries(info.meters)) {
      cards[name] = card(name, meter);
      showStatus(cards[name], meter.status);
    }
    showSummary(info.summary);
  }

  // Charts follow their card's width (the grid reflows as cards are added or the window turns).
  function fit(c) {
    const width = Math.max(200, c.lineBox.clientWidth);
    if (c.line.width !== width) c.line.setSize({ width: width, height: 200 });
    if (c.bars && c.bars.width !== width) c.bars.setSize({ width: width, height: 150 });
  }

  const events = new EventSource("events");
  events.addEventListener("init", (e) => setup(JSON.parse(e.data)));
  events.addEventListener("reading", (e) => addReading(JSON.parse(e.data)));
  events.addEventListener("status", (e) => {
    const s = JSON.parse(e.data);
    if (cards[s.m]) showStatus(cards[s.m], s);
  });
  events.addEventListener("summary", (e) => showSummary(JSON.parse(e.data)));
  events.onopen = () => { link.textContent = "live"; link.classList.remove("down"); };
  events.onerror = () => { link.textContent = "reconnecting…"; link.classList.add("down"); };
})();
