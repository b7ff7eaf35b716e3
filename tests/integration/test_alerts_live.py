"""Alerts end to end: gunicorn with two workers, the mock upstream, and a local webhook receiver.

A revoked token pool, an upstream that refuses connections and a budgeted key raise alerts; the
receiver sees each one once (after a failed first delivery is retried), signed, with nothing secret in
it, and the dashboard's audit page lists them.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from tests.integration.conftest import MASTER_KEY, free_port, start_gateway, upstream_toml

SECRET = "webhook-signing-secret-0123456789"
PASSWORD = "alerts-admin-password-0123"
SECRET_KEY = "alerts-secret-key-0123456789abcdef0123456789"
REVOKED = ["revoked-token-aaaaaaaaaaaa1", "revoked-token-bbbbbbbbbbbb2"]
DEAD_TOKENS = [f"dead-upstream-token-00000000{i}" for i in range(4)]


class Receiver:
    """A webhook: records every POST; the first `fail_first` answers are 500."""

    def __init__(self, fail_first: int) -> None:
        self.bodies: list[tuple[dict, dict]] = []
        self.raw: list[bytes] = []
        self.fail_first = fail_first
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with receiver.lock:
                    receiver.raw.append(body)
                    failing = receiver.fail_first > 0
                    receiver.fail_first -= 1
                    if not failing:
                        receiver.bodies.append((json.loads(body), dict(self.headers)))
                self.send_response(500 if failing else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/secret-path-xyz"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def events(self) -> list[tuple[str, str]]:
        with self.lock:
            return [(body["event"], body["subject"]) for body, _ in self.bodies]

    def wait_for(self, event: str, timeout: float = 20.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                found = [(body, headers) for body, headers in self.bodies if body["event"] == event]
            if found:
                return found[0]
            time.sleep(0.1)
        raise AssertionError(f"no {event} alert within {timeout}s; got {self.events()}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory, request):
    tmp = tmp_path_factory.mktemp("alerts")
    from tests.integration.conftest import start_mock

    mock = start_mock(tmp)
    receiver = Receiver(fail_first=1)
    config = (
        "[gateway]\nbreaker_failures = 2\nauto_disable_after = 1\nmax_attempts = 2\n\n"
        + upstream_toml("revoked", mock.url, REVOKED, ["pool-*"])
        + upstream_toml("dead", f"http://127.0.0.1:{free_port()}", DEAD_TOKENS, ["dead-*"])
        + upstream_toml("main", mock.url, ["main-token-000000000001"], ["mock-*"])
        + f'\n[[alerts]]\nurl = "{receiver.url}"\nsecret = "{SECRET}"\nrepeat_after = 600\n'
        + 'events = ["pool_exhausted", "token_auto_disabled", "breaker_open", "budget_80", "budget_100"]\n'
    )
    gateway = start_gateway(
        tmp, config, workers=2, SLUICE_ADMIN_PASSWORD=PASSWORD, SLUICE_SECRET_KEY=SECRET_KEY,
        SLUICE_LOG_LEVEL="INFO",
    )  # fmt: skip
    yield gateway, receiver
    gateway.stop()
    mock.stop()
    receiver.server.shutdown()
    receiver.server.server_close()


def post(gateway, model: str, key: str = MASTER_KEY) -> requests.Response:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}]}
    return requests.post(f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"},
                         timeout=30)  # fmt: skip


def test_alerts_are_delivered_once_signed_and_secret_free(stack):
    gateway, receiver = stack
    # Both revoked tokens answer 403: each is auto-disabled; then the pool has nothing usable.
    assert post(gateway, "pool-a").status_code == 502
    for _ in range(4):  # every worker, more than once: still one pool_exhausted alert
        assert post(gateway, "pool-a").status_code == 503
    # Connection refused on two tokens in a row: that worker's breaker for the upstream opens.
    assert post(gateway, "dead-a").status_code == 502

    disabled, headers = receiver.wait_for("token_auto_disabled")
    exhausted, _ = receiver.wait_for("pool_exhausted")
    breaker, _ = receiver.wait_for("breaker_open")
    assert disabled["severity"] == "warning" and exhausted["severity"] == "critical"
    assert disabled["subject"].startswith("revoked:") and breaker["subject"] == "dead"
    assert re.fullmatch(r"\d+", headers["X-Sluice-Timestamp"])
    raw = next(r for r in receiver.raw if json.loads(r)["event"] == "token_auto_disabled")
    expected = hmac.new(SECRET.encode(), headers["X-Sluice-Timestamp"].encode() + b"." + raw, hashlib.sha256)
    assert headers["X-Sluice-Signature"] == "sha256=" + expected.hexdigest()

    time.sleep(1.5)  # anything still queued in either worker would arrive now
    events = receiver.events()
    assert events.count(("pool_exhausted", exhausted["subject"])) == 1
    assert len(receiver.raw) == len(receiver.bodies) + 1  # the first delivery got a 500 and was retried
    everything = b"".join(receiver.raw).decode()
    for secret in [*REVOKED, *DEAD_TOKENS, MASTER_KEY, PASSWORD, SECRET_KEY, SECRET]:
        assert secret not in everything
    assert "secret-path-xyz" not in gateway.log()  # the webhook URL's path is a secret too


def test_budget_alert_and_the_audit_page(stack):
    gateway, receiver = stack
    created = gateway.cli("keys", "create", "budgeted", "--monthly-tokens", "30")
    assert created.returncode == 0, created.stderr
    key = created.stdout.strip().splitlines()[0]
    statuses = [post(gateway, "mock-gpt", key).status_code for _ in range(6)]
    assert statuses[-1] == 429 and 200 in statuses
    full, _ = receiver.wait_for("budget_100")
    assert full["fields"]["key"] == "budgeted" and key not in json.dumps(full)

    session = requests.Session()
    page = session.get(f"{gateway.url}/dashboard/login", timeout=10).text
    token = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    session.post(f"{gateway.url}/dashboard/login", data={"csrf_token": token, "password": PASSWORD}, timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        audit = session.get(f"{gateway.url}/dashboard/audit", timeout=10).text
        if "alert.budget_100" in audit:
            break
        time.sleep(0.2)
    assert "alert.token_auto_disabled" in audit and "alert.budget_100" in audit
    assert "sent after" in audit and "secret-path-xyz" not in audit
