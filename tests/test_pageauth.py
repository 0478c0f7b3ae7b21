"""The page's token as a table of requests: what each gets, and what never shows the token."""

from __future__ import annotations

import pytest

from wattchecker_client.pageauth import (COOKIE, OK, REDIRECT, REFUSE, check, cookie_value, own_cookies,
                                         redacted, without_token)

TOKEN = "s3cret-token"
GOOD = f"{COOKIE}={cookie_value(TOKEN)}"
SET = (f"{COOKIE}={cookie_value(TOKEN)}; Path=/; HttpOnly; SameSite=Strict", "wattchecker_token=; Max-Age=0; Path=/")

# (target, Authorization, Cookie headers) -> (kind, Location, cookies set)
CASES = [
    (("/", "", []), (REFUSE, None, ())),
    (("/", "", [GOOD]), (OK, None, ())),
    (("/", f"Bearer {TOKEN}", []), (OK, None, ())),
    (("/metrics", f"bearer  {TOKEN} ", []), (OK, None, ())),
    (("/", "Bearer wrong", []), (REFUSE, None, ())),
    # The token itself is no cookie: the cookie is an HMAC of it.
    (("/", "", [f"{COOKIE}={TOKEN}"]), (REFUSE, None, ())),
    (("/", "", [f"wattchecker_token={TOKEN}"]), (REFUSE, None, ())),
    # Another app's cookies on the same host, before and after ours, however odd.
    (("/", "", ['prefs={"theme":"dark"}; ' + GOOD]), (OK, None, ())),
    (("/", "", [GOOD + '; prefs={"theme":"dark"}; x']), (OK, None, ())),
    (("/", "", ['a="unterminated; b=\\x; ' + GOOD]), (OK, None, ())),
    (("/", "", ['prefs={"theme":"dark"}', GOOD]), (OK, None, ())),  # two Cookie headers
    (("/", "", [f'{COOKIE}="{cookie_value(TOKEN)}"']), (OK, None, ())),  # quoted, as some clients send it
    (("/", "", [f"{COOKIE}=stale; " + GOOD]), (OK, None, ())),  # an old one beside the right one
    (("/", "", [f"x{COOKIE}={cookie_value(TOKEN)}"]), (REFUSE, None, ())),  # only our exact name
    # ?token= always leaves the address: with a cookie or not, right or wrong.
    ((f"/?token={TOKEN}", "", []), (REDIRECT, "/", SET)),
    ((f"/?token={TOKEN}", "", [GOOD]), (REDIRECT, "/", SET)),
    (("/?token=wrong", "", []), (REDIRECT, "/", ())),
    (("/?token=wrong", "", [GOOD]), (REDIRECT, "/", ())),
    ((f"/api/page?meter=a&token={TOKEN}&b=2", "", []), (REDIRECT, "/api/page?meter=a&b=2", SET)),
    ((f"/?TOKEN={TOKEN}", "", []), (REDIRECT, "/", SET)),
    ((f"//evil.example/?token={TOKEN}", "", []), (REDIRECT, "/evil.example/", SET)),  # never another host
    (("/?token=", "", []), (REDIRECT, "/", ())),
]


@pytest.mark.parametrize("request_, expected", CASES, ids=[repr(k) for k, _ in CASES])
def test_what_each_request_gets(request_, expected):
    answer = check(TOKEN, *request_)
    assert (answer.kind, answer.location, answer.cookies) == expected
    assert TOKEN not in (answer.location or "") and not any(TOKEN in c for c in answer.cookies)


def test_without_a_token_configured_everything_is_open_but_a_token_still_leaves_the_address():
    assert check(None, "/metrics", "", []).kind == OK
    answer = check(None, "/?token=x", "", [])
    assert (answer.kind, answer.location, answer.cookies) == (REDIRECT, "/", ())


def test_the_cookie_is_a_keyed_hash_of_the_token():
    assert cookie_value(TOKEN) != cookie_value(TOKEN + "x")
    assert len(cookie_value(TOKEN)) == 64 and TOKEN not in cookie_value(TOKEN)


def test_own_cookies_reads_only_our_name():
    assert own_cookies(['prefs={"theme":"dark"}; wattchecker_page=abc; other=1']) == ["abc"]
    assert own_cookies(["", ";;", "=x", "wattchecker_page"]) == []


@pytest.mark.parametrize("text, clean", [
    ('"GET /?token=abc HTTP/1.1" 303 -', '"GET /?token=<hidden> HTTP/1.1" 303 -'),
    ('"GET /x?a=1&token=abc&b=2 HTTP/1.1" 200 -', '"GET /x?a=1&token=<hidden>&b=2 HTTP/1.1" 200 -'),
    ("code 400, message Bad request version ('x?Token=abc')",
     "code 400, message Bad request version ('x?Token=<hidden>')"),
    ('"GET /events HTTP/1.1" 200 -', '"GET /events HTTP/1.1" 200 -'),
])
def test_log_lines_never_carry_a_token(text, clean):
    assert redacted(text) == clean


def test_a_clean_url_keeps_the_rest_of_the_query():
    assert without_token("/?a=1&token=x&a=2") == "/?a=1&a=2"
    assert without_token("/static/x.js") == "/static/x.js"
