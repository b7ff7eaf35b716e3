"""What the upstream session puts on the wire: exactly the built headers and body, the
configured proxy, and the environment's proxy only when trusted (cookies: test_retry.py)."""

from __future__ import annotations

import pytest
import requests
from requests.adapters import HTTPAdapter

from app.services.transport import build_session, send_prepared


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
