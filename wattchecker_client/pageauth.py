"""Who may see the page: the token, the cookie that stands for it, and the redirect that hides it.

Sans-I/O: ``check`` is fed a request's target and headers and says what to
answer; the HTTP handler carries it out. Done as web frameworks do it:

- Only this service's own cookie is read from the Cookie header. A whole-header
  parser (``http.cookies.SimpleCookie``) stops at the first cookie it cannot
  read, and browsers send every cookie of a host to each of its ports, so one
  odd cookie of another app (``prefs={"theme":"dark"}``) would lock the page.
- The cookie holds an HMAC of the token, never the token: a copied cookie opens
  the page but is no Bearer token for /metrics and no ``?token=`` link.
- Any ``?token=`` is answered with a redirect to the same address without it,
  right or wrong, cookie or not: no token stays in the address bar or history.
- ``redacted`` blanks a token's value in any text about to be logged.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional
from urllib.parse import parse_qsl, urlencode

COOKIE = "wattchecker_page"
OLD_COOKIE = "wattchecker_token"  # earlier versions kept the token itself in it: cleared at the next ?token=
COOKIE_LABEL = b"wattchecker-client page cookie"
COOKIE_ATTRIBUTES = "Path=/; HttpOnly; SameSite=Strict"
TOKEN_IN_TEXT = re.compile(r"([?&;]token=)[^&;#\s\"']*", re.IGNORECASE)

OK, REDIRECT, REFUSE = "ok", "redirect", "refuse"


@dataclass(frozen=True)
class Answer:
    """What to do with a request: go on, redirect (``location``, ``cookies`` to set) or refuse with a 401."""

    kind: str
    location: Optional[str] = None
    cookies: tuple = ()


def cookie_value(token: str) -> str:
    """The cookie's value: an HMAC keyed by the token, so the cookie never carries the token itself."""
    return hmac.new(token.encode("utf-8"), COOKIE_LABEL, hashlib.sha256).hexdigest()


def own_cookies(headers: Iterable[str], name: str = COOKIE) -> List[str]:
    """The values of cookie ``name`` in Cookie headers, whatever else they hold (RFC 6265: ``a=b; c=d``)."""
    values = []
    for header in headers:
        for pair in header.split(";"):
            key, eq, value = pair.partition("=")
            if eq and key.strip() == name:
                values.append(value.strip().strip('"'))
    return values


def without_token(target: str) -> str:
    """The request target with any token parameter removed; always a path on this host."""
    path, _, query = target.partition("?")
    path = "/" + path.lstrip("/")  # "//host/x" would send the browser to another host
    kept = [(key, value) for key, value in parse_qsl(query, keep_blank_values=True) if key.lower() != "token"]
    return path + ("?" + urlencode(kept) if kept else "")


def redacted(text: str) -> str:
    """``text`` with every ``token=`` value blanked, for log lines."""
    return TOKEN_IN_TEXT.sub(r"\1<hidden>", text)


def _same(given: str, expected: str) -> bool:
    """Compared in constant time: how long a wrong guess takes tells nothing."""
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode("utf-8"))


def check(token: Optional[str], target: str, authorization: str, cookie_headers: Iterable[str]) -> Answer:
    """What to answer a request for ``target`` (path and query) when the page asks for ``token``."""
    query = target.partition("?")[2]
    given = [value for key, value in parse_qsl(query, keep_blank_values=True) if key.lower() == "token"]
    if given:
        right = token is not None and any(_same(value, token) for value in given)
        cookies = (f"{COOKIE}={cookie_value(token)}; {COOKIE_ATTRIBUTES}", f"{OLD_COOKIE}=; Max-Age=0; Path=/") \
            if right else ()
        return Answer(REDIRECT, without_token(target), cookies)
    if token is None:
        return Answer(OK)
    if authorization[:7].lower() == "bearer " and _same(authorization[7:].strip(), token):
        return Answer(OK)
    expected = cookie_value(token)
    if any(_same(value, expected) for value in own_cookies(cookie_headers)):
        return Answer(OK)
    return Answer(REFUSE)
