"""The read-only HTTP server: the live page and its event stream, /metrics and /healthz.

One ``ThreadingHTTPServer`` in its own thread, a thread per request. It only
reads what the other threads keep (the live state, their counters); it never
writes, switches or reads a file per update, so an open page or a scrape
cannot slow a reader or the writer. The page's updates are server-sent
events: one long ``text/event-stream`` response per open page, woken by the
live state whenever a reading arrives.
"""

from __future__ import annotations

import errno
import importlib
import io
import ipaddress
import json
import logging
import socket
import socketserver
import sys
import threading
from collections import Counter
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

from .clock import Clock, utc_epoch
from .config import Config, HttpConfig
from .dashboard import STALE_AFTER, EnergyView, current
from .errors import SetupError
from .pageauth import OK, REDIRECT, check, redacted
from .pageslots import StreamSlots
from .secretfile import read_secret

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
         ".css": "text/css; charset=utf-8", ".png": "image/png", ".txt": "text/plain; charset=utf-8",
         ".svg": "image/svg+xml"}
HEADERS = {  # the page loads nothing from elsewhere and cannot be framed
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
                               "frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
MAX_CONNECTIONS = 32  # connections served at once (a thread each); past it, closed at once
REQUEST_QUEUE = 64  # connections the kernel holds for accept()
HEADER_DEADLINE = 10.0  # seconds for the request line and headers together, however they trickle in
MAX_HEADER_BYTES = 16384  # request line and headers; a GET needs far less
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
QUIET_ERRORS = (ConnectionError, TimeoutError, socket.timeout)  # a client went away: not the server's fault
WAKE_EVERY = 2.0  # seconds an idle stream sleeps before looking at staleness again
SUMMARY_EVERY = 10.0  # seconds between today's-kWh/bars updates on an open page
KEEPALIVE_EVERY = 15.0
SOCKET_TIMEOUT = 30.0  # a client that reads nothing for this long is dropped
EXTRA_HINT = "pip install 'wattchecker-client[http]'"


def check_setup(section: HttpConfig) -> List[str]:
    """Start-up's and check-config's check: the library is there; warn when the LAN can see it."""
    try:
        importlib.import_module("prometheus_client")
    except ImportError:
        raise SetupError(f"needs the prometheus_client library: {EXTRA_HINT}", key="http") from None
    warnings = []
    if section.auth_token_file is not None:
        mode_warning = read_secret("http.auth_token_file", section.auth_token_file)[1]
        warnings += [mode_warning] if mode_warning else []
    elif not _loopback(section.host):
        warnings.append(f"http.listen: {section.listen} is reachable from other machines; "
                        "the page and /metrics have no password (read-only; http.auth_token_file sets one)")
    return warnings


def host_allowed(host_header: Optional[str], section: HttpConfig) -> bool:
    """Whether a request's Host names this server, the guard against DNS rebinding.

    A page on another site can make a browser send requests here under that
    site's name; only the Host header tells. A loopback bind answers to the
    loopback names; any other bind also to IP addresses (a rebinding needs a
    name), and either to the names in http.allowed_hosts. No Host at all is
    not a browser (they always send one), so it passes.
    """
    if host_header is None:
        return True
    host = host_header.strip().lower()
    name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
    if not name or (port and port != str(section.port)):
        name = host
    if name in LOOPBACK_NAMES or name in section.allowed_hosts:
        return True
    if _loopback(section.host):
        return False
    try:
        ipaddress.ip_address(name.strip("[]"))
    except ValueError:
        return False
    return True


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Sources:
    """What the server reads; each part is owned and updated by another thread."""

    live: object  # live.LiveState
    meter_stats: Callable[[], Dict[str, object]]  # meter name -> MeterStats
    writer: object  # writer.Writer
    uploader: Optional[object]  # uploader.Uploader, when bigquery: is configured
    health: Callable[[], List[str]]  # the daemon's problems (dead or silent threads); [] when fine
    meter_ids: Optional[Dict[str, str]] = None  # meter name -> id (identity.py), a /metrics label
    ble_stats: Callable[[], Dict[str, object]] = dict  # meter name -> ble.BleStats, for RS-BTWATTCH2s
    influx: Optional[object] = None  # upload.influx_uploader.InfluxUploader, when influxdb: is configured


class _Server(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS served at once, a thread each; a reset or a timeout is no error.

    When all are taken, the one that has been sending its request head the
    longest is cut off for the newcomer: slow clients then cannot keep a
    scrape or a page out, and only whole, answered requests are ever refused.
    """

    daemon_threads = True
    request_queue_size = REQUEST_QUEUE

    def __init__(self, *args, **kwargs) -> None:
        self.lock = threading.Lock()
        self.active = 0
        self.refused = 0  # connections closed at once because MAX_CONNECTIONS were open
        self.dropped = 0  # clients that went away or were too slow
        self.errors_seen: Counter = Counter()
        self.heads: Dict[socket.socket, None] = {}  # connections still sending their request head, oldest first
        super().__init__(*args, **kwargs)

    def process_request(self, request, client_address) -> None:
        with self.lock:
            slowest = next(iter(self.heads), None) if self.active >= MAX_CONNECTIONS else None
            if slowest is not None:
                del self.heads[slowest]
            full = self.active >= MAX_CONNECTIONS and slowest is None
            if full:
                self.refused += 1
            else:
                self.active += 1
        if slowest is not None:
            _cut(slowest)  # its thread sees the end of the stream and finishes
        if full:
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except RuntimeError:  # no thread to be had: as if full
            with self.lock:
                self.active -= 1
                self.refused += 1
            self.shutdown_request(request)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.lock:
                self.active -= 1
                self.heads.pop(request, None)

    def head_started(self, request: socket.socket, started: bool) -> None:
        with self.lock:
            if started:
                self.heads[request] = None
            else:
                self.heads.pop(request, None)

    def handle_error(self, request, client_address) -> None:
        """Quiet for a client gone or too slow; anything else logged, with its traceback the first time."""
        exc = sys.exc_info()[1]
        if isinstance(exc, QUIET_ERRORS):
            with self.lock:
                self.dropped += 1
            return
        kind = type(exc).__name__
        self.errors_seen[kind] += 1
        log.error("http: a request from %s failed: %s: %s", client_address[0], kind, exc,
                  exc_info=self.errors_seen[kind] == 1)

    def server_bind(self) -> None:
        # HTTPServer.server_bind looks up the host's FQDN: a DNS query that can
        # hang a Pi without network. The name is not needed.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]


def _cut(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already gone


class _Server6(_Server):
    address_family = socket.AF_INET6


class WebServer:
    """Binds at ``bind`` (SetupError naming the port if it cannot), serves from ``start`` until ``stop``."""

    def __init__(self, config: Config, sources: Sources, clock: Clock) -> None:
        assert config.http is not None
        self.config = config
        self.section = config.http
        self.sources = sources
        self.clock = clock
        self.energy = EnergyView(config, sources.live, clock)
        self.stopping = threading.Event()
        self.streams = StreamSlots()  # open pages' event streams, shared fairly between clients
        self.token: Optional[str] = None
        self.static = _load_static()
        self.metrics: Optional[Callable[[], Tuple[bytes, str]]] = None
        self._httpd: Optional[_Server] = None
        self._thread: Optional[threading.Thread] = None

    def bind(self) -> None:
        """Take the port first, so a port in use stops start-up before anything else starts."""
        self.metrics = _metrics_renderer(self.sources, self.clock, self.energy.summary)
        if self.section.auth_token_file is not None:
            self.token = read_secret("http.auth_token_file", self.section.auth_token_file)[0]
        server_class = _Server6 if ":" in self.section.host else _Server
        try:
            httpd = server_class((self.section.host, self.section.port), _Handler)
        except OSError as exc:
            raise SetupError(_bind_problem(self.section, exc)) from None
        httpd.app = self  # type: ignore[attr-defined]
        self._httpd = httpd

    def start(self) -> None:
        """Serve in a thread of its own (once the live state holds its restored energy)."""
        if self._httpd is None:
            self.bind()
        httpd = self._httpd
        # No poll interval: the loop sleeps until a connection comes (stop pokes it),
        # so an idle server costs no wake-ups at all.
        self._thread = threading.Thread(target=httpd.serve_forever, args=(None,), name="http", daemon=True)
        self._thread.start()
        log.info("serving the live page, /metrics and /healthz on http://%s/", self.address)

    @property
    def address(self) -> str:
        """host:port actually bound (the configured one)."""
        host, port = self._httpd.server_address[:2] if self._httpd else (self.section.host, self.section.port)
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def stop(self) -> None:
        """Stop accepting, end open event streams (they notice within WAKE_EVERY)."""
        self.stopping.set()
        if self._httpd is None:
            return
        if self._thread is not None:
            waiter = threading.Thread(target=self._httpd.shutdown, daemon=True)
            waiter.start()
            while waiter.is_alive():  # the loop sees shutdown's flag once a connection wakes it
                self._poke()
                waiter.join(0.2)
            self._thread.join(5)
        self._httpd.server_close()
        log.info("http: final: refused=%d (all %d connections busy) dropped=%d (clients gone or too slow)",
                 self._httpd.refused, MAX_CONNECTIONS, self._httpd.dropped)

    def _poke(self) -> None:
        host, port = self._httpd.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
        try:
            socket.create_connection((host, port), timeout=1).close()
        except OSError:
            pass

    # --- what the routes return --------------------------------------------------

    def health(self) -> Tuple[bool, dict]:
        """Healthy while the daemon reports no problem and every meter has a fresh reading."""
        problems = list(self.sources.health())
        mono = self.clock.monotonic()
        ages = {}
        for name, state in sorted(self.sources.live.snapshot().items()):
            if state.received_monotonic is None:
                problems.append(f"{name}: no reading yet")
                continue
            ages[name] = round(mono - state.received_monotonic, 1)
            if not state.connected:
                problems.append(f"{name}: not connected")
            elif current(state, mono) is None:
                problems.append(f"{name}: no reading for {ages[name]:.0f} s")
        if problems:
            return False, {"status": "unhealthy", "reason": "; ".join(problems), "reading_age_seconds": ages}
        return True, {"status": "ok", "reading_age_seconds": ages}

    def page_info(self) -> dict:
        """Everything a newly opened page needs: settings, the last hour, status, today's totals."""
        report = self.config.report
        snapshot = self.sources.live.snapshot()
        mono = self.clock.monotonic()
        meters = {}
        for name in (d.name for d in self.config.devices):
            history = self.energy.last_hour(name)
            meters[name] = {
                "history": [[t for t, _ in history], [w for _, w in history]],
                "status": status_of(snapshot[name], mono) if name in snapshot else None,
            }
        return {"timezone": report.timezone, "currency": report.currency, "price": report.price,
                "stale_after": STALE_AFTER, "meters": meters, "summary": self.energy.summary()}


def status_of(state, mono: float) -> dict:
    """One meter's reading now (or none) and whether, and since when, it is connected."""
    now = current(state, mono)
    last = state.measurement
    return {
        "connected": now is not None,
        "since": state.since.strftime("%Y-%m-%dT%H:%M:%SZ") if state.since else None,
        "last": utc_epoch(last.time) if last is not None else None,
        "w": now.watts if now else None,
        "v": now.volts if now else None,
        "a": round(now.milliamps / 1000, 5) if now else None,
        "overloaded": state.overloaded,  # the relay's over-power latch; None without a relay
    }


def _metrics_renderer(sources: Sources, clock: Clock,
                      today: Optional[Callable[[], Dict[str, dict]]] = None) -> Callable[[], Tuple[bytes, str]]:
    """prometheus_client is imported only here: the http extra is needed only when http: is set."""
    from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

    from .metrics import LiveCollector, registry_for

    registry = registry_for(LiveCollector(sources.live, sources.meter_stats, sources.writer, sources.uploader, clock,
                                          sources.meter_ids, sources.ble_stats, today, sources.influx))
    return lambda: (generate_latest(registry), CONTENT_TYPE_LATEST)


def _bind_problem(section: HttpConfig, exc: OSError) -> str:
    where = f"http.listen: {section.listen}"
    if exc.errno == errno.EADDRINUSE:
        return f"{where}: port {section.port} is already in use (another program, or another copy of this one?)"
    if exc.errno == errno.EACCES:
        return f"{where}: not allowed to use port {section.port} (ports below 1024 need privileges; use 9750)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"{where}: {section.host} is not an address of this machine"
    if isinstance(exc, socket.gaierror):
        return f"{where}: cannot resolve {section.host} ({exc.strerror})"
    return f"{where}: cannot listen: {exc.strerror or exc}"


def _load_static() -> Dict[str, Tuple[bytes, str]]:
    """The page's files, read once: path -> (body, content type). Only these are ever served."""
    files = {}
    for path in sorted(STATIC.iterdir()):
        if path.is_file() and path.suffix in TYPES:
            files["/static/" + path.name] = (path.read_bytes(), TYPES[path.suffix])
    files["/"] = files["/static/index.html"]
    # Browsers ask for /favicon.ico whatever the page links (Chromium, late, after a 401 page):
    # the same icon, not a 404 in their console.
    files["/favicon.ico"] = files["/static/icon.svg"]
    return files


class _HeaderBudget(io.RawIOBase):
    """The socket as the request's reader sees it: the head must come whole within a deadline and a size.

    A socket timeout bounds each read, not the request: a client sending a
    byte every few seconds would hold a thread for ever. Before each read the
    timeout is set to what is left of the deadline, and the read is cut to
    what is left of the size. After the head (``open``) only SOCKET_TIMEOUT
    applies, as for any read.
    """

    def __init__(self, sock: socket.socket, clock: Clock) -> None:
        super().__init__()
        self.sock = sock
        self.clock = clock
        self.deadline: Optional[float] = None
        self.budget = 0

    def start(self) -> None:
        self.deadline = self.clock.monotonic() + HEADER_DEADLINE
        self.budget = MAX_HEADER_BYTES

    def open(self) -> None:
        self.deadline = None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.deadline is None:
            self.sock.settimeout(SOCKET_TIMEOUT)
            return self.sock.recv_into(buffer)
        left = self.deadline - self.clock.monotonic()
        if left <= 0:
            raise socket.timeout(f"no complete request within {HEADER_DEADLINE:g} s")
        if self.budget <= 0:
            raise ConnectionAbortedError(f"request head over {MAX_HEADER_BYTES} bytes")
        self.sock.settimeout(min(left, SOCKET_TIMEOUT))
        view = memoryview(buffer)[:self.budget]
        count = self.sock.recv_into(view)
        self.budget -= count
        return count


class _Handler(BaseHTTPRequestHandler):
    """GET and HEAD only; everything else is 405. A foreign Host is 421; without the token, 401."""

    server_version = "wattchecker-client"

    def version_string(self) -> str:
        return self.server_version
    timeout = SOCKET_TIMEOUT

    @property
    def app(self) -> WebServer:
        return self.server.app  # type: ignore[attr-defined]

    def setup(self) -> None:
        super().setup()
        self._budget = _HeaderBudget(self.connection, self.app.clock)
        self.rfile = io.BufferedReader(self._budget)

    def handle_one_request(self) -> None:
        self._budget.start()
        self.server.head_started(self.connection, True)  # type: ignore[attr-defined]
        super().handle_one_request()

    def parse_request(self) -> bool:
        ok = super().parse_request()
        self._budget.open()
        self.server.head_started(self.connection, False)  # type: ignore[attr-defined]
        if ok and not host_allowed(self.headers.get("Host"), self.app.section):
            self._head_only = self.command == "HEAD"
            self._send(HTTPStatus.MISDIRECTED_REQUEST, b"unknown Host: add the name to http.allowed_hosts\n",
                       "text/plain; charset=utf-8", {"Connection": "close"})
            self.close_connection = True
            return False
        return ok

    def _authorised(self, path: str) -> bool:
        """True to go on; otherwise the answer (401, or the redirect that takes ?token= away) is sent."""
        token = None if path == "/healthz" else self.app.token
        answer = check(token, self.path, self.headers.get("Authorization", ""), self.headers.get_all("Cookie") or [])
        if answer.kind == OK:
            return True
        if answer.kind == REDIRECT:
            # The token leaves the address bar (and the history); a right one leaves a cookie that stands for it.
            self._send(HTTPStatus.SEE_OTHER, b"", "text/plain; charset=utf-8",
                       {"Location": answer.location, "Set-Cookie": list(answer.cookies)})
            return False
        self._send(HTTPStatus.UNAUTHORIZED, b"a token is needed: open the page with ?token=..., "
                   b"or send Authorization: Bearer\n", "text/plain; charset=utf-8", {"WWW-Authenticate": "Bearer"})
        return False

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if not self._authorised(path):
            return
        if path == "/metrics":
            body, content_type = self.app.metrics()
            self._send(HTTPStatus.OK, body, content_type)
        elif path == "/healthz":
            ok, state = self.app.health()
            self._send(HTTPStatus.OK if ok else HTTPStatus.SERVICE_UNAVAILABLE, _json_line(state),
                       "application/json")
        elif path == "/api/page":
            self._send(HTTPStatus.OK, _json_line(self.app.page_info()), "application/json")
        elif path == "/events":
            self._events()
        elif path in self.app.static:
            body, content_type = self.app.static[path]
            self._send(HTTPStatus.OK, body, content_type)
        else:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

    def do_HEAD(self) -> None:
        self._head_only = True
        self.do_GET()

    def _refuse(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, b"read-only: GET and HEAD only\n", "text/plain; charset=utf-8",
                   {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _send(self, status: HTTPStatus, body: bytes, content_type: str,
              extra: Optional[Dict[str, object]] = None) -> None:
        """One answer; a header whose value is a list is sent once per item (Set-Cookie)."""
        self.send_response(status)
        for name, value in {**HEADERS, "Content-Type": content_type, "Content-Length": str(len(body)),
                            "Cache-Control": "no-store", **(extra or {})}.items():
            for one in value if isinstance(value, list) else [value]:
                self.send_header(name, one)
        self.end_headers()
        if not getattr(self, "_head_only", False):
            self.wfile.write(body)

    def _events(self) -> None:
        ticket = self.app.streams.take(self.client_address[0])
        if ticket is None:
            self._send(HTTPStatus.SERVICE_UNAVAILABLE, b"too many open pages\n", "text/plain; charset=utf-8")
            return
        try:
            self.send_response(HTTPStatus.OK)
            for name, value in {**HEADERS, "Content-Type": "text/event-stream", "Cache-Control": "no-store",
                                "X-Accel-Buffering": "no"}.items():
                self.send_header(name, value)
            self.end_headers()
            if not getattr(self, "_head_only", False):
                EventStream(self.app, self.wfile, ticket.ended).run()
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            pass  # the page was closed
        finally:
            self.app.streams.give_back(ticket)
            self.close_connection = True

    def log_message(self, format: str, *args: object) -> None:
        """The request line at DEBUG, with any token's value blanked."""
        log.debug("%s %s", self.address_string(), redacted(format % args))


def _json_line(data: object) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


class EventStream:
    """One open page: new readings as they arrive, status when it changes, totals now and then."""

    def __init__(self, app: WebServer, out, ended: Optional[threading.Event] = None) -> None:
        self.app = app
        self.out = out
        self.ended = ended or threading.Event()  # set when another client took this stream's slot
        self.live = app.sources.live
        self.sent: Dict[str, int] = {}  # meter -> newest epoch second sent
        self.status: Dict[str, tuple] = {}
        self.chunks: List[bytes] = []  # one write per wake-up, however many events it has

    def run(self) -> None:
        clock = self.app.clock
        version = self.live.wait(-1, 0)
        info = self.app.page_info()
        for name, meter in info["meters"].items():
            times = meter["history"][0]
            self.sent[name] = times[-1] if times else 0
        self._send("init", info)
        self._write()
        next_summary = next_keepalive = clock.monotonic()
        next_summary += SUMMARY_EVERY
        while not self.app.stopping.is_set() and not self.ended.is_set():
            version = self.live.wait(version, WAKE_EVERY)
            self._readings_and_status()
            mono = clock.monotonic()
            if mono >= next_summary:
                next_summary = mono + SUMMARY_EVERY
                self._send("summary", self.app.energy.summary())
            if not self.chunks and mono >= next_keepalive:
                self.chunks.append(b": keepalive\n\n")
            if self.chunks:
                next_keepalive = mono + KEEPALIVE_EVERY
                self._write()

    def _readings_and_status(self) -> None:
        mono = self.app.clock.monotonic()
        for name, state in self.live.snapshot().items():
            status = status_of(state, mono)
            m = state.measurement
            newest = utc_epoch(m.time) if m is not None else 0
            last = self.sent.get(name, 0)
            if newest > last:
                # Usually the one new reading; after a missed wake-up, the rest from the history.
                points = [(newest, m.watts)] if newest == last + 1 else [
                    (t, w) for t, w in self.live.history(name) if last < t <= newest]
                for t, watts in points:
                    self._send("reading", {"m": name, "t": t, "w": watts})
                self.sent[name] = newest
            key = (status["connected"], status["since"], status["w"], status["last"])
            if key != self.status.get(name):
                self.status[name] = key
                self._send("status", {"m": name, **status})

    def _send(self, event: str, data: object) -> None:
        self.chunks.append(f"event: {event}\ndata: ".encode() + _json_line(data) + b"\n")

    def _write(self) -> None:
        self.out.write(b"".join(self.chunks))
        self.out.flush()
        self.chunks.clear()
