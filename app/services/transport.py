"""The transport: one requests.Session per worker, one `Exchange` per attempt, and the one place
where an answer's status or a transport exception becomes an `Outcome` (app/services/outcomes.py).
"""

from __future__ import annotations

import http.cookiejar
import json
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from requests.cookies import RequestsCookieJar
from requests.structures import CaseInsensitiveDict
from requests.utils import get_encoding_from_headers

from app.config import UpstreamConfig
from app.dialects.base import Dialect, Leg
from app.services.calls import UpstreamCall
from app.services.exchange import Exchange
from app.services.headers import build_upstream_headers
from app.services.outcomes import Failure, Outcome, classify

# As many as a worker's streams can be (gunicorn.conf.py caps worker_connections at 10,000): past pool_maxsize
# urllib3 discards each returning connection with a "pool is full" warning. Free slots cost a list entry each.
POOL_SIZE = 10_000


def build_session(trust_env: bool, pool_size: int = POOL_SIZE) -> requests.Session:
    """The per-worker session: no environment proxies/.netrc unless asked, no default headers, no cookies."""
    session = requests.Session()
    session.trust_env = trust_env
    session.headers.clear()  # build_upstream_headers decides every header
    session.cookies = _NoCookies()
    # pool_size idle connections kept per upstream host: as many as concurrent streams,
    # so a busy worker neither reconnects for every request nor logs "pool is full".
    adapter = CookielessAdapter(pool_connections=16, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


class _NoCookies(RequestsCookieJar):
    """One session serves every token and client: an upstream cookie set for one must never
    ride along on another's request, so the session's jar keeps (and parses) nothing."""

    def set_cookie(self, cookie: http.cookiejar.Cookie, *args: object, **kwargs: object) -> None:
        return None

    def extract_cookies(self, response: object, request: object) -> None:  # type: ignore[override]
        return None


class CookielessAdapter(HTTPAdapter):
    """requests' adapter, without parsing each answer's Set-Cookie headers into a jar nobody reads (about a
    twentieth of a streamed request's own time: docs/benchmarks.md). The headers themselves are untouched."""

    def build_response(self, req: requests.PreparedRequest, resp: Any) -> requests.Response:
        """HTTPAdapter.build_response, less `extract_cookies_to_jar(response.cookies, req, resp)`."""
        response = requests.Response()
        response.status_code = getattr(resp, "status", None)  # type: ignore[assignment]
        response.headers = CaseInsensitiveDict(getattr(resp, "headers", {}))
        response.encoding = get_encoding_from_headers(response.headers)
        response.raw = resp
        response.reason = resp.reason
        response.url = req.url.decode("utf-8") if isinstance(req.url, bytes) else req.url  # type: ignore[assignment]
        response.request = req
        response.connection = self  # type: ignore[attr-defined]
        return response


def send_prepared(
    session: requests.Session, method: str, url: str, body: bytes, headers: Mapping[str, str], **options: Any
) -> requests.Response:
    """`session.request(..., stream=True, allow_redirects=False)`, less what this session never needs: merging
    session defaults (it has no default headers, cookies, auth or parameters), the cookie header and jar (it
    keeps no cookies), the redirect it would not follow, and response hooks. The environment's proxies and CA
    bundle are still honoured when the session trusts the environment."""
    prepared = requests.PreparedRequest()
    prepared.prepare_method(method)
    _prepare_url(prepared, url)
    prepared.prepare_headers(headers)
    prepared.prepare_body(body, None)
    if "@" in url:  # credentials in the URL, sent as requests would
        prepared.prepare_auth(None, url)
    proxies = options.pop("proxies", None) or {}
    if session.trust_env:
        settings = session.merge_environment_settings(url, proxies, True, None, None)
    else:
        settings = {"proxies": proxies, "stream": True, "verify": session.verify, "cert": session.cert}
    return session.get_adapter(url).send(prepared, **settings, **options)


def _prepare_url(prepared: requests.PreparedRequest, url: str) -> None:
    """requests' checked and quoted form of `url`, worked out once per URL: an upstream's URLs are its base
    and a few paths (a client's query string, passed on by some endpoints, makes more: the memo is bounded)."""
    known = _PREPARED_URLS.get(url)
    if known is None:
        prepared.prepare_url(url, None)
        if len(_PREPARED_URLS) < PREPARED_URLS_MAX:
            _PREPARED_URLS[url] = prepared.url  # type: ignore[assignment]
    else:
        prepared.url = known


PREPARED_URLS_MAX = 1024
_PREPARED_URLS: dict[str, str] = {}


class Transport:
    """Opens attempts' exchanges and says what their failures were."""

    def __init__(self, session: requests.Session, clock: Callable[[], float]) -> None:
        self.session, self.clock = session, clock

    def open(self, call: UpstreamCall, upstream: UpstreamConfig, token: str | None, leg: Leg) -> Exchange:
        """Start one attempt's HTTP exchange in the background (`token`: the credential's value)."""
        headers = build_upstream_headers(
            upstream, token, streaming=call.streaming and leg.dialect.sse, client_headers=call.client_headers,
            request_id=call.request_id, content_type=leg.content_type,
        )  # fmt: skip
        proxies = {"http": upstream.proxy, "https": upstream.proxy} if upstream.proxy else None
        # The socket read timeout is a backstop: first-byte, idle and deadline limits are
        # enforced by the waiting side, which closes the exchange when one passes.
        timeout = (upstream.connect_timeout, call.read_timeout or upstream.read_timeout)

        def send() -> requests.Response:
            url = upstream.base_url + leg.path
            return send_prepared(self.session, call.method, url, leg.body, headers, timeout=timeout, proxies=proxies)

        return Exchange(send, streaming=call.streaming, sse=leg.dialect.sse)

    def status_failure(self, response: requests.Response, body: bytes, dialect: Dialect) -> Failure:
        """A non-2xx answer (its body already read by the exchange); `dialect` reads its error object."""
        retry_after = response.headers.get("Retry-After")
        content_type = response.headers.get("Content-Type", "")
        decision = classify(response.status_code, None, retry_after, self.clock(), _error(body, content_type, dialect))
        return Failure(decision, retry_after, body, content_type)

    def transport_failure(self, exc: Exception) -> Failure:
        """The request could not be sent or its answer not read: the one mapping of requests' exceptions."""
        if isinstance(exc, requests.ConnectTimeout):
            kind = Outcome.CONNECT_TIMEOUT
        elif isinstance(exc, (requests.ReadTimeout, requests.Timeout)):
            kind = Outcome.READ_TIMEOUT
        elif isinstance(exc, requests.ConnectionError) and "Read timed out" in str(exc):
            kind = Outcome.READ_TIMEOUT  # requests wraps a body-read timeout in ConnectionError
        else:
            kind = Outcome.CONNECT_ERROR
        return self.fault(kind)

    def fault(self, kind: Outcome) -> Failure:
        """A failure without an HTTP answer (a timeout, a broken or empty stream, an error event)."""
        return Failure(classify(None, kind, None, self.clock()))


def _error(body: bytes, content_type: str, dialect: Dialect) -> dict | None:
    """The upstream's error object, when its body is JSON the dialect recognises."""
    if "json" not in content_type.lower() or len(body) > 65536:
        return None
    try:
        return dialect.upstream_error(json.loads(body))
    except ValueError:
        return None
