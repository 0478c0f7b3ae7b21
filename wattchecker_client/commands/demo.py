"""`demo`: the service against the built-in simulated meter, in ./demo-data."""

from __future__ import annotations

import argparse
import json
import os
import sys

from ..config import parse_config
from ..formats import json_line
from ..protocol import DEFAULT_MODEL, MODELS, Measurement
from .common import positive_float
from .run import serve


def add(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the service against the built-in simulated meter")
    p.add_argument("--data-dir", default="demo-data", help="where to write files (default ./demo-data)")
    p.add_argument("--speed", type=positive_float, default=60.0,
                   help="the simulated meter's clock speed: 60 closes an hour a minute (default 60)")
    p.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL,
                   help="the meter to simulate: btwattch1 (REX-BTWATTCH1) or btwattch2 (RS-BTWATTCH2)")
    p.set_defaults(func=run)


DEMO_CONFIG = """\
general:
  data_dir: {data_dir}
  data_buffer_size: 10
  data_format: [csv, json]
  poll_interval: {poll}
  status_interval: 30
device:
  address: "sim://?clock_speed={speed}"
  model: {model}
"""


def run(args: argparse.Namespace) -> int:
    data_dir = os.path.abspath(args.data_dir)
    text = DEMO_CONFIG.format(data_dir=json.dumps(data_dir), poll=1 / args.speed, speed=args.speed,
                              model=args.model)
    config = parse_config(text, "<demo>")
    every = max(1, round(args.speed))
    seen = [0]

    def echo(name: str, measurement: Measurement) -> None:
        seen[0] += 1
        if seen[0] % every == 1 or every == 1:
            print(json_line(measurement), flush=True)

    print(f"demo: a simulated {config.devices[0].model} whose clock runs {args.speed:g}x real time; files in "
          f"{data_dir}; showing one reading in {every}; Ctrl-C to stop", file=sys.stderr, flush=True)
    return serve(config, echo=echo)
