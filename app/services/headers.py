"""Pure header construction: no I/O, no Flask globals, trivially testable.

`build_upstream_headers` is the fix for strict edges that reject streaming requests
without a User-Agent and `Accept: text/event-stream`: every upstream request gets its
headers here and nowhere else.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping

from app.config import UpstreamConfig

_REQUEST_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
_PRINTABLE = re.compile(r"[\x20-\x7e]{1,256}")

# Client headers forwarded upstream, each with its validator. Everything else the
# client sent (Authorization, Cookie, Host, hop-by-hop, ...) stays at the gateway.
# anthropic-beta is a comma-separated list of feature names: Claude Code's alone is over 230 characters.
_FEATURE_LIST = re.compile(r"[\x20-\x7e]{1,4096}")
CLIENT_HEADER_ALLOWLIST = {
    "openai-beta": ("OpenAI-Beta", _PRINTABLE),
    "anthropic-beta": ("anthropic-beta", _FEATURE_LIST),
}
# Which of them each kind of upstream gets (`api` in the config).
FORWARDED_BY_API = {"openai": {"OpenAI-Beta"}, "anthropic": {"anthropic-beta"}}

# Upstream response headers passed to the client. Anything not listed (Set-Cookie,
# hop-by-hop, x-ratelimit-* describing *our* token, Server, ...) is dropped.
RESPONSE_HEADER_ALLOWLIST = {
    "content-type": "Content-Type",
    "openai-processing-ms": "openai-processing-ms",
    "openai-version": "openai-version",
    "openai-model": "openai-model",
}


def build_upstream_headers(
    upstream: UpstreamConfig,
    token: str | None,
    *,
    streaming: bool,
    client_headers: Mapping[str, str],
    request_id: str,
    content_type: str = "application/json",
) -> dict[str, str]:
    """Return the complete header set for one upstream attempt.

    `token` None means a token-less upstream (no Authorization). `request_id` must
    already be validated (see `resolve_request_id`).
    """
    headers = dict(upstream.headers)  # validated at start-up: none of the keys below
    forwarded = FORWARDED_BY_API[upstream.api]
    for key, value in client_headers.items():
        allowed = CLIENT_HEADER_ALLOWLIST.get(key.lower())
        if allowed and allowed[0] in forwarded and allowed[1].fullmatch(value):
            headers[allowed[0]] = value
    headers["User-Agent"] = upstream.user_agent
    headers["Content-Type"] = content_type  # JSON, or a multipart upload's own (with its boundary)
    if streaming:
        headers["Accept"] = "text/event-stream"
        headers["Accept-Encoding"] = "identity"  # compressed SSE would be buffered by the decoder
    else:
        headers["Accept"] = "*/*"
        headers["Accept-Encoding"] = "gzip, deflate"
    headers["X-Request-ID"] = request_id
    if upstream.api == "anthropic":  # Anthropic's own scheme: the key as x-api-key, and the API version
        headers["anthropic-version"] = upstream.anthropic_version
        if token is not None:
            headers["x-api-key"] = token
    elif token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


def forwardable(client_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Only the allowlisted client headers: nothing else (Authorization, Cookie) travels further."""
    return {k: v for k, v in client_headers if k.lower() in CLIENT_HEADER_ALLOWLIST}


def resolve_request_id(client_value: str | None, generate: Callable[[], str]) -> str:
    """Keep the client's X-Request-ID when it is 1-128 of [A-Za-z0-9._-], else a new one."""
    if client_value and _REQUEST_ID.fullmatch(client_value):
        return client_value
    return generate()


def client_response_headers(upstream_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
    """Select the upstream response headers that may reach the client."""
    selected = {}
    for key, value in upstream_headers:
        name = RESPONSE_HEADER_ALLOWLIST.get(key.lower())
        if name:
            selected[name] = value
    return selected
