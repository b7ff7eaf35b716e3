"""A request's own objects form no reference cycle: they are freed by reference counting as it ends.

Under gunicorn a long stream's objects are promoted to the oldest generation while it runs; what a cycle
holds then waits for a full garbage collection, a pause that grows with every open stream (gunicorn.conf.py
makes full collections rare). So the request path keeps its objects acyclic, and this test says where not.
"""

from __future__ import annotations

import gc
import inspect
from collections import Counter
from typing import Any

import pytest

from app.config import UpstreamConfig
from app.config_routing import Hedge
from tests.conftest import BASE, TOKENS, chat, make_config

CHUNKS = [
    b'data: {"id":"c","choices":[{"index":0,"delta":{"role":"assistant","content":"Hel"}}]}\n\n',
    b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}\n\n',
    b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\n\n',
    b"data: [DONE]\n\n",
]
PLAIN = {"id": "c", "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"}}],
         "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}  # fmt: skip


@pytest.fixture
def resumable(make_app):
    upstream = UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS, resume="prefill", hedge=Hedge(after=30.0))
    return make_app(make_config(upstream))


def test_streamed_and_plain_requests_leave_no_cyclic_garbage_of_their_own(resumable, upstream, auth):
    client = resumable.test_client()
    for _ in range(2):  # warm: first-use caches, lazily built statements
        _exchange(client, upstream, auth)
    gc.collect()
    gc.set_debug(gc.DEBUG_SAVEALL)  # what a collection finds unreachable goes to gc.garbage, not freed
    try:
        for _ in range(3):
            _exchange(client, upstream, auth)
        gc.collect()
        ours = Counter(_name(o) for o in gc.garbage if _is_ours(o))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
    assert ours == Counter(), f"objects of app/ left in reference cycles: {ours.most_common(12)}"


def _exchange(client: Any, upstream: Any, auth: dict[str, str]) -> None:
    upstream.add("POST", f"{BASE}/chat/completions", body=b"".join(CHUNKS), content_type="text/event-stream")
    streamed = client.post("/v1/chat/completions", json=chat(stream=True), headers=auth)
    assert streamed.status_code == 200 and streamed.get_data().endswith(b"data: [DONE]\n\n")
    upstream.add("POST", f"{BASE}/chat/completions", json=PLAIN)
    plain = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert plain.status_code == 200 and plain.get_json()["usage"]["total_tokens"] == 5


def _is_ours(obj: Any) -> bool:
    """An instance of a class of app/, or a function, method or suspended generator defined there."""
    if inspect.isfunction(obj) or inspect.ismethod(obj) or inspect.isgenerator(obj):
        code = getattr(obj, "__code__", None) or getattr(obj, "gi_code", None) or obj.__func__.__code__
        return "/app/" in code.co_filename
    return type(obj).__module__.startswith("app.")


def _name(obj: Any) -> str:
    return getattr(obj, "__qualname__", None) or type(obj).__qualname__
