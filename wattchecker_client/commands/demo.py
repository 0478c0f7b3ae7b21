"""`demo`: the service against the built-in simulated meter, in ./demo-data: a tour that leads on.

It writes the config it runs with (``demo-data/config.yaml``), so every later
command can be pointed at the same data; serves the live page when the
``http`` extra is installed (else says the one command that adds it); and on
Ctrl-C prints the next commands, each runnable as printed from the same folder.
"""

from __future__ import annotations

import argparse
import importlib
import os
import socket
import sys
from typing import List, Optional

from ..config import load_config
from ..formats import json_line
from ..protocol import DEFAULT_MODEL, MODELS, Measurement, dialect
from .common import EXIT_OK, positive_float
from .run import serve

PAGE_PORT = 9750  # http.listen's default, so the address is the one the README shows


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the service against the built-in simulated meter")
    p.add_argument("--data-dir", default="demo-data", help="where to write files (default ./demo-data)")
    p.add_argument("--speed", type=positive_float, default=60.0,
                   help="the simulated meter's clock speed: 60 closes an hour a minute (default 60)")
    p.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL,
                   help="the meter to simulate: btwattch1 (REX-BTWATTCH1) or btwattch2 (RS-BTWATTCH2)")
    p.add_argument("--port", type=int, default=PAGE_PORT,
                   help=f"the live page's port on 127.0.0.1 (default {PAGE_PORT}; a free one if it is taken)")
    p.set_defaults(func=run)


DEMO_CONFIG = """\
# Written by `wattchecker-client demo`, which runs the service with exactly this
# (and rewrites it at each start). Point any command at it:
#   wattchecker-client report --config {config}
#   wattchecker-client run --config {config}
general:
  data_dir: .                 # this file's folder: relative paths start where the config is
  data_buffer_size: 10        # seconds of rows kept in memory between writes
  data_format: [csv, json]
  poll_interval: {poll:g}     # 1 / the meter's clock speed: one poll per meter second (a real meter: 1)
  status_interval: 30
device:
  address: "sim://?clock_speed={speed:g}"   # a simulated meter; a real one: its MAC, e.g. "00:0C:BF:12:34:56"
  model: {model}
"""

PAGE = """\
http:
  listen: 127.0.0.1:{port}    # the live page, /metrics and /healthz
"""


def run(args: argparse.Namespace) -> int:
    data_dir = args.data_dir
    os.makedirs(data_dir, exist_ok=True)
    config_path = os.path.join(data_dir, "config.yaml")
    port = page_port(args.port) if has_module("prometheus_client") else None
    text = DEMO_CONFIG.format(config=config_path, poll=1 / args.speed, speed=args.speed, model=args.model)
    with open(config_path, "w", encoding="utf-8") as f:
        f.write(text + (PAGE.format(port=port) if port else ""))
    config = load_config(config_path)
    every = max(1, round(args.speed))
    seen = [0]

    def echo(name: str, measurement: Measurement) -> None:
        seen[0] += 1
        if seen[0] % every == 1 or every == 1:
            print(json_line(measurement), flush=True)

    say(f"a simulated {dialect(config.devices[0].model).product} whose clock runs {args.speed:g}x real time (an hour file "
        f"closes every {60 / args.speed:g} min); config {config_path}, files in {data_dir}; one reading in "
        f"{every} shown; Ctrl-C to stop")
    if port:
        say(f"the live page: http://127.0.0.1:{port}/")
    else:
        say(f"the live page needs the http extra: {install_extra('http')}")
    status = serve(config, echo=echo)
    if status == EXIT_OK:
        for line in next_steps(config_path, port):
            say(line)
    return status


def say(line: str) -> None:
    print(f"demo: {line}", file=sys.stderr, flush=True)


def next_steps(config_path: str, port: Optional[int]) -> List[str]:
    """The tour's next three commands, runnable as printed from this folder."""
    me = command_name()
    chart = os.path.join(os.path.dirname(config_path), "chart.png")
    report = f"{me} report --config {config_path} --png {chart}"
    page = f"{me} run --config {config_path}"
    if not has_module("matplotlib"):
        report = f"{install_extra('report')} && {report}"
    if port is None:
        page = f"{install_extra('http')} && {page}"
    url = f"http://127.0.0.1:{port or PAGE_PORT}/"
    own = "your own meter: a config.yaml with its address (config_sample.yaml shows every key), checked with"
    return [
        "next:",
        f"  the report, with its chart in {chart}:  {report}",
        f"  the service again, the page at {url} (Ctrl-C stops it):  {page}",
        f"  {own}:  {me} check-config --config config.yaml",
    ]


def has_module(name: str) -> bool:
    """Whether ``name`` imports here (an extra's library); the page would import it anyway."""
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


def page_port(wanted: int) -> int:
    """``wanted`` if it is free on 127.0.0.1, else a free port: a demo should not stop on a busy port."""
    for port in (wanted, 0):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return probe.getsockname()[1]
    raise OSError("no free port on 127.0.0.1")


def command_name() -> str:
    """How this program was started, as the user would type it again from here."""
    argv0 = sys.argv[0]
    if os.path.basename(argv0) == "wattchecker-client":
        import shutil  # here: at the top it would load bz2 and lzma (1.6 MB) into every `run` through cli.py

        if shutil.which("wattchecker-client") == os.path.abspath(argv0):
            return "wattchecker-client"
        return runnable(shortest(argv0))
    return f"{runnable(shortest(sys.executable))} -m wattchecker_client"


def install_extra(extra: str) -> str:
    """The one command that adds ``extra`` to this installation: from the clone when it is one."""
    pip = os.path.join(os.path.dirname(sys.executable), "pip")
    pip = runnable(shortest(pip)) if os.path.exists(pip) else f"{runnable(shortest(sys.executable))} -m pip"
    source = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    clone = os.path.dirname(source)
    if os.path.exists(os.path.join(clone, "setup.py")):
        return f"{pip} install -e '{shortest(clone)}[{extra}]'"
    return f"{pip} install 'wattchecker-client[{extra}]'"


def runnable(path: str) -> str:
    """A program path the shell runs as it is, not looked up on PATH."""
    return path if os.sep in path else os.path.join(".", path)


def shortest(path: str) -> str:
    """``path`` relative to here when it lies below here (.venv/bin/pip), else absolute."""
    absolute = os.path.abspath(path)
    relative = os.path.relpath(absolute)
    if relative == ".":
        return "."
    return relative if not relative.startswith("..") else absolute
