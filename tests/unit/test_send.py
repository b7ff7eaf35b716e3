"""What the upstream session puts on the wire: exactly the built headers and body, the
configured proxy, and the environment's proxy only when trusted (cookies: test_retry.py)."""

from __future__ import annotations

import http.client
import io

import pytest
import requests
import urllib3
from requests.adapters import HTTPAdapter

from app.services import transport
from app.services.transport import CookielessAdapter, build_session, send_prepared


class Capture(HTTPAdapter):
    def send(self, request, **kwargs):
        self.seen = (request, kwargs)
        response = requests.Response()
        response.status_code, response.raw, response.request = 200, None, request
        return response


def capture(session: requests.Session) -> Capture:
    adapter = Capture()
    session.mount("https://", adapter)
    return adapter


@pytest.mark.parametrize("trust_env", [False, True])
def test_sends_exactly_the_built_request(monkeypatch, trust_env):
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    session = build_session(trust_env=trust_env)
    adapter = capture(session)
    headers = {"Authorization": "Bearer t", "Accept": "text/event-stream", "User-Agent": "sluice/1"}
    send_prepared(session, "POST", "https://up.example/v1/chat", b'{"a":1}', headers, timeout=(1, 2))
    request, options = adapter.seen
    assert dict(request.headers) == {**headers, "Content-Length": "7"}
    assert request.body == b'{"a":1}' and request.method == "POST"
    assert options["timeout"] == (1, 2) and options["stream"] is True
    assert options["proxies"].get("https") == ("http://env-proxy:3128" if trust_env else None)


def test_a_configured_proxy_is_used_whatever_the_environment(monkeypatch):
    monkeypatch.setenv("HTTPS_PROXY", "http://env-proxy:3128")
    session = build_session(trust_env=False)
    adapter = capture(session)
    proxies = {"http": "http://mine:8080", "https": "http://mine:8080"}
    send_prepared(session, "POST", "https://up.example/v1/chat", b"{}", {}, timeout=(1, 2), proxies=proxies)
    assert adapter.seen[1]["proxies"] == proxies


class FakeSocket:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def makefile(self, *args, **kwargs):
        return io.BytesIO(self.data)


def test_the_cookieless_adapter_builds_requests_response_without_parsing_its_cookies():
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json; charset=latin-1\r\nSet-Cookie: s=1; Path=/\r\n"
    original = http.client.HTTPResponse(FakeSocket(head + b"Content-Length: 2\r\n\r\n{}"))  # type: ignore[arg-type]
    original.begin()
    raw = urllib3.HTTPResponse(
        body=original, headers=list(original.getheaders()), status=original.status, reason=original.reason,
        original_response=original, preload_content=False,
    )  # fmt: skip
    request = requests.Request("POST", "https://up.example/v1/chat", data=b"{}").prepare()
    ours, theirs = CookielessAdapter(), HTTPAdapter()
    mine, reference = ours.build_response(request, raw), theirs.build_response(request, raw)
    fields = ("status_code", "encoding", "reason", "url", "request", "raw")
    assert [getattr(mine, f) for f in fields] == [getattr(reference, f) for f in fields]
    assert mine.status_code == 201 and mine.encoding == "latin-1" and mine.reason == "Created"
    assert dict(mine.headers) == dict(reference.headers) and mine.headers["set-cookie"] == "s=1; Path=/"
    assert mine.connection is ours and reference.cookies.get("s") == "1" and not mine.cookies  # only requests parses


def test_credentials_in_the_upstream_url_are_sent_as_requests_would():
    session = build_session(trust_env=False)
    adapter = capture(session)
    send_prepared(session, "POST", "https://user:pw@up.example/v1/chat", b"{}", {}, timeout=(1, 2))
    request, _ = adapter.seen
    assert request.headers["Authorization"] == "Basic dXNlcjpwdw==" and "Cookie" not in request.headers


def test_each_url_is_prepared_as_requests_would_once_and_the_memo_is_bounded(monkeypatch):
    monkeypatch.setattr(transport, "_PREPARED_URLS", {})
    monkeypatch.setattr(transport, "PREPARED_URLS_MAX", 3)
    session = build_session(trust_env=False)
    adapter = capture(session)
    urls = [f"https://up.example/v1/a b?q={i}" for i in range(5)] * 2
    for url in urls:
        send_prepared(session, "POST", url, b"{}", {}, timeout=(1, 2))
        assert adapter.seen[0].url == requests.Request("POST", url).prepare().url  # quoted: a%20b
    assert list(transport._PREPARED_URLS) == urls[:3]
