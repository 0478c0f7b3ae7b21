"""The http: server against hostile or clumsy clients, with the real service on loopback: slow and
oversized requests, resets, a foreign Host, and the optional token (with urllib, a real Prometheus
and a real Chromium)."""

from __future__ import annotations

import datetime as dt
import os
import socket
import struct
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for
from tests.test_web import METER, Prometheus, get, http_config, sample, serving
from wattchecker_client.pageauth import cookie_value

pytest.importorskip("prometheus_client", reason="pip install 'wattchecker-client[http]'")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

TOKEN = "s3cret-token-for-the-test"


def status_field(pid: int, field: str) -> int:
    """A number from /proc/PID/status (Threads:, VmHWM: in kB, ...)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field}: line")


def threads_of(pid: int) -> int:
    return status_field(pid, "Threads")


def rows_by_second(data_dir: Path) -> set:
    """The seconds the CSV file holds a row for."""
    path = data_dir / "wattchecker-data.csv"
    text = path.read_text() if path.exists() else ""
    return {line.split(",", 1)[0] for line in text.splitlines() if line}


def request(port: int, head: bytes, timeout: float = 5) -> bytes:
    """What the server answers to ``head`` sent as is, up to its closing the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        chunks = []
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def status_line(answer: bytes) -> str:
    return answer.split(b"\r\n", 1)[0].decode()


def started(tmp_path: Path, simulator, daemons, extra: str = "", **general):
    sim = simulator()
    port = free_port()
    config = http_config(tmp_path, sim.addresses[0], port, **general)
    config.write_text(config.read_text() + extra)
    daemon = daemons(config, tmp_path)
    wait_for(lambda: get_any(port, "/healthz") == 200, 60, what="a healthy service")
    return daemon, port


def get_any(port: int, path: str):
    try:
        return get(f"http://127.0.0.1:{port}{path}")[0]
    except OSError:
        return None


# --- bounds ---------------------------------------------------------------------------------------------


def test_150_slow_clients_hold_few_threads_and_metrics_and_rows_carry_on(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons)
    idle_threads = threads_of(daemon.proc.pid)
    before = rows_by_second(tmp_path / "data")
    first_second = time.time()
    slow = []
    for n in range(150):  # each sends a request line, then a header a byte at a time
        sock = socket.socket()
        sock.setblocking(False)
        sock.connect_ex(("127.0.0.1", port))
        slow.append(sock)
    time.sleep(0.5)
    for sock in slow:
        try:
            sock.send(b"GET /metrics HTTP/1.1\r\n")
        except OSError:
            pass  # refused or cut off already: what the bound is for
    most_threads, scrapes = 0, 0
    for tick in range(15):
        for sock in slow:
            try:
                sock.send(b"X")
            except OSError:
                pass
        most_threads = max(most_threads, threads_of(daemon.proc.pid))
        # A scrape gets through while they trickle: within 8 s, under the 10 s a request head is given,
        # so it was not merely let in once a slow client was cut off (it takes milliseconds when idle).
        with socket.create_connection(("127.0.0.1", port), timeout=8) as sock:
            sock.settimeout(8)
            sock.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            answer = b""
            while not answer.endswith(b"\n") or b"wattchecker_power_watts" not in answer:
                chunk = sock.recv(65536)
                if not chunk:
                    break
                answer += chunk
        assert status_line(answer) == "HTTP/1.0 200 OK"
        assert b'wattchecker_power_watts{meter="%s",' % METER.encode() in answer
        scrapes += 1
        time.sleep(1)
    for sock in slow:
        sock.close()
    last_second = time.time()
    print(f"threads: {idle_threads} idle, at most {most_threads} with 150 slow clients; {scrapes} scrapes answered; "
          f"peak RSS {status_field(daemon.proc.pid, 'VmHWM') / 1024:.1f} MB (the unit's TasksMax and MemoryMax)")
    assert most_threads <= 64
    # Rows for at least 90 % of the seconds the slow clients trickled (the flush lags by a second or two).
    wait_for(lambda: len(rows_by_second(tmp_path / "data") - before) >= 0.9 * (last_second - first_second), 60,
             what="rows for 90 % of the seconds")
    assert "Traceback" not in daemon.stderr()
    assert daemon.stop() == 0


def test_a_trickled_or_oversized_request_head_is_cut_off(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons)
    huge = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    answer = request(port, huge)
    assert b"200 OK" not in answer  # closed without serving it
    # One header byte a second, for longer than the deadline: the server closes on its own.
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\n")
        closed = False
        for _ in range(25):
            try:
                sock.sendall(b"X")
                time.sleep(1)
                sock.setblocking(False)
                try:
                    closed = sock.recv(100) == b""
                except BlockingIOError:
                    pass
                sock.setblocking(True)
            except OSError:
                closed = True
            if closed:
                break
        assert closed, "a request head trickled for 25 s was still being read"
    assert get_any(port, "/metrics") == 200
    assert "Traceback" not in daemon.stderr()
    assert daemon.stop() == 0


def test_100_resets_mid_response_leave_no_traceback(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons, "  \n")
    for n in range(100):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
        sock.sendall(b"GET /static/uPlot.iife.min.js HTTP/1.1\r\nHost: localhost\r\n\r\n" if n % 2 else
                     b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        sock.recv(10)  # the response has begun
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # an RST, not a FIN
    assert get_any(port, "/metrics") == 200
    assert daemon.stop() == 0
    err = daemon.stderr()
    assert "Traceback" not in err and "ConnectionResetError" not in err and "BrokenPipe" not in err


def test_events_are_capped_per_client_and_every_loopback_address_is_one_client(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons)
    streams = []
    for n in range(1, 6):
        sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(f"127.0.0.{n}", 0))
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        streams.append((sock, sock.recv(100)))
    assert [status_line(first) for _, first in streams] == ["HTTP/1.0 200 OK"] * 4 + [
        "HTTP/1.0 503 Service Unavailable"]
    for sock, _ in streams:
        sock.close()
    assert daemon.stop() == 0


def test_a_newcomer_ends_the_largest_holders_oldest_stream_through_the_real_handler(tmp_path):
    """Two clients (127.0.0.1 and 127.0.0.2, told apart here: the service folds loopback into one), two slots."""
    from wattchecker_client.config import parse_config
    from wattchecker_client.daemon import Daemon
    from wattchecker_client.pageslots import StreamSlots

    port = free_port()
    config = parse_config(f"general:\n  data_dir: {tmp_path / 'data'}\n  log_file: null\n"
                          f"device:\n  address: 'sim://'\nhttp:\n  listen: 127.0.0.1:{port}\n")
    daemon = Daemon(config)
    daemon.web.streams = StreamSlots(total=2, per_client=2, key=str)
    runner = threading.Thread(target=daemon.run)
    runner.start()

    def open_stream(source: str) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", port), timeout=30, source_address=(source, 0))
        sock.sendall(b"GET /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
        return sock

    def read_to_end(sock: socket.socket) -> bytes:
        """Up to the server's closing; a stream still open after 30 s (keepalives every 15 s) fails the test."""
        data, deadline = b"", time.monotonic() + 30
        sock.settimeout(5)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                continue
            if not chunk:
                return data
            data += chunk
        raise AssertionError(f"the stream stayed open: {data[-200:]!r}")

    try:
        wait_for(lambda: get_any(port, "/healthz") == 200, 60, what="a healthy service")
        first = open_stream("127.0.0.1")  # held before the second is opened: the oldest, for sure
        assert status_line(first.recv(100)) == "HTTP/1.0 200 OK"
        wait_for(lambda: daemon.web.streams.held() == {"127.0.0.1": 1}, 10, what="the first stream held")
        second = open_stream("127.0.0.1")
        assert status_line(second.recv(100)) == "HTTP/1.0 200 OK"
        wait_for(lambda: daemon.web.streams.held() == {"127.0.0.1": 2}, 10, what="both streams held")
        newcomer = open_stream("127.0.0.2")
        assert status_line(newcomer.recv(100)) == "HTTP/1.0 200 OK"
        assert b"event: init" in read_to_end(first)  # the oldest page's stream ended: EOF
        assert daemon.web.streams.held() == {"127.0.0.1": 1, "127.0.0.2": 1}
        again = open_stream("127.0.0.1")  # its browser reconnects: refused while the shares are even
        assert status_line(read_to_end(again)) == "HTTP/1.0 503 Service Unavailable"
        for sock in (first, second, newcomer, again):
            sock.close()
    finally:
        daemon.stop.set()
        runner.join(60)
    assert not runner.is_alive()
    assert daemon.web.streams.taken_over == 1


# --- Host ------------------------------------------------------------------------------------------------


def test_a_foreign_host_is_refused_and_allowed_hosts_let_a_name_in(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons, "  allowed_hosts: [pi.local]\n")
    for host, expected in [("attacker.example", "421"), (f"attacker.example:{port}", "421"),
                           (f"localhost:{port}", "200"), (f"127.0.0.1:{port}", "200"), (f"[::1]:{port}", "200"),
                           (f"pi.local:{port}", "200"), ("192.168.1.5", "421"), (f"localhost.attacker.example", "421")]:
        answer = request(port, f"GET /api/page HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        assert status_line(answer).split()[1] == expected, host
    answer = request(port, b"GET /healthz HTTP/1.1\r\nHost: attacker.example\r\n\r\n")
    assert status_line(answer) == "HTTP/1.0 421 Misdirected Request"
    assert daemon.stop() == 0


# --- the token -------------------------------------------------------------------------------------------


def token_file(tmp_path: Path, mode: int = 0o640) -> Path:
    path = tmp_path / "http-token"
    path.write_text(TOKEN + "\n")
    path.chmod(mode)
    return path


def test_the_token_bearer_cookie_and_refusals(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons, f"  auth_token_file: {token_file(tmp_path)}\n",
                           log_level="DEBUG")
    base = f"http://127.0.0.1:{port}"
    for path in ("/", "/metrics", "/api/page", "/events", "/static/uPlot.iife.min.js"):
        answer = request(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
        assert status_line(answer) == "HTTP/1.0 401 Unauthorized", path
        answer = request(port, f"GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer wrong\r\n"
                               f"Cookie: wattchecker_token=wrong\r\n\r\n".encode())
        assert status_line(answer) == "HTTP/1.0 401 Unauthorized", path
    assert get(base + "/healthz")[0] == 200  # for systemd and load balancers, no secret
    answer = request(port, f"GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
                     .encode())
    assert status_line(answer) == "HTTP/1.0 200 OK" and b"wattchecker_power_watts" in answer
    answer = request(port, f"GET /?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
    assert status_line(answer) == "HTTP/1.0 303 See Other"
    assert b"\r\nLocation: /\r\n" in answer
    cookie = f"wattchecker_page={cookie_value(TOKEN)}"
    assert f"Set-Cookie: {cookie}; Path=/; HttpOnly; SameSite=Strict".encode() in answer
    assert b"Set-Cookie: wattchecker_token=; Max-Age=0; Path=/" in answer  # the old raw-token cookie goes
    assert TOKEN.encode() not in answer
    # A wrong token leaves the address too, for a 401 on the clean one; so does a second one beside a cookie.
    for head in ("GET /?token=wrong HTTP/1.1\r\nHost: localhost\r\n\r\n",
                 f"GET /?token={TOKEN} HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n"):
        answer = request(port, head.encode())
        assert status_line(answer) == "HTTP/1.0 303 See Other" and b"\r\nLocation: /\r\n" in answer
    for cookies, expected in [(cookie, "200 OK"), (f"wattchecker_token={TOKEN}", "401 Unauthorized"),
                              (f'prefs={{"theme":"dark"}}; {cookie}; x', "200 OK")]:
        answer = request(port, f"GET /api/page HTTP/1.1\r\nHost: localhost\r\nCookie: {cookies}\r\n"
                               f"Connection: close\r\n\r\n".encode())
        assert status_line(answer) == f"HTTP/1.0 {expected}", cookies
    assert daemon.stop() == 0
    logs = daemon.stderr() + "".join(path.read_text() for path in (tmp_path / "data").glob("*.log*"))
    assert "GET /?token=<hidden> HTTP/1.1" in logs  # the DEBUG request lines, with the token blanked
    assert TOKEN not in logs and cookie_value(TOKEN) not in logs


def test_prometheus_scrapes_with_the_token_and_not_without(tmp_path, simulator, daemons):
    daemon, port = started(tmp_path, simulator, daemons, f"  auth_token_file: {token_file(tmp_path)}\n")
    (tmp_path / "prom-good").mkdir()
    (tmp_path / "prom-bad").mkdir()
    (tmp_path / "scrape-token").write_text(TOKEN + "\n")
    (tmp_path / "wrong-token").write_text("wrong\n")
    with Prometheus(tmp_path / "prom-good", port, f"{tmp_path / 'scrape-token'}") as good, \
            Prometheus(tmp_path / "prom-bad", port, f"{tmp_path / 'wrong-token'}") as bad:
        found = wait_for(lambda: good.query('wattchecker_power_watts{meter="%s"}' % METER), 60,
                         what="Prometheus with the token to scrape power")
        assert float(found[0]["value"][1]) >= 0
        up = wait_for(lambda: bad.query('up{job="wattchecker"}'), 60, what="the wrong token's scrape result")
        assert up[0]["value"][1] == "0"
        assert bad.query('wattchecker_power_watts') == []
    assert daemon.stop() == 0


def test_the_page_with_the_token_in_a_real_browser(tmp_path, simulator, daemons):
    from tests.browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("needs a headless browser: apt-get install chromium")
    daemon, port = started(tmp_path, simulator, daemons, f"  auth_token_file: {token_file(tmp_path)}\n")
    browser = Browser(tmp_path / "chromium", 1280, 800)
    try:
        browser.open(f"http://127.0.0.1:{port}/")
        wait_for(lambda: "token" in (browser.evaluate("document.body ? document.body.innerText : ''") or ""), 30,
                 what="the refusal without a token")
        browser.open(f"http://127.0.0.1:{port}/?token={TOKEN}")
        power = "document.querySelector('.meter .power')?.textContent || ''"
        wait_for(lambda: (lambda p: p if p and p[0].isdigit() else None)(browser.evaluate(power)), 30,
                 what="a power value on the page, live through the cookie")
        assert browser.evaluate("location.search") == ""  # the token left the address bar
        assert browser.evaluate("document.cookie") == ""  # HttpOnly: no script on the page can read it
        # The only errors: the first visit's refusals, before the token.
        refused = {f"http://127.0.0.1:{port}{path}: Failed to load resource: the server responded with a status of "
                   "401 (Unauthorized)" for path in ("/", "/favicon.ico")}
        assert set(browser.errors()) <= refused
    finally:
        browser.close()
    assert daemon.stop() == 0


class CookieSetter:
    """Another app on another port of the same host, whose page sets a cookie SimpleCookie cannot read."""

    def __init__(self) -> None:
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = b"<html><body>other app</body></html>"
                self.send_response(200)
                self.send_header("Set-Cookie", 'prefs={"theme":"dark"}; Path=/')
                self.send_header("Content-Type", "text/html")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_another_apps_cookie_on_the_same_host_does_not_lock_the_page_in_a_real_browser(tmp_path, simulator, daemons):
    from tests.browser import Browser, chromium_path

    if chromium_path() is None:
        pytest.skip("needs a headless browser: apt-get install chromium")
    daemon, port = started(tmp_path, simulator, daemons, f"  auth_token_file: {token_file(tmp_path)}\n")
    other = CookieSetter()
    browser = Browser(tmp_path / "chromium", 1280, 800)
    power = "document.querySelector('.meter .power')?.textContent || ''"
    try:
        # Before and after the page's own cookie: the other app's cookie is sent to every port of 127.0.0.1.
        for first, then in [(f"http://127.0.0.1:{other.port}/", f"http://127.0.0.1:{port}/?token={TOKEN}"),
                            (f"http://127.0.0.1:{port}/", f"http://127.0.0.1:{other.port}/")]:
            browser.open(first)
            wait_for(lambda: browser.evaluate("document.readyState") == "complete", 30, what=f"{first} loaded")
            browser.open(then)
            wait_for(lambda: browser.evaluate("document.readyState") == "complete", 30, what=f"{then} loaded")
        cookies = browser.call("Network.getAllCookies", session=True)["cookies"]
        assert {c["name"] for c in cookies} == {"prefs", "wattchecker_page"}
        assert all(TOKEN not in c["value"] for c in cookies)
        browser.open(f"http://127.0.0.1:{port}/")  # the page, with both cookies sent
        wait_for(lambda: (lambda p: p if p and p[0].isdigit() else None)(browser.evaluate(power)), 30,
                 what="a power value on the page, live through its cookie beside the other app's")
        assert browser.evaluate("location.href") == f"http://127.0.0.1:{port}/"
    finally:
        browser.close()
        other.close()
    assert daemon.stop() == 0


@pytest.mark.process
def test_a_token_file_others_can_read_warns_and_an_empty_one_stops(tmp_path):
    from tests.conftest import line_of, run_cli, write_config

    config = write_config(tmp_path / "config.yaml", tmp_path / "data", "sim://")
    token = token_file(tmp_path, 0o644)
    config.write_text(config.read_text() + f"http:\n  listen: 127.0.0.1:{free_port()}\n  auth_token_file: {token}\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert f"wattchecker-client: warning: {token} is readable by other users (mode 644): chmod o-rwx it" in \
        result.stderr.splitlines()
    token.write_text("\n")
    result = run_cli("check-config", "--config", str(config))
    assert result.returncode == 2
    assert result.stderr == (f"wattchecker-client: error: {config}:{line_of(config, 'auth_token_file')}: "
                             f"http.auth_token_file: {token} is empty: write the secret there\n")
