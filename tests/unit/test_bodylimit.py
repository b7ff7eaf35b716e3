"""Body limits and the body-read deadline (app/bodylimit.py) through Flask's test client."""

from __future__ import annotations

import dataclasses
import io
import time

import pytest
import responses
from werkzeug.security import generate_password_hash

from app.bodylimit import ADMIN_API_LIMIT, DASHBOARD_LIMIT, LOGIN_FORM_LIMIT, BodyTimeout, BodyTooLarge, BoundedInput
from tests.conftest import BASE, make_config
from tests.unit.test_api import OK
from tests.unit.test_dashboard import PASSWORD, SECRET_KEY, csrf, sign_in


class Endless(io.RawIOBase):
    """A body that never ends (zero bytes), counting what was read from it."""

    def __init__(self) -> None:
        self.taken = 0

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        size = 65536 if size is None or size < 0 else min(size, 65536)
        self.taken += size
        return b"x" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


class Trickle(io.RawIOBase):
    """`total` bytes, one small piece per read, `delay` seconds apart."""

    def __init__(self, total: int, delay: float) -> None:
        self.left, self.delay = total, delay

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        if self.left <= 0:
            return b""
        time.sleep(self.delay)
        piece = min(self.left, 16, size if size and size > 0 else 16)
        self.left -= piece
        return b" " * piece

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


@pytest.fixture
def app(make_app):
    config = make_config()
    config = dataclasses.replace(config, gateway=dataclasses.replace(config.gateway, body_timeout=0.3))
    return make_app(config, secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))


def raw_post(client, path: str, stream, content_type: str, *, length: int | None = None, **headers: str):
    """POST `stream` as the body: with a Content-Length, or chunked as gunicorn hands it over."""
    environ = {"wsgi.input": stream}
    if length is None:
        environ.update({"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True, "CONTENT_LENGTH": ""})
    else:
        environ["CONTENT_LENGTH"] = str(length)
    return client.post(path, content_type=content_type, headers=headers, environ_overrides=environ)


def assert_openai_error(resp, status: int, code: str) -> None:
    assert resp.status_code == status, resp.data[:300]
    assert resp.json["error"]["code"] == code and set(resp.json["error"]) == {"message", "type", "param", "code"}


FORM = "application/x-www-form-urlencoded"
MULTIPART = "multipart/form-data; boundary=b"


@pytest.mark.parametrize("content_type", [FORM, MULTIPART])
def test_a_huge_declared_login_post_is_refused_before_reading(client, content_type):
    body = Endless()
    resp = raw_post(client, "/dashboard/login", body, content_type, length=1_400_000_000)
    assert_openai_error(resp, 413, "request_too_large")
    assert body.taken == 0


@pytest.mark.parametrize("content_type", [FORM, MULTIPART])
def test_a_chunked_login_post_is_cut_at_the_login_form_limit(client, content_type):
    body = Endless()
    resp = raw_post(client, "/dashboard/login", body, content_type)
    assert_openai_error(resp, 413, "request_too_large")
    assert body.taken <= LOGIN_FORM_LIMIT + 65536


@pytest.mark.parametrize("path", ["/dashboard/keys", "/dashboard/logout", "/dashboard/nowhere"])
def test_posts_before_sign_in_get_no_more_than_the_login_form(client, path):
    body = Endless()
    assert raw_post(client, path, body, FORM, length=LOGIN_FORM_LIMIT + 1).status_code == 413
    assert body.taken == 0
    body = Endless()
    assert raw_post(client, path, body, MULTIPART).status_code in (404, 413)  # an unknown path reads nothing
    assert body.taken <= LOGIN_FORM_LIMIT + 65536


def test_the_login_form_itself_still_works(client):
    assert sign_in(client).status_code == 303


def test_signed_in_forms_get_the_dashboard_limit(client):
    assert sign_in(client).status_code == 303
    token = csrf(client.get("/dashboard/keys").data)
    padded = {"csrf_token": token, "name": "padded", "note": "x" * (DASHBOARD_LIMIT // 2)}
    assert client.post("/dashboard/keys", data=padded).status_code == 201  # created
    body = Endless()
    assert raw_post(client, "/dashboard/keys", body, FORM).status_code == 413
    assert body.taken <= DASHBOARD_LIMIT + 65536


def test_admin_api_bodies_are_bounded_before_authentication(client, auth):
    body = Endless()
    resp = raw_post(client, "/admin/api/keys", body, "application/json", length=ADMIN_API_LIMIT + 1)
    assert_openai_error(resp, 413, "request_too_large")
    assert body.taken == 0
    body = Endless()
    resp = raw_post(client, "/admin/api/keys", body, "application/json", **auth)
    assert_openai_error(resp, 413, "request_too_large")
    assert ADMIN_API_LIMIT < body.taken <= ADMIN_API_LIMIT + 65536


def test_admin_api_bodies_under_the_limit_are_served(client, auth):
    resp = client.post("/admin/api/keys", json={"name": "n" * 50, "models": ["m" * 100] * 1000}, headers=auth)
    assert resp.status_code in (201, 400) and resp.json  # parsed and answered, not refused for size


@pytest.mark.parametrize(
    ("path", "content_type", "headers"),
    [
        ("/v1/chat/completions", "application/json", "api"),
        ("/admin/api/keys", "application/json", "api"),
        ("/dashboard/login", FORM, ""),
    ],
)
def test_a_body_that_trickles_in_past_the_deadline_gets_408(client, auth, path, content_type, headers):
    extra = auth if headers == "api" else {}
    started = time.monotonic()
    resp = raw_post(client, path, Trickle(4000, 0.02), content_type, length=4000, **extra)
    assert_openai_error(resp, 408, "request_timeout")
    assert time.monotonic() - started < 5  # refused at the deadline, not after the whole body
    resp = raw_post(client, path, Trickle(4000, 0.02), content_type, **extra)  # chunked
    assert_openai_error(resp, 408, "request_timeout")


def test_the_api_keeps_its_own_larger_limit(client, auth, upstream):
    body = b'{"model": "gpt-4o", "messages": [{"role": "user", "content": "' + b"x" * 12000 + b'"}]}'
    assert len(body) > LOGIN_FORM_LIMIT
    upstream.add(responses.POST, f"{BASE}/chat/completions", json=OK)
    resp = client.post("/v1/chat/completions", data=body, headers=auth, content_type="application/json")
    assert resp.status_code == 200


def test_bounded_input_checks_the_deadline_before_each_read():
    now = [0.0]
    stream = BoundedInput(io.BytesIO(b"a\nb\n" * 10), deadline=1.0, timeout=1.0, clock=lambda: now[0])
    assert stream.readline() == b"a\n"
    now[0] = 1.01  # past the deadline and the credit of the 2 bytes read
    with pytest.raises(BodyTimeout):
        stream.read(1)


def test_bounded_input_caps_lines_without_an_end():
    stream = BoundedInput(io.BytesIO(b"x" * 1000), deadline=time.monotonic() + 60, timeout=60)
    stream.limit = 100
    with pytest.raises(BodyTooLarge):
        stream.readline()
    assert stream.received == 101


def test_a_slow_but_steady_body_earns_time_as_it_arrives():
    """Behind nginx (unbuffered) Sluice sees the client's own pace: 50 KB/s must not be cut at
    body_timeout, a trickle must."""
    from app.bodylimit import MIN_RATE

    now = [0.0]
    steady = BoundedInput(io.BytesIO(b"x" * 10 * MIN_RATE), deadline=1.0, timeout=1.0, clock=lambda: now[0])
    for _ in range(10):  # MIN_RATE bytes each second: always within the moving deadline
        assert len(steady.read(MIN_RATE)) == MIN_RATE
        now[0] += 1.0
    trickle = BoundedInput(io.BytesIO(b"x" * 100), deadline=1.0, timeout=1.0, clock=lambda: now[0] - 10.0)
    trickle.read(10)
    now[0] += 1.5  # 10 bytes earned 0.6 ms, not half a second
    with pytest.raises(BodyTimeout):
        trickle.read(10)
