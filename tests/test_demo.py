"""The demo as a newcomer meets it: it serves the page, writes its config, and its next commands work as printed."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
from pathlib import Path
from typing import Dict, List

import pytest

from wattchecker_client.config import load_config

from .conftest import ROOT, cli, free_port, wait_for
from .test_web import get, serving

pytestmark = pytest.mark.process


def this_checkout(**extra: str) -> Dict[str, str]:
    """The environment of a user's shell in which this checkout's code is the installed one, from any folder."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([*extra.values(), str(ROOT)])}


def start_demo(folder: Path, env: Dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen(cli("demo", *args), cwd=folder, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def stop_demo(demo: subprocess.Popen) -> List[str]:
    """Ctrl-C, then the demo's own lines (``demo: ...``) of everything it said."""
    demo.send_signal(signal.SIGINT)
    out, err = demo.communicate(timeout=60)  # a failure bound: it stops in about a second
    assert demo.returncode == 0, err
    return [line for line in err.splitlines() if line.startswith("demo: ")]


def next_commands(said: List[str]) -> List[str]:
    """The commands after ``demo: next:``, each the text after its label's two spaces."""
    steps = said[said.index("demo: next:") + 1:]
    assert len(steps) == 3, said
    return [step.rsplit(":  ", 1)[1] for step in steps]


def test_the_demo_serves_the_page_and_its_next_commands_work_as_printed(tmp_path):
    env = this_checkout()
    port = free_port()
    demo = start_demo(tmp_path, env, "--speed", "600", "--port", str(port))
    try:
        wait_for(serving(port), what="the demo's page")
        status, _, page = get(f"http://127.0.0.1:{port}/")
        assert status == 200 and b"uPlot" in page
        data = tmp_path / "demo-data"
        wait_for(lambda: list(data.glob("wattchecker-data.csv.*.gz")), timeout=120, what="an hour closed")
    finally:
        said = stop_demo(demo)
    assert said[1] == f"demo: the live page: http://127.0.0.1:{port}/"
    config = load_config(str(data / "config.yaml"))  # the config it ran with, as it wrote it
    assert config.general.data_dir == data and config.http.port == port
    assert config.devices[0].address == "sim://?clock_speed=600"

    report, page_again, check = next_commands(said)
    done = subprocess.run(report, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("meter wattchecker: Asia/Tokyo days, 25 JPY/kWh\n")
    assert done.stdout.endswith("chart: demo-data/chart.png\n")
    assert (data / "chart.png").read_bytes().startswith(b"\x89PNG\r\n\x1a\n")

    service = subprocess.Popen(shlex.split(page_again), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    try:
        wait_for(serving(port), what="the page served again")
        assert get(f"http://127.0.0.1:{port}/")[0] == 200
    finally:
        service.send_signal(signal.SIGTERM)
        _, err = service.communicate(timeout=60)
    assert service.returncode == 0, err
    assert f"the service again, the page at http://127.0.0.1:{port}/" in said[-2]

    (tmp_path / "config.yaml").write_text('device:\n  address: "00:0C:BF:12:34:56"\n  channel: 6\n')  # "yours"
    done = subprocess.run(check, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("config.yaml: OK\n  meters: wattchecker at 00:0C:BF:12:34:56 channel 6")


def test_without_the_http_extra_the_demo_names_the_one_command_that_adds_it(tmp_path):
    hidden = tmp_path / "site" / "prometheus_client"  # as if not installed: first on the path, and broken
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('No module named prometheus_client')\n")
    env = this_checkout(site=str(tmp_path / "site"))
    demo = start_demo(tmp_path, env, "--speed", "600")
    try:
        assert demo.stdout.readline().startswith('{"datetime": ')  # it runs all the same
    finally:
        said = stop_demo(demo)
    pip = Path(cli()[0]).parent / "pip"  # the demo's own Python's
    add_http = f"{pip} install -e '{ROOT}[http]'"
    assert said[1] == f"demo: the live page needs the http extra: {add_http}"
    assert "http:" not in (tmp_path / "demo-data" / "config.yaml").read_text()
    assert next_commands(said)[1].startswith(f"{add_http} && ")
