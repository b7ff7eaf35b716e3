"""Log lines: one per request, per-attempt lines at DEBUG with masked tokens, never a secret."""

from __future__ import annotations

import json

import responses

from app.services.tokens import mask
from tests.conftest import BASE, MASTER_KEY, TOKENS, chat


def test_mask():
    assert mask("sk-abcdefghijklmnop") == "...mnop"
    assert mask("short-token") == "***"  # under 12 characters: nothing of it
    assert mask("") == "-"


def test_one_line_per_request_and_debug_attempt_lines_are_masked(client, auth, upstream, logs):
    upstream.add(responses.POST, f"{BASE}/chat/completions", status=403, json={"error": {"message": TOKENS[0]}})
    upstream.add(responses.POST, f"{BASE}/chat/completions", json={"ok": True})
    client.post("/v1/chat/completions", json=chat(), headers=auth | {"X-Request-ID": "trace-1"})
    text = logs.getvalue()
    request_lines = [line for line in text.splitlines() if "sluice.request" in line]
    assert len(request_lines) == 1
    line = request_lines[0]
    for part in ("request_id=trace-1", "key=master", "model=gpt-test", "upstream=primary", "status=200", "attempts=2"):
        assert part in line
    attempts = [line for line in text.splitlines() if "sluice.upstream attempt" in line]
    assert len(attempts) == 2
    assert "token=...0001" in attempts[0] and "reason=http_403" in attempts[0]


def test_no_secret_in_logs_or_bodies_across_failures(client, upstream, logs):
    """Drive every error path with real and wrong keys; no token or key value appears anywhere."""
    url = f"{BASE}/chat/completions"
    upstream.add(responses.POST, url, status=401, json={"error": {"message": f"bad key {TOKENS[0]}"}})
    upstream.add(responses.POST, url, status=429, headers={"Retry-After": "1"}, body="")
    upstream.add(responses.POST, url, status=500, body=f"<html>{TOKENS[2]}</html>")
    bodies = []
    for headers in ({"Authorization": f"Bearer {MASTER_KEY}"}, {"Authorization": "Bearer sk-wrong-key-0000000000"}, {}):
        for payload in (chat(), chat(stream=True), {"model": 5}):
            resp = client.post("/v1/chat/completions", data=json.dumps(payload), headers=headers)
            bodies.append(resp.get_data(as_text=True) + json.dumps(dict(resp.headers)))
    everything = logs.getvalue() + "".join(bodies)
    for secret in (*TOKENS, MASTER_KEY, "sk-wrong-key-0000000000"):
        assert secret not in everything


def test_redactor_masks_a_secret_that_slips_into_a_message(app, logs):
    import logging

    logging.getLogger("sluice.test").warning("oops %s", TOKENS[1])
    try:
        raise ValueError(f"boom {MASTER_KEY}")
    except ValueError:
        logging.getLogger("sluice.test").exception("failed")
    text = logs.getvalue()
    assert TOKENS[1] not in text and MASTER_KEY not in text
    assert "...0002" in text
