"""The floor for this stack: a bare Flask + requests + gevent pass-through proxy (no auth,
retries, limits, accounting or metrics). Benchmarks compare Sluice against it.

    BARE_UPSTREAM=http://127.0.0.1:9100 gunicorn -k gevent -b 127.0.0.1:8100 bench.bare_proxy:app
"""

from __future__ import annotations

import os

import requests
from flask import Flask, Response, request

UPSTREAM = os.environ.get("BARE_UPSTREAM", "http://127.0.0.1:9100")
TOKEN = os.environ.get("BARE_TOKEN", "bench-token-000000001")
app = Flask(__name__)
session = requests.Session()


@app.post("/v1/<path:path>")
def proxy(path: str) -> Response:
    """Forward the body; stream the answer back chunk by chunk."""
    streaming = b'"stream": true' in request.get_data() or b'"stream":true' in request.get_data()
    headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json", "User-Agent": "bare/1",
               "Accept": "text/event-stream" if streaming else "*/*"}  # fmt: skip
    upstream = session.post(f"{UPSTREAM}/v1/{path}", data=request.get_data(), headers=headers, stream=True, timeout=300)

    def body():
        try:
            yield from upstream.iter_content(chunk_size=None)
        finally:
            upstream.close()

    content_type = upstream.headers.get("Content-Type", "application/json")
    return Response(body(), status=upstream.status_code, content_type=content_type)
