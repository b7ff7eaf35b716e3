"""Validate an upstream token: one `GET /models` with the headers a real request would carry."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus

import requests

from app.config import UpstreamConfig
from app.services.headers import build_upstream_headers

PROBE_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None  # None: no HTTP answer (connect error, timeout)
    latency_ms: float
    detail: str  # short and secret-free: "200 OK", "connect error", "timeout"


def probe(session: requests.Session, upstream: UpstreamConfig, token: str | None) -> ProbeResult:
    """Ask the upstream for its models with `token`; never raises for transport errors."""
    headers = build_upstream_headers(
        upstream, token, streaming=False, client_headers={}, request_id=f"probe-{uuid.uuid4().hex[:16]}"
    )
    proxies = {"http": upstream.proxy, "https": upstream.proxy} if upstream.proxy else None
    started = time.perf_counter()
    try:
        with session.get(
            f"{upstream.base_url}/models", headers=headers, proxies=proxies, stream=True,
            timeout=(upstream.connect_timeout, PROBE_READ_TIMEOUT), allow_redirects=False,
        ) as response:  # fmt: skip
            status = response.status_code
    except requests.Timeout:
        return ProbeResult(False, None, _since(started), "timeout")
    except requests.RequestException:
        return ProbeResult(False, None, _since(started), "connect error")
    return ProbeResult(200 <= status < 300, status, _since(started), f"{status} {_phrase(status)}".strip())


def _phrase(status: int) -> str:
    """The standard reason phrase (not the upstream's own text, which could say anything)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
