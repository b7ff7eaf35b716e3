"""Hostile input from clients and operators: 400s with a message, never a 500 or stored garbage.

Regression tests for the hardening issue (#10): lone surrogates, duplicate keys, non-finite
numbers, deep nesting, huge numbers, header names with a final newline, secret header overrides.
"""

from __future__ import annotations

import json
import logging

import pytest
import requests
from werkzeug.security import generate_password_hash

from app.config import ConfigError, UpstreamConfig, load_settings, validate_overrides
from app.jsontext import JsonError, loads_object
from app.services.admin import AdminError, key_options, parse_since
from tests.conftest import BASE, TOKENS, chat, make_config
from tests.unit.test_api import OK, assert_openai_error

SECRET_KEY = "s" * 40


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b'{"model": "\\ud800", "messages": [{"role": "user", "content": "x"}]}', "not valid Unicode"),
        (b'{"model": "m", "messages": [{"role": "user", "content": "a\\udfffb"}]}', "not valid Unicode"),
        (b'{"model": "m", "messages": [{"role": "user", "\\ud800": "x"}]}', "not valid Unicode"),
        (b'{"model": "gpt-test", "model": "dead-x", "messages": [{"role": "user", "content": "x"}]}', "more than once"),
        (b'{"model": "m", "temperature": 1e999, "messages": [{"role": "user", "content": "x"}]}', "too large"),
        (b'{"model": "m", "temperature": -1e999, "messages": [{"role": "user", "content": "x"}]}', "too large"),
        (b'{"model": "m", "temperature": NaN, "messages": [{"role": "user", "content": "x"}]}', "NaN"),
        (b'{"model": "m", "n": ' + b"9" * 5000 + b', "messages": [{}]}', "not valid JSON"),
        (b'{"model": "m", "messages": ' + b"[" * 8000 + b"]" * 8000 + b"}", "nested deeper"),
    ],
)
def test_bodies_another_parser_would_read_differently_are_400(client, auth, upstream, body, fragment):
    resp = client.post("/v1/chat/completions", data=body, headers={**auth, "Content-Type": "application/json"})
    error = assert_openai_error(resp, 400)
    assert fragment in error["message"]
    assert not upstream.calls  # nothing reached the upstream


def test_the_duplicate_key_is_named(client, auth):
    body = b'{"model": "gpt-test", "model": "dead-x", "messages": [{"role": "user", "content": "x"}]}'
    resp = client.post("/v1/chat/completions", data=body, headers={**auth, "Content-Type": "application/json"})
    assert_openai_error(resp, 400, param="model")


def test_valid_escapes_nested_duplicates_and_large_finite_numbers_pass(client, auth, upstream):
    upstream.post(f"{BASE}/chat/completions", json=OK)
    body = (
        b'{"model": "gpt-test", "temperature": 1e308, "metadata": {"a": 1, "a": 2},'
        b' "messages": [{"role": "user", "content": "smile \\ud83d\\ude00 caf\\u00e9"}]}'
    )
    resp = client.post("/v1/chat/completions", data=body, headers={**auth, "Content-Type": "application/json"})
    assert resp.status_code == 200, resp.get_data(as_text=True)
    sent = upstream.calls[0].request.body
    assert sent == body  # forwarded unchanged


def test_loads_object_names_each_problem():
    with pytest.raises(JsonError, match="more than once") as dup:
        loads_object(b'{"a": 1, "b": {"a": 1, "a": 2}, "a": 3}')
    assert dup.value.param == "a"
    assert loads_object(b'{"b": {"a": 1, "a": 2}}') == {"b": {"a": 2}}  # only the top level is checked


# Admin API and dashboard


@pytest.mark.parametrize(
    ("method", "path", "body", "fragment"),
    [
        ("post", "/admin/api/keys", {"name": "k", "expires_at": int("9" * 400)}, "year 10000"),
        ("post", "/admin/api/keys", b'{"name": "k", "rpm": ' + b"9" * 5000 + b"}", "not valid JSON"),
        ("post", "/admin/api/keys", b'{"name": "k", "models": ["\\ud800"]}', "not valid Unicode"),
        ("post", "/admin/api/keys", b'{"name": "k", "name": "j"}', "more than once"),
        ("post", "/admin/api/keys", b'{"name": ' + b"[" * 100_000 + b"]" * 100_000 + b"}", "nested deeper"),
        ("post", "/admin/api/keys", b'{"name": "k", "rpm": 1e999}', "too large"),
        ("patch", "/admin/api/upstreams/primary", {"headers": {"X-Foo\n": "v"}}, "not a valid HTTP header name"),
        ("get", "/admin/api/usage?since=" + "9" * 400 + "d", None, "since"),
        ("get", "/admin/api/usage?since=" + "9" * 400, None, "since"),
        ("get", "/admin/api/usage?since=%ED%A0%80", None, "since"),
    ],
)
def test_admin_api_answers_400_with_a_message(client, auth, method, path, body, fragment):
    kwargs = {"json": body} if isinstance(body, dict) else {"data": body}
    resp = getattr(client, method)(path, headers={**auth, "Content-Type": "application/json"}, **kwargs)
    error = assert_openai_error(resp, 400)
    assert fragment in error["message"], error
    assert client.get("/admin/api/keys", headers=auth).get_json()["data"] == []


def test_usage_since_accepts_the_documented_forms():
    assert parse_since("7d", 1_000_000.0) == 1_000_000.0 - 7 * 86400
    assert parse_since("2026-01-01T00:00:00Z", 0.0) == 1767225600.0
    with pytest.raises(AdminError):
        parse_since("١٢h", 0.0)  # Arabic-Indic digits are digits to Python's \d, not to us


def test_key_options_refuse_unencodable_models():
    with pytest.raises(AdminError, match="models"):
        key_options({"models": ["gpt-*", "\ud800"]})


def test_dashboard_form_bytes_that_are_not_utf8_never_break_a_page(make_app):
    from tests.unit.test_dashboard import PASSWORD, csrf, sign_in

    app = make_app(secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))
    client = app.test_client()
    sign_in(client)
    token = csrf(client.get("/dashboard/keys").data)
    body = f"csrf_token={token}&name=raw&models=%ED%A0%80gpt".encode()
    resp = client.post("/dashboard/keys", data=body, content_type="application/x-www-form-urlencoded")
    assert resp.status_code in (201, 400)
    for key in app.extensions["sluice"].keys.list():  # whatever was stored can be written as UTF-8
        json.dumps(key.public(0.0), ensure_ascii=False).encode("utf-8")
    assert client.get("/dashboard/keys").status_code == 200


# Configuration


@pytest.mark.parametrize("name", ["X-Foo\n", "X-Foo\r\n", "X Foo", ""])
def test_header_names_are_matched_whole(name):
    with pytest.raises(ConfigError, match="not a valid HTTP header name"):
        validate_overrides("primary", None, {name: "v"})


def test_upstream_names_are_matched_whole(tmp_path):
    from app.config import load_config

    path = tmp_path / "sluice.toml"
    path.write_text('[[upstreams]]\nname = "up\\n"\nbase_url = "http://127.0.0.1:9/v1"\n')
    with pytest.raises(ConfigError, match="name"):
        load_config(str(path))


def test_environment_values_that_are_not_utf8_stop_start_up():
    with pytest.raises(ConfigError, match="SLUICE_MASTER_KEY: is not valid UTF-8"):
        load_settings({"SLUICE_MASTER_KEY": "sk-abcdefghijklmnop\udcff"})


def test_a_request_that_cannot_be_sent_is_logged_with_its_cause(app, client, auth, upstream, logs):
    # A header that slipped past validation (written to the database by hand, or by an old version).
    app.extensions["sluice"].pool.repo.set_override("primary", None, {"X-Foo\n": "v"}, now=0.0)
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    assert resp.status_code == 502
    text = logs.getvalue()
    assert "upstream request failed" in text and "InvalidHeader" in text


# Secret-looking header overrides


def test_secret_header_overrides_are_sealed_redacted_and_resealed(make_app, auth, upstream, logs):
    config = make_config(UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS))
    app = make_app(config, secret_key=SECRET_KEY)
    client, gw = app.test_client(), app.extensions["sluice"]
    secret = "partner-api-key-000000000042"
    resp = client.patch(
        "/admin/api/upstreams/primary", json={"headers": {"X-Api-Key": secret, "X-Team": "a"}}, headers=auth
    )
    assert resp.status_code == 200 and secret not in resp.get_data(as_text=True)
    raw = gw.pool.repo.overrides()["primary"][1]
    assert raw["X-Team"] == "a" and secret not in json.dumps(raw)
    upstream.post(f"{BASE}/chat/completions", json=OK)
    assert client.post("/v1/chat/completions", json=chat(), headers=auth).status_code == 200
    assert upstream.calls[-1].request.headers["X-Api-Key"] == secret  # opened for the upstream
    logging.getLogger("sluice.test").warning("leak attempt %s", secret)
    assert secret not in logs.getvalue() and "leak attempt" in logs.getvalue()
    before = gw.pool.repo.overrides()["primary"][1]["X-Api-Key"]
    from app.services.admin import Admin

    assert Admin(gw, actor="test").rotate_secrets() == 1
    after = gw.pool.repo.overrides()["primary"][1]["X-Api-Key"]
    assert after != before and gw.pool.stored_overrides()["primary"][1]["X-Api-Key"] == secret


def test_secret_header_overrides_need_a_secret_key(client, auth):
    resp = client.patch(
        "/admin/api/upstreams/primary", json={"headers": {"Authorization-Extra": "x" * 20}}, headers=auth
    )
    error = assert_openai_error(resp, 400)
    assert "SLUICE_SECRET_KEY" in error["message"]


def test_plain_secret_headers_from_older_versions_are_read_and_sealed_by_rotate(make_app):
    app = make_app(secret_key=SECRET_KEY)
    gw = app.extensions["sluice"]
    gw.pool.repo.set_override("primary", None, {"X-Api-Key": "legacy-plain-value-0001"}, now=0.0)
    assert gw.pool.stored_overrides()["primary"][1] == {"X-Api-Key": "legacy-plain-value-0001"}
    from app.services.admin import Admin

    Admin(gw, actor="test").rotate_secrets()
    assert "legacy-plain-value" not in json.dumps(gw.pool.repo.overrides())


def test_requests_header_check_is_what_we_rely_on():
    """requests refuses a header name ending in a newline at prepare time (the log test's premise)."""
    with pytest.raises(requests.exceptions.InvalidHeader):
        requests.Request("GET", "http://127.0.0.1/", headers={"X-Foo\n": "v"}).prepare()


def test_header_bytes_that_are_not_utf8_are_refused_or_ignored_never_a_500(client, auth, upstream):
    """WSGI hands header bytes over as latin-1 text: always encodable, never forwarded unless printable ASCII."""
    odd = "\xed\xa0\x80"  # the UTF-8 form of a lone surrogate, as latin-1
    assert_openai_error(
        client.post("/v1/chat/completions", json=chat(), headers={"Authorization": f"Bearer {odd}"}), 401
    )
    upstream.post(f"{BASE}/chat/completions", json=OK)
    resp = client.post(
        "/v1/chat/completions", json=chat(), headers={**auth, "X-Request-Id": odd, "OpenAI-Organization": odd}
    )
    assert resp.status_code == 200 and odd not in resp.headers["X-Request-Id"]
    sent = upstream.calls[0].request.headers
    assert all(odd not in value for value in sent.values())


def test_a_plain_answer_larger_than_the_bound_is_refused_not_held(client, auth, upstream, monkeypatch):
    """A misbehaving upstream cannot make the worker hold any amount of memory for a plain answer."""
    monkeypatch.setattr("app.services.exchange.PLAIN_BODY_LIMIT", 1000)
    big = {**OK, "pad": "x" * 5000}
    for _ in TOKENS:
        upstream.post(f"{BASE}/chat/completions", json=big)
    resp = client.post("/v1/chat/completions", json=chat(), headers=auth)
    error = assert_openai_error(resp, 502, "upstream_error")
    assert "x" * 100 not in resp.get_data(as_text=True) and error["message"]


def test_nul_is_refused_where_it_would_be_stored_and_passed_on_in_content(client, auth, upstream):
    """PostgreSQL cannot store U+0000: the model (recorded, logged) and admin input refuse it."""
    body = b'{"model": "gpt\\u0000x", "messages": [{"role": "user", "content": "x"}]}'
    resp = client.post("/v1/chat/completions", data=body, headers={**auth, "Content-Type": "application/json"})
    assert "NUL" in assert_openai_error(resp, 400, param="model")["message"]
    upstream.post(f"{BASE}/chat/completions", json=OK)
    body = b'{"model": "gpt-test", "messages": [{"role": "user", "content": "a\\u0000b"}]}'
    resp = client.post("/v1/chat/completions", data=body, headers={**auth, "Content-Type": "application/json"})
    assert resp.status_code == 200  # message content is the upstream's business, and never stored
    admin = client.post("/admin/api/keys", data=b'{"name": "k", "models": ["gpt\\u0000"]}', headers=auth)
    assert "NUL" in assert_openai_error(admin, 400)["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("patch", "/admin/api/keys/a%00b"), ("delete", "/admin/api/tokens/a%00b"), ("get", "/admin/api/usage?since=1%00d"),
     ("get", "/v1/models/a%00b")],
)  # fmt: skip
def test_nul_in_a_path_or_query_is_a_400(client, auth, method, path):
    resp = getattr(client, method)(path, headers=auth, json={})
    assert "NUL" in assert_openai_error(resp, 400)["message"]


def test_nul_in_a_dashboard_form_is_a_400(make_app):
    from tests.unit.test_dashboard import PASSWORD, csrf, sign_in

    app = make_app(secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))
    client = app.test_client()
    sign_in(client)
    token = csrf(client.get("/dashboard/keys").data)
    resp = client.post("/dashboard/keys", data={"csrf_token": token, "name": "k", "models": "gpt\x00"})
    assert resp.status_code == 400 and app.extensions["sluice"].keys.list() == []
