"""Validate an upstream token: one `GET /models` (or, for a probe that asks for it, a tiny
non-streamed completion) with the headers a real request would carry.

Probes go out on the worker's session but never through the client request path: no usage
record, no key's limits, no token counts. Only the caller records the result."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from http import HTTPStatus

import requests

from app.config import UpstreamConfig
from app.config_routing import ProbeConfig
from app.services.headers import build_upstream_headers

PROBE_READ_TIMEOUT = 10.0


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    status: int | None  # None: no HTTP answer (connect error, timeout)
    latency_ms: float
    detail: str  # short and secret-free: "200 OK", "connect error", "timeout"


def probe(
    session: requests.Session,
    upstream: UpstreamConfig,
    token: str | None,
    spec: ProbeConfig | None = None,
    read_timeout: float = PROBE_READ_TIMEOUT,
) -> ProbeResult:
    """Ask the upstream for its models (or a completion, per `spec`) with `token`; never raises
    for transport errors."""
    headers = build_upstream_headers(
        upstream, token, streaming=False, client_headers={}, request_id=f"probe-{uuid.uuid4().hex[:16]}"
    )
    method, path, body = request_of(upstream, spec)
    proxies = {"http": upstream.proxy, "https": upstream.proxy} if upstream.proxy else None
    started = time.perf_counter()
    try:
        with session.request(
            method, f"{upstream.base_url}{path}", headers=headers, json=body, proxies=proxies, stream=True,
            timeout=(upstream.connect_timeout, read_timeout), allow_redirects=False,
        ) as response:  # fmt: skip
            status = response.status_code
    except requests.Timeout:
        return ProbeResult(False, None, _since(started), "timeout")
    except requests.RequestException:
        return ProbeResult(False, None, _since(started), "connect error")
    return ProbeResult(200 <= status < 300, status, _since(started), f"{status} {_phrase(status)}".strip())


def request_of(upstream: UpstreamConfig, spec: ProbeConfig | None) -> tuple[str, str, dict | None]:
    """(method, path, JSON body) of a probe: the model list, or the smallest completion the upstream's API takes."""
    if spec is None or spec.kind == "models":
        return "GET", "/models", None
    messages = [{"role": "user", "content": "ping"}]
    body = {"model": spec.model, "messages": messages, "max_tokens": spec.max_tokens}
    return "POST", "/messages" if upstream.api == "anthropic" else "/chat/completions", body


def _phrase(status: int) -> str:
    """The standard reason phrase (not the upstream's own text, which could say anything)."""
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 1)
