"""The InfluxDB adapter: rows as line-protocol points, one write request, the server's answer mapped
to done, retry later or give up.

Standard library only: line protocol is text over one HTTP POST, so
``http.client`` is all it takes (no client library to install or import).

A point is the meter's second: measurement ``wattchecker``, tags ``device``
(the meter's id, as BigQuery's device column) and ``name`` (its configured
name), fields ``volts``, ``milliamps``, ``watts`` and ``watt_seconds``, stamp
in seconds. InfluxDB keeps one point per measurement, tag set and stamp, the
last write's fields winning, so sending a point again never adds one: every
retry, replay and live point is safe.

``watt_seconds`` is the energy the report credits the row (watts times
``held_seconds``: the step to the next row up to ``MAX_STEP`` s, else 1 s), so
``sum(watt_seconds)`` per day is the report's kWh per day; ``integral()``
interpolates linearly between points and cannot agree with that rule.
"""

from __future__ import annotations

import base64
import datetime as dt
import email.utils
import http.client
import json
import logging
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import urlencode, urlsplit

from ..clock import Clock
from ..config import InfluxConfig
from ..datadir import held_seconds
from ..secretfile import read_secret
from .errors import AccessDenied, PermanentError, TransientError

log = logging.getLogger(__name__)

MAX_POINTS = 5000  # per write request: InfluxData's advice for a batch
TIMEOUT = 60.0
QUOTED_CHARS = 300  # of a server's error, in a log line


class RetryLater(TransientError):
    """429/503: the server asks for a pause (``retry_after`` seconds when it says how long)."""

    def __init__(self, message: str, retry_after: Optional[float]) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# --- points (sans-I/O) -------------------------------------------------------------------


def escape_tag(value: str) -> str:
    """A tag key or value in line protocol: backslash before comma, equals sign and space."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("=", "\\=").replace(" ", "\\ ")


def series_key(measurement: str, device: str, name: str) -> str:
    """``measurement,device=..,name=..``: tags in key order, as InfluxDB sorts them anyway."""
    return f"{escape_tag(measurement)},device={escape_tag(device)},name={escape_tag(name)}"


def point_lines(series: str, rows: Sequence[Tuple[int, float, float, float]],
                next_t: Optional[int] = None, energy: bool = True) -> List[str]:
    """One line per row; ``next_t``: the stamp of the row after the last one, if known.

    ``energy`` False (live points): no ``watt_seconds``, whose step is not known
    yet; the hour's upload adds it to the same point.
    """
    lines = []
    for i, (t, volts, milliamps, watts) in enumerate(rows):
        fields = f"volts={volts!r},milliamps={milliamps!r},watts={watts!r}"
        if energy:
            later = rows[i + 1][0] if i + 1 < len(rows) else next_t
            fields += f",watt_seconds={watts * held_seconds(None if later is None else later - t)!r}"
        lines.append(f"{series} {fields} {t}")
    return lines


def chunks(lines: Iterable[str], size: int = MAX_POINTS) -> Iterator[bytes]:
    """Request bodies of at most ``size`` points each, taking the lines as they come."""
    batch: List[str] = []
    for line in lines:
        batch.append(line)
        if len(batch) == size:
            yield ("\n".join(batch) + "\n").encode("utf-8")
            batch = []
    if batch:
        yield ("\n".join(batch) + "\n").encode("utf-8")


# --- the server ----------------------------------------------------------------------------


def credentials(config: InfluxConfig) -> Tuple[Optional[str], List[str]]:
    """The Authorization header's value (None: none sent) and the secret files' mode warnings."""
    warnings: List[str] = []
    if config.version == 2:
        token, warning = read_secret("influxdb.token_file", config.token_file)
        return f"Token {token}", warnings + ([warning] if warning else [])
    if config.username is None:
        return None, warnings
    password, warning = read_secret("influxdb.password_file", config.password_file)
    pair = base64.b64encode(f"{config.username}:{password}".encode("utf-8")).decode("ascii")
    return f"Basic {pair}", warnings + ([warning] if warning else [])


def check_setup(config: InfluxConfig) -> List[str]:
    """What start-up checks of an influxdb: section, without connecting: the secret files."""
    warnings = credentials(config)[1]
    if urlsplit(config.url).scheme == "http" and (config.version == 2 or config.username):
        host = urlsplit(config.url).hostname
        if host not in ("127.0.0.1", "::1", "localhost"):
            warnings.append(f"influxdb: the {'token' if config.version == 2 else 'password'} goes to {host} "
                            "unencrypted (use an https:// url)")
    return warnings


def summary(config: InfluxConfig) -> str:
    """One line for check-config."""
    where = (f"database {config.database}" + (f" as {config.username}" if config.username else "")
             if config.version == 1 else f"org {config.org}, bucket {config.bucket} with a token")
    live = ", live points each second" if config.live else ""
    return f"{config.url} (InfluxDB {config.version}.x), {where}, measurement {config.measurement}{live}"


def quote(body: bytes) -> str:
    """The server's error message: the ``error``/``message`` of its JSON, else its text, shortened."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
        text = str(data.get("error") or data.get("message") or text) if isinstance(data, dict) else text
    except ValueError:
        pass
    return text[:QUOTED_CHARS] + ("..." if len(text) > QUOTED_CHARS else "")


def retry_after(value: Optional[str], now: dt.datetime) -> Optional[float]:
    """A ``Retry-After`` header's seconds (delta, or HTTP date against ``now``, naive UTC); None when
    absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now.replace(tzinfo=dt.timezone.utc)).total_seconds())


class InfluxTarget:
    """One InfluxDB server's write endpoint, over one kept-alive connection."""

    def __init__(self, config: InfluxConfig, clock: Clock, timeout: float = TIMEOUT) -> None:
        self.config = config
        self.clock = clock
        self.timeout = timeout
        self.authorization = credentials(config)[0]
        parts = urlsplit(config.url)
        self.https = parts.scheme == "https"
        self.host, self.port = parts.hostname, parts.port or (443 if self.https else 80)
        if config.version == 1:
            self.path = "/write?" + urlencode({"db": config.database, "precision": "s"})
            self.where = f"database {config.database}"
            self.fix = ("influxdb.username and influxdb.password_file (a user with WRITE on database "
                        f"{config.database})")
        else:
            self.path = "/api/v2/write?" + urlencode({"org": config.org, "bucket": config.bucket, "precision": "s"})
            self.where = f"bucket {config.bucket} of org {config.org}"
            self.fix = f"influxdb.token_file (a token allowed to write to bucket {config.bucket})"
        self._connection: Optional[http.client.HTTPConnection] = None

    def write(self, body: bytes) -> None:
        """POST one batch; TransientError (RetryLater, AccessDenied) or PermanentError if not stored."""
        headers = {"Content-Type": "text/plain; charset=utf-8"}
        if self.authorization:
            headers["Authorization"] = self.authorization
        for attempt in range(2):
            kept = self._connection is not None
            try:
                connection = self._connect()
                connection.request("POST", self.path, body=body, headers=headers)
                response = connection.getresponse()
                answer = response.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                # A kept-alive connection the server closed while idle (an hour between uploads, a
                # restart) fails at once: once more on a new one, as a write is safe to repeat.
                if not kept or attempt:
                    raise TransientError(f"InfluxDB at {self.config.url} cannot be reached: "
                                         f"{exc or type(exc).__name__}") from None
        if response.getheader("Connection", "").lower() == "close":
            self.close()
        self._judge(response.status, response.getheader("Retry-After"), answer)

    def _judge(self, status: int, retry: Optional[str], answer: bytes) -> None:
        if 200 <= status < 300:
            return
        said = quote(answer)
        if status in (429, 503):
            raise RetryLater(f"InfluxDB is busy ({status}: {said or 'no reason given'})",
                             retry_after(retry, self.clock.now()))
        if status in (401, 403):
            raise AccessDenied(f"InfluxDB refused the credentials ({status}: {said}): check {self.fix}")
        if status == 404:
            raise TransientError(f"InfluxDB has no {self.where} ({said}): create it or fix influxdb."
                                 + ("database" if self.config.version == 1 else "org and influxdb.bucket"))
        if status in (400, 413, 422):
            raise PermanentError(f"InfluxDB refused the points ({status}): {said}")
        raise TransientError(f"InfluxDB answered {status}: {said}")

    def _connect(self) -> http.client.HTTPConnection:
        if self._connection is None:
            if self.https:
                self._connection = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout)
            else:
                self._connection = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        return self._connection

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
