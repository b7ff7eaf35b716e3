"""Alert webhooks ([[alerts]]): sent off the request path, retried, de-duplicated, signed.

`Alerter.emit` only puts the alert on a bounded queue (it never blocks and never raises); one
lazily started background thread (a greenlet under gevent) claims the alert's de-duplication
mark in the database (one send per event, subject and webhook per `repeat_after` across every
worker and instance), POSTs the JSON body with (connect, read) timeouts and no redirects,
retries with exponential backoff, and writes one audit row. A delivery that fails for want of
a working webhook gives its mark back, so the next emit of the alert tries again. The body
holds only the event, subject, text and fields given, every string passed through `scrub`.
A webhook URL may carry a secret in its path (Slack's do): only its host is ever logged or
audited. docs/alerts.md is the payload reference.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import queue
import sys
import threading
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from typing import Protocol
from urllib.parse import urlsplit

import requests

from app.config_routing import AlertConfig
from app.services import metrics
from app.storage.db import StorageError
from app.version import __version__

log = logging.getLogger("sluice.alerts")

Value = str | int | float | None
Field = Value | list[Value] | tuple[Value, ...]  # a list is sent as one comma-joined string
QUEUE_SIZE = 1000  # alerts waiting to be sent; more are dropped (a webhook that is down for long)
TIMEOUT = (3.0, 5.0)  # (connect, read) seconds per try
BACKOFF = (1.0, 2.0, 4.0, 8.0)  # seconds before the 2nd..5th try
TICK = 1.0  # the longest the thread waits for work before checking whether it was closed
MAX_TEXT = 1000  # characters of `text` kept (Slack shows far fewer in a notification)
MEMO_LIMIT = 4096  # (webhook, event, subject) pairs remembered before stale ones are forgotten
SEVERITY = {
    "pool_exhausted": "critical", "budget_100": "critical",
    "token_auto_disabled": "warning", "breaker_open": "warning", "budget_80": "warning",
    "breaker_closed": "info", "upstream_recovered": "info",
}  # fmt: skip


class Marks(Protocol):
    """The de-duplication store (app/storage/alerts.py's AlertMarks)."""

    def claim(self, event: str, subject: str, now: float, repeat_after: float) -> bool: ...

    def release(self, event: str, subject: str, claimed_at: float) -> bool: ...


@dataclass(frozen=True)
class Alert:
    event: str
    subject: str
    text: str
    fields: dict[str, Field]
    at: float


@dataclass
class Delivery:
    alert: Alert
    config: AlertConfig  # the config it was queued under: a reload does not redirect it


@dataclass
class Outcome:
    sent: bool
    tries: int
    status: str  # the last HTTP status, or the transport error's type (never its text: it holds the URL)
    refused: bool = False  # a final answer (4xx, 3xx): a later try would be refused too


@dataclass
class Stats:
    queued: int = 0
    sent: int = 0
    failed: int = 0
    dropped: int = 0  # queue full, or still queued at close
    repeated: int = 0  # held back by de-duplication
    errors: int = 0  # bugs and database failures, logged


def host_of(url: str) -> str:
    """The URL's host (and port, if given): never its path, query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port
    except ValueError:
        port = None
    host = f"[{host}]" if ":" in host else host  # IPv6
    return f"{host}:{port}" if port else host


def webhook_id(url: str) -> str:
    """A short stable name of a webhook for the de-duplication marks (a digest: the URL may hold a secret)."""
    return hashlib.sha256(url.encode()).hexdigest()[:12]


def mark_subject(url: str, subject: str) -> str:
    """The mark's subject: one per webhook, within the column's 200 characters."""
    name = f"{webhook_id(url)}:{subject}"
    return name if len(name) <= 200 else f"{webhook_id(url)}:#{hashlib.sha256(subject.encode()).hexdigest()}"


def one_line(text: str) -> str:
    """`text` with its control characters escaped (a newline in a subject must not forge a log line)."""
    return text if text.isprintable() else "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in text)


def _clean(value: object, scrub: Callable[[str], str]) -> Value:
    if isinstance(value, list | tuple):  # fields are scalars (docs/alerts.md): upstream names, say
        return scrub(",".join("" if item is None else str(item) for item in value))
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN
    return scrub(str(value))


def build_body(alert: Alert, scrub: Callable[[str], str]) -> bytes:
    """The JSON body (docs/alerts.md): built from the alert alone, every string scrubbed."""
    text = " ".join(scrub(alert.text).split())[:MAX_TEXT]  # one line
    body = {
        "text": text,
        "event": alert.event,
        "subject": scrub(alert.subject),
        "severity": SEVERITY.get(alert.event, "warning"),
        "at": int(alert.at),
        "gateway": "sluice",
        "fields": {scrub(str(k)): _clean(v, scrub) for k, v in alert.fields.items()},
    }
    return json.dumps(body, separators=(",", ":"), allow_nan=False).encode()


def signature_headers(secret: str, timestamp: int, body: bytes) -> dict[str, str]:
    """X-Sluice-Timestamp and X-Sluice-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return {"X-Sluice-Timestamp": str(timestamp), "X-Sluice-Signature": f"sha256={digest}"}


def is_retryable(status: int | None) -> bool:
    """Whether another try may succeed: a transport error (None), a timeout, throttling or a server error."""
    return status is None or status in (408, 429) or status >= 500


class Alerter:
    """Queues alerts and sends them from one background thread; see the module's docstring.

    `sleep` waits between tries (by default a wait that `close` interrupts); `clock` stamps
    the alerts, the marks and the signatures."""

    def __init__(
        self,
        configs: Sequence[AlertConfig],
        marks: Marks,
        audit: Callable[[str, str], None],
        scrub: Callable[[str], str],
        session: requests.Session | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], object] | None = None,
    ) -> None:
        self._configs = tuple(configs)
        self.marks, self.audit, self.scrub, self.clock = marks, audit, scrub, clock
        self._own_session = session is None  # closed by close(); a given one belongs to the caller
        self.session = session or requests.Session()
        self._stop = threading.Event()
        self.sleep = sleep or self._stop.wait
        self._queue: queue.Queue[Delivery | None] = queue.Queue(QUEUE_SIZE)  # None: wake up, closed
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self._unfinished = 0  # queued or being delivered
        self._memo: dict[tuple[str, str, str], float] = {}  # (url, event, subject) -> last queued
        self._thread: threading.Thread | None = None
        self._closed = self._dropping = False
        self.stats = Stats()

    def configure(self, configs: Sequence[AlertConfig]) -> None:
        """Use `configs` for the alerts emitted from now on (hot reload); queued ones keep theirs."""
        self._configs = tuple(configs)

    def emit(self, event: str, subject: str, text: str, fields: Mapping[str, Field] | None = None) -> None:
        """Queue the alert for every webhook whose `events` include `event`. Never blocks, never raises."""
        try:
            self._emit(event, subject, text, fields or {})
        except Exception:  # noqa: BLE001 - logged by _frames(): a bug must not fail the request that raised it
            self.stats.errors += 1
            log.error("alert %s could not be queued; carrying on\n%s", event, _frames())

    def _emit(self, event: str, subject: str, text: str, fields: Mapping[str, Field]) -> None:
        if self._closed:
            return
        alert = Alert(event, subject, text, dict(fields), self.clock())
        for config in self._configs:
            if event in config.events and self._fresh(config, alert):
                self._enqueue(Delivery(alert, config))

    def _fresh(self, config: AlertConfig, alert: Alert) -> bool:
        """False if this process queued the alert for this webhook within `repeat_after`: an alert
        raised on every request costs a dict look-up, not a queue slot and a database claim."""
        key = (config.url, alert.event, alert.subject)
        with self._lock:
            last = self._memo.get(key)
            if last is not None and alert.at - last < config.repeat_after:
                self.stats.repeated += 1
                return False
            if len(self._memo) >= MEMO_LIMIT:
                self._forget(alert.at)
            self._memo[key] = alert.at
            return True

    def _forget(self, now: float) -> None:
        longest = max((config.repeat_after for config in self._configs), default=0.0)
        self._memo = {key: at for key, at in self._memo.items() if now - at < longest}
        if len(self._memo) >= MEMO_LIMIT:  # that many live subjects: the database marks still hold
            self._memo.clear()

    def _enqueue(self, delivery: Delivery) -> None:
        with self._lock:
            try:
                self._queue.put_nowait(delivery)
            except queue.Full:
                self.stats.dropped += 1
                if not self._dropping:  # once per run of drops, not once per alert
                    log.error("alert queue full (%d waiting): dropping alerts until it drains", QUEUE_SIZE)
                self._dropping = True
                return
            self._dropping = False
            self._unfinished += 1
            self.stats.queued += 1
        self._start()

    def _start(self) -> None:
        """Start the delivery thread, or a new one if the last has ended (cheap when running)."""
        thread = self._thread
        if thread is not None and thread.is_alive():
            return
        with self._lock:
            if (self._thread is None or not self._thread.is_alive()) and not self._closed:
                self._thread = threading.Thread(target=self._loop, name="sluice-alerts", daemon=True)
                self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                delivery = self._queue.get(timeout=TICK)
            except queue.Empty:
                continue
            if delivery is None:  # close() woke the thread
                continue
            try:
                self._deliver(delivery)
            except Exception:  # noqa: BLE001 - logged by _frames(): this alert is lost, the next ones are not
                self.stats.errors += 1
                metrics.BACKGROUND_ERRORS.labels(chore="alerts").inc()
                log.error("alert %s failed; carrying on\n%s", delivery.alert.event, _frames())
            finally:
                self._finished()

    def _finished(self) -> None:
        with self._idle:
            self._unfinished -= 1
            self._idle.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until every queued alert has been handled; False if `timeout` passed first."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout)

    def _deliver(self, delivery: Delivery) -> None:
        alert, config = delivery.alert, delivery.config
        send, claimed_at = self._claim(alert, config)
        if not send:
            self.stats.repeated += 1
            return
        outcome = self._send(config, build_body(alert, self.scrub))
        verdict = "sent" if outcome.sent else "failed"
        target = f"{one_line(self.scrub(alert.subject))} -> {host_of(config.url)} {verdict}"
        target += f" after {outcome.tries} tries ({outcome.status})"
        if outcome.sent:
            self.stats.sent += 1
            log.info("alert %s: %s", alert.event, target)
        else:
            self.stats.failed += 1
            log.warning("alert %s: %s", alert.event, target)
        if not outcome.sent and not outcome.refused:
            self._give_back(alert, config, claimed_at)
        try:
            self.audit(f"alert.{alert.event}", target)
        except StorageError as exc:
            self.stats.errors += 1
            log.error("alert %s: audit row not written: %s", alert.event, exc)

    def _claim(self, alert: Alert, config: AlertConfig) -> tuple[bool, float | None]:
        """Whether this process sends the alert (the marks decide across processes), and the
        stamp of its claim. With the database away it sends (no claim): a duplicate alert beats a
        lost one, and `_fresh` still limits it."""
        subject, now = mark_subject(config.url, self.scrub(alert.subject)), self.clock()
        try:
            return self.marks.claim(alert.event, subject, now, config.repeat_after), now
        except StorageError as exc:
            self.stats.errors += 1
            log.error("alert %s: de-duplication mark unavailable, sending anyway: %s", alert.event, exc)
            return True, None

    def _give_back(self, alert: Alert, config: AlertConfig, claimed_at: float | None) -> None:
        """Forget that the alert was sent (this process's memo, and the mark every worker reads): it
        never arrived, so the next emit of it tries again instead of waiting for `repeat_after`."""
        key = (config.url, alert.event, alert.subject)
        with self._lock:
            if self._memo.get(key) == alert.at:  # not if a later emit of it has been queued since
                del self._memo[key]
        if claimed_at is None:
            return
        try:
            self.marks.release(alert.event, mark_subject(config.url, self.scrub(alert.subject)), claimed_at)
        except StorageError as exc:
            self.stats.errors += 1
            log.error("alert %s: de-duplication mark not given back: %s", alert.event, exc)

    def _send(self, config: AlertConfig, body: bytes) -> Outcome:
        """POST until a 2xx, a final refusal or the last try (1 + len(BACKOFF)); stops early on close."""
        tries = 0
        while True:
            tries += 1
            code, status = self._post(config, body)
            sent = code is not None and 200 <= code < 300
            if sent or not is_retryable(code) or tries > len(BACKOFF) or self._stop.is_set():
                return Outcome(sent, tries, status, refused=not sent and not is_retryable(code))
            self.sleep(BACKOFF[tries - 1])

    def _post(self, config: AlertConfig, body: bytes) -> tuple[int | None, str]:
        """One try: (HTTP status or None, what to report). A transport error is reported by its
        type only, since its text quotes the URL."""
        headers = {"Content-Type": "application/json", "User-Agent": f"sluice/{__version__}"}
        if config.secret:
            headers.update(signature_headers(config.secret, int(self.clock()), body))
        try:
            with self.session.post(
                config.url, data=body, headers=headers, timeout=TIMEOUT, allow_redirects=False, stream=True
            ) as response:  # stream: the receiver's answer is never read, only its status
                return response.status_code, str(response.status_code)
        except requests.RequestException as exc:
            return None, type(exc).__name__

    def close(self, timeout: float = 5.0) -> None:
        """Stop the delivery thread (waiting up to `timeout` for the alert in hand); alerts still
        queued are dropped and counted in one log line. A second call does nothing."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self._stop.set()
        with suppress(queue.Full):  # full: the thread is busy and sees the stop after this alert
            self._queue.put_nowait(None)
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
        dropped = 0
        while True:
            try:
                delivery = self._queue.get_nowait()
            except queue.Empty:
                break
            if delivery is not None:
                dropped += 1
                self._finished()
        self.stats.dropped += dropped
        if self._own_session and not (thread is not None and thread.is_alive()):
            self.session.close()
        if dropped:  # nothing to say otherwise (and at interpreter exit the log may be gone already)
            log.warning("alerts stopped: %d queued alerts dropped", dropped)


def _frames() -> str:
    """The current exception's traceback without its message (a requests or urllib3 message may quote a URL)."""
    exc = sys.exc_info()[1]
    name = type(exc).__name__ if exc is not None else "?"
    return "".join(traceback.format_tb(exc.__traceback__ if exc is not None else None)) + name
