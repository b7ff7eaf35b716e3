"""Alert webhooks (issue 13, section 3): delivered off the request path to a real local receiver,
signed, retried, de-duplicated across Alerters sharing a database, scrubbed, audited, and the
webhook URL (which may hold a secret) never logged or audited."""

from __future__ import annotations

import hmac
import json
import logging
import re
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from app.config_routing import AlertConfig
from app.services import alerts
from app.services.alerts import Alerter, host_of, is_retryable, mark_subject, signature_headers
from app.storage.alerts import AlertMarks, audit_to
from app.storage.db import Database, StorageError
from app.storage.migrate import upgrade
from app.storage.usage import audit_entries

PATH_SECRET = "B0SECRETPATHXYZ"  # a Slack webhook's path is its credential
TOKEN = "sk-live-abcdef0123456789"  # a token value that must never reach a receiver
WAIT = 30  # seconds an Event may take before the test fails (never a timing threshold)


class Receiver:
    """A webhook on 127.0.0.1 that records each request and answers with `statuses` in turn (then 200),
    or holds every request until `release` is set when `hang` is."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.statuses: list[int] = []
        self.hang = False
        self.arrived, self.release = threading.Event(), threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers), body))
                receiver.arrived.set()
                if receiver.hang:
                    receiver.release.wait(WAIT)
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                if 300 <= status < 400:
                    self.send_header("Location", "/elsewhere")
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def url(self, name: str = "hook") -> str:
        return f"http://127.0.0.1:{self.server.server_port}/services/{name}/{PATH_SECRET}"

    def bodies(self) -> list[dict]:
        return [json.loads(body) for _, _, body in self.requests]

    def close(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver():
    hook = Receiver()
    yield hook
    hook.close()


@pytest.fixture
def db(tmp_path):
    database = Database(f"sqlite:///{tmp_path}/alerts.db")
    upgrade(database)
    yield database
    database.dispose()


class Clock:
    def __init__(self, now: float = 1_767_225_600.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make(db):
    """Alerter(configs, **overrides) on the test database, with a recorded instant `sleep`."""
    made: list[Alerter] = []

    def build(configs, **overrides) -> Alerter:
        sleeps: list[float] = []
        options = {"marks": AlertMarks(db), "audit": audit_to(db), "scrub": lambda s: s.replace(TOKEN, "sk-l...6789")}
        options.update({"sleep": sleeps.append, **overrides})
        alerter = Alerter(configs, **options)
        alerter.sleeps = sleeps  # type: ignore[attr-defined]
        made.append(alerter)
        return alerter

    yield build
    for alerter in made:
        alerter.close(timeout=WAIT)


def config(url: str, events=("breaker_open", "pool_exhausted"), **options) -> AlertConfig:
    return AlertConfig(url=url, events=tuple(events), **options)


def deliver(alerter: Alerter) -> None:
    assert alerter.wait_idle(WAIT)


def targets(db) -> list[str]:
    return [row["target"] for row in reversed(audit_entries(db)) if row["actor"] == "alerts"]


def test_an_alert_is_posted_as_json_with_its_fields(make, receiver, db):
    alerter = make([config(receiver.url())], clock=Clock())
    alerter.emit("breaker_open", "openai", "Breaker open\nfor openai", {"failures": 5, "rate": 0.5, "note": None})
    deliver(alerter)
    [(path, headers, _)] = receiver.requests
    assert path == f"/services/hook/{PATH_SECRET}"
    assert headers["Content-Type"] == "application/json"
    assert "X-Sluice-Signature" not in headers
    assert receiver.bodies() == [
        {
            "text": "Breaker open for openai",
            "event": "breaker_open",
            "subject": "openai",
            "severity": "warning",
            "at": 1_767_225_600,
            "gateway": "sluice",
            "fields": {"failures": 5, "rate": 0.5, "note": None},
        }
    ]
    assert targets(db) == [f"openai -> {host_of(receiver.url())} sent after 1 tries (200)"]
    assert [row["action"] for row in audit_entries(db)] == ["alert.breaker_open"]


def _receiver_check():
    """The `verified` function docs/alerts.md shows receivers."""
    text = (Path(__file__).resolve().parents[2] / "docs" / "alerts.md").read_text()
    code = re.search(r"<!-- receiver-check.*?```python\n(.*?)```", text, re.S).group(1)
    scope: dict = {}
    exec(code, scope)  # noqa: S102 - our own documentation's example
    return scope["verified"]


def test_a_signed_alert_verifies_with_the_documented_check(make, receiver):
    secret = "0123456789abcdef-secret"
    alerter = make([config(receiver.url(), secret=secret)])
    alerter.emit("breaker_open", "openai", "Breaker open", {})
    deliver(alerter)
    [(_, headers, body)] = receiver.requests
    assert headers["X-Sluice-Signature"].startswith("sha256=")
    assert _receiver_check()(secret.encode(), headers, body)
    assert not _receiver_check()(b"another-secret-0000", headers, body)
    assert not _receiver_check()(secret.encode(), headers, body + b" ")
    assert secret not in json.dumps(headers) + body.decode()  # the secret itself is never sent


# (the receiver's answers before 200, tries, sent, the sleeps between them, the status audited)
RETRIES = [
    ([], 1, True, [], "200"),
    ([500, 502], 3, True, [1.0, 2.0], "200"),
    ([503, 429, 408, 500], 5, True, [1.0, 2.0, 4.0, 8.0], "200"),
    ([500] * 5, 5, False, [1.0, 2.0, 4.0, 8.0], "500"),
    ([404], 1, False, [], "404"),
    ([400], 1, False, [], "400"),
    ([302], 1, False, [], "302"),  # a redirect is not followed
    ([204], 1, True, [], "204"),
]


@pytest.mark.parametrize(("answers", "tries", "sent", "sleeps", "status"), RETRIES)
def test_retries_with_backoff_until_sent_or_given_up(make, receiver, db, answers, tries, sent, sleeps, status):
    receiver.statuses = list(answers)
    alerter = make([config(receiver.url())])
    alerter.emit("pool_exhausted", "openai", "No usable token", {})
    deliver(alerter)
    assert len(receiver.requests) == tries
    assert {path for path, _, _ in receiver.requests} == {f"/services/hook/{PATH_SECRET}"}
    assert alerter.sleeps == sleeps
    verdict = "sent" if sent else "failed"
    assert targets(db) == [f"openai -> {host_of(receiver.url())} {verdict} after {tries} tries ({status})"]
    assert (alerter.stats.sent, alerter.stats.failed) == ((1, 0) if sent else (0, 1))


@pytest.mark.parametrize(
    ("state", "expected"),
    [(None, True), (408, True), (429, True), (500, True), (599, True), (400, False), (401, False), (404, False),
     (301, False), (200, False)],
)  # fmt: skip
def test_is_retryable(state, expected):
    assert is_retryable(state) is expected


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_refused_connection_is_retried_then_audited_as_failed(make, db):
    url = f"http://127.0.0.1:{_closed_port()}/services/hook/{PATH_SECRET}"
    alerter = make([config(url)])
    alerter.emit("breaker_open", "openai", "Breaker open", {})
    deliver(alerter)
    assert alerter.sleeps == [1.0, 2.0, 4.0, 8.0]
    assert targets(db) == [f"openai -> {host_of(url)} failed after 5 tries (ConnectionError)"]


def test_an_alert_is_sent_once_per_repeat_after(make, receiver, db):
    clock = Clock()
    alerter = make([config(receiver.url(), repeat_after=900.0)], clock=clock)
    alerter.emit("breaker_open", "openai", "first", {})
    alerter.emit("breaker_open", "openai", "again", {})
    deliver(alerter)
    clock.now += 899
    alerter.emit("breaker_open", "openai", "still", {})
    alerter.emit("breaker_open", "anthropic", "another subject", {})
    alerter.emit("pool_exhausted", "openai", "another event", {})
    alerter.emit("budget_80", "openai", "an event this webhook does not want", {})
    deliver(alerter)
    clock.now += 1
    alerter.emit("breaker_open", "openai", "after repeat_after", {})
    deliver(alerter)
    assert [b["text"] for b in receiver.bodies()] == ["first", "another subject", "another event", "after repeat_after"]
    assert len(targets(db)) == 4


def test_two_alerters_on_one_database_send_once(make, receiver, db):
    other = Database(db.url)  # another worker's handle on the same database
    clock = Clock()
    first = make([config(receiver.url())], clock=clock)
    second = make([config(receiver.url())], clock=clock, marks=AlertMarks(other), audit=audit_to(other))
    first.emit("breaker_open", "openai", "from worker 1", {})
    second.emit("breaker_open", "openai", "from worker 2", {})
    deliver(first)
    deliver(second)
    assert len(receiver.requests) == 1
    assert first.stats.repeated + second.stats.repeated == 1
    other.dispose()


def test_each_webhook_gets_its_own_alert(make, receiver):
    urls = [receiver.url(name) for name in "abc"]
    alerter = make([config(urls[0]), config(urls[1]), config(urls[2], events=["budget_80"])])
    alerter.emit("breaker_open", "openai", "Breaker open", {})
    deliver(alerter)
    assert sorted(path for path, _, _ in receiver.requests) == [f"/services/{n}/{PATH_SECRET}" for n in "ab"]


def test_a_hanging_webhook_never_blocks_emit(make, receiver):
    receiver.hang = True
    alerter = make([config(receiver.url())])
    alerter.emit("breaker_open", "openai", "held by the receiver", {})
    assert receiver.arrived.wait(WAIT)  # the delivery thread now waits on the receiver
    returned = threading.Event()

    def raise_more() -> None:
        for n in range(20):
            alerter.emit("breaker_open", f"upstream-{n}", "more", {})
        returned.set()

    threading.Thread(target=raise_more, daemon=True).start()
    assert returned.wait(WAIT)
    assert not receiver.release.is_set() and len(receiver.requests) == 1  # still held while emit returned
    receiver.release.set()
    deliver(alerter)
    assert len(receiver.requests) == 21


def test_a_refusing_webhook_never_blocks_emit(make):
    gate = threading.Event()
    alerter = make([config(f"http://127.0.0.1:{_closed_port()}/x/{PATH_SECRET}")], sleep=lambda _: gate.wait(WAIT))
    returned = threading.Event()

    def raise_some() -> None:
        for n in range(5):
            alerter.emit("breaker_open", f"upstream-{n}", "refused", {})
        returned.set()

    threading.Thread(target=raise_some, daemon=True).start()
    assert returned.wait(WAIT)  # while the delivery thread sits in its backoff
    gate.set()
    deliver(alerter)
    assert alerter.stats.failed == 5


def test_a_full_queue_drops_alerts_and_says_so_once(make, receiver, monkeypatch, caplog):
    monkeypatch.setattr(alerts, "QUEUE_SIZE", 2)
    receiver.hang = True
    alerter = make([config(receiver.url())])
    alerter.emit("breaker_open", "held", "in the thread's hands", {})
    assert receiver.arrived.wait(WAIT)
    with caplog.at_level(logging.INFO, logger="sluice.alerts"):
        for n in range(5):
            alerter.emit("breaker_open", f"upstream-{n}", "queued or dropped", {})
        alerter.close(timeout=0)  # the two queued ones are dropped too
    assert alerter.stats.dropped == 5
    said = [r.getMessage() for r in caplog.records]
    assert said.count("alert queue full (2 waiting): dropping alerts until it drains") == 1
    assert "alerts stopped: 2 queued alerts dropped" in caplog.text
    alerter.emit("breaker_open", "after close", "ignored", {})
    assert alerter.stats.queued == 3
    receiver.release.set()
    alerter._thread.join(WAIT)  # the alert in hand ends before the database goes


def test_configure_keeps_queued_alerts_on_their_webhook(make, receiver):
    receiver.hang = True
    alerter = make([config(receiver.url("old"))])
    alerter.emit("breaker_open", "a", "in flight", {})
    assert receiver.arrived.wait(WAIT)
    alerter.emit("breaker_open", "b", "queued", {})
    alerter.configure([config(receiver.url("new"))])
    alerter.emit("breaker_open", "c", "after the reload", {})
    receiver.release.set()
    deliver(alerter)
    sent = {json.loads(body)["subject"]: path.split("/")[2] for path, _, body in receiver.requests}
    assert sent == {"a": "old", "b": "old", "c": "new"}


def test_secrets_are_scrubbed_from_every_string(make, receiver, db):
    alerter = make([config(receiver.url(), events=["token_auto_disabled"])])
    alerter.emit("token_auto_disabled", f"tok-{TOKEN}", f"Token {TOKEN} disabled", {"token": TOKEN, TOKEN: 1})
    deliver(alerter)
    [(_, headers, body)] = receiver.requests
    assert TOKEN not in body.decode() + json.dumps(headers)
    assert receiver.bodies()[0]["fields"] == {"token": "sk-l...6789", "sk-l...6789": 1}
    assert TOKEN not in " ".join(targets(db))


def test_the_webhook_url_is_never_logged_or_audited(make, receiver, db, caplog):
    refused = f"http://user:Pa55word@127.0.0.1:{_closed_port()}/services/gone/{PATH_SECRET}"
    receiver.statuses = [500, 500, 500, 500, 500]
    with caplog.at_level(logging.DEBUG, logger="sluice"):
        alerter = make([config(receiver.url()), config(refused)])
        alerter.emit("breaker_open", "openai", "Breaker open", {})
        alerter.emit("pool_exhausted", "openai", "No usable token", {})
        deliver(alerter)
    assert len(targets(db)) == 4 and caplog.records
    for text in [caplog.text, *targets(db)]:
        assert PATH_SECRET not in text and "Pa55word" not in text and "/services" not in text
    assert f"-> 127.0.0.1:{receiver.server.server_port} sent after" in caplog.text


def test_the_thread_survives_a_failing_alert(make, receiver):
    def scrub(text: str) -> str:
        if "boom" in text:
            raise RuntimeError("a bug in the redactor")
        return text

    alerter = make([config(receiver.url())], scrub=scrub)
    alerter.emit("breaker_open", "boom", "boom", {})
    alerter.emit("breaker_open", "openai", "fine", {})
    deliver(alerter)
    assert [b["text"] for b in receiver.bodies()] == ["fine"]
    assert alerter.stats.errors == 1


def test_emit_never_raises(make, receiver, caplog):
    alerter = make([config(receiver.url())])
    with caplog.at_level(logging.ERROR, logger="sluice.alerts"):
        alerter.emit("breaker_open", "openai", "fields that are no mapping", 5)  # type: ignore[arg-type]
    assert alerter.stats.errors == 1 and "could not be queued" in caplog.text


class AwayMarks:
    def claim(self, event: str, subject: str, now: float, repeat_after: float) -> bool:
        raise StorageError("database write failed: OperationalError")


def test_an_unreachable_database_sends_anyway(make, receiver):
    alerter = make([config(receiver.url())], marks=AwayMarks())
    alerter.emit("breaker_open", "openai", "Breaker open", {})
    alerter.emit("breaker_open", "openai", "held back by this process", {})
    deliver(alerter)
    assert [b["text"] for b in receiver.bodies()] == ["Breaker open"]


@pytest.mark.parametrize(
    ("url", "host"),
    [
        ("https://hooks.slack.com/services/T0/B0/XXXX", "hooks.slack.com"),
        ("http://user:secret@example.com:8080/path?token=x", "example.com:8080"),
        ("http://[::1]:9000/hook", "[::1]:9000"),
        ("not a url", "?"),
    ],
)
def test_host_of_keeps_only_the_host(url, host):
    assert host_of(url) == host


def test_mark_subjects_fit_the_column_and_differ_per_webhook():
    assert mark_subject("https://a/x", "openai") != mark_subject("https://b/x", "openai")
    long = mark_subject("https://a/x", "s" * 500)
    assert len(long) <= 200 and long != mark_subject("https://a/x", "s" * 499)
    assert PATH_SECRET not in mark_subject(f"https://a/{PATH_SECRET}", "openai")


def test_signature_headers_match_hmac_sha256():
    headers = signature_headers("key", 1700000000, b'{"a":1}')
    assert headers == {
        "X-Sluice-Timestamp": "1700000000",
        "X-Sluice-Signature": "sha256=" + hmac.new(b"key", b'1700000000.{"a":1}', "sha256").hexdigest(),
    }


class Refusing(requests.Session):
    """A session whose first `refusals` POSTs find nobody listening (the webhook is down)."""

    def __init__(self, refusals: int) -> None:
        super().__init__()
        self.refusals = refusals

    def post(self, *args, **kwargs):  # type: ignore[override]
        if self.refusals:
            self.refusals -= 1
            raise requests.ConnectionError("connection refused")
        return super().post(*args, **kwargs)


# (tries refused outright, then the receiver's answers, to the first alert; whether a later emit is sent)
GIVEN_BACK = [
    (5, [], True),  # the webhook is down: every try fails, nothing was delivered
    (0, [500] * 5, True),
    (2, [503, 429, 408], True),
    (0, [404], False),  # a final refusal: the next try would be refused too, so it uses up the window
]


@pytest.mark.parametrize(("refusals", "answers", "sent_later"), GIVEN_BACK)
def test_a_failed_delivery_does_not_use_up_the_repeat_window(make, receiver, refusals, answers, sent_later):
    receiver.statuses = list(answers)
    clock = Clock()
    with Refusing(refusals) as session:
        alerter = make([config(receiver.url(), repeat_after=900.0)], clock=clock, session=session)
        alerter.emit("pool_exhausted", "openai", "webhook down", {})
        deliver(alerter)
        assert alerter.stats.failed == 1 and len(receiver.requests) == len(answers)
        clock.now += 60  # the webhook works again; the pool is still dry
        alerter.emit("pool_exhausted", "openai", "webhook back", {})
        deliver(alerter)
    texts = [b["text"] for b in receiver.bodies()]
    assert texts == ["webhook down"] * len(answers) + (["webhook back"] if sent_later else [])
    assert alerter.stats.sent == int(sent_later)
    other = make([config(receiver.url(), repeat_after=900.0)], clock=clock)  # another worker: no memo
    other.emit("pool_exhausted", "openai", "from another worker", {})
    deliver(other)
    assert other.stats.repeated == 1 and len(receiver.requests) == len(texts)


@pytest.mark.parametrize(
    ("fields", "sent"),
    [
        ({"upstreams": ["a", "b"]}, {"upstreams": "a,b"}),
        ({"upstreams": ("a",)}, {"upstreams": "a"}),
        ({"upstreams": []}, {"upstreams": ""}),
        ({"codes": [401, 403], "tokens": [TOKEN]}, {"codes": "401,403", "tokens": "sk-l...6789"}),
        ({"n": 3, "ok": True, "rate": float("nan")}, {"n": 3, "ok": True, "rate": None}),
    ],
)
def test_list_fields_are_sent_comma_joined(fields, sent):
    body = alerts.build_body(
        alerts.Alert("pool_exhausted", "m", "t", fields, 0.0), lambda s: s.replace(TOKEN, "sk-l...6789")
    )
    assert json.loads(body)["fields"] == sent


FORGED = "gpt-x\n2026-11-28 11:00:00,000 CRITICAL sluice forged line"


def test_an_event_is_logged_on_one_line_at_debug(caplog):
    from app.services import events

    with caplog.at_level(logging.DEBUG, logger="sluice.events"):
        events.emit("pool_exhausted", FORGED, "No upstream\nforged too", {})
    [record] = [r for r in caplog.records if r.name == "sluice.events"]
    assert record.levelno == logging.DEBUG
    assert "\n" not in record.getMessage() and "\\n2026-11-28" in record.getMessage()


def test_a_delivery_is_logged_and_audited_on_one_line(make, receiver, db, caplog):
    alerter = make([config(receiver.url())])
    with caplog.at_level(logging.INFO, logger="sluice.alerts"):
        alerter.emit("pool_exhausted", FORGED, "No upstream", {})
        deliver(alerter)
    [line] = [r.getMessage() for r in caplog.records if r.name == "sluice.alerts"]
    assert "\n" not in line + "".join(targets(db)) and "gpt-x\\n2026" in line
    assert receiver.bodies()[0]["subject"] == FORGED  # the receiver gets it as it is, inside JSON
