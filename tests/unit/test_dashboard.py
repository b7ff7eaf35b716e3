"""The dashboard through Flask's test client: sign-in, CSRF, throttle, escaping, secrets, audit."""

from __future__ import annotations

import json
import re
import time

import pytest
from werkzeug.security import generate_password_hash

from app.config import ConfigError, load_settings
from app.storage.usage import audit_entries
from tests.conftest import MASTER_KEY, TOKENS

PASSWORD = "correct horse battery staple"
SECRET_KEY = "s" * 40
PAGES = ["/dashboard", "/dashboard?range=24h", "/dashboard/upstreams", "/dashboard/keys",
         "/dashboard/usage?range=7d", "/dashboard/requests", "/dashboard/audit"]  # fmt: skip


@pytest.fixture
def app(make_app, config):
    return make_app(config, secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))


def csrf(page: bytes) -> str:
    return re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()


def sign_in(client, password: str = PASSWORD, **environ):
    token = csrf(client.get("/dashboard/login").data)
    return client.post("/dashboard/login", data={"csrf_token": token, "password": password}, environ_overrides=environ)


@pytest.fixture
def admin(client):
    """A signed-in client and its CSRF token."""
    assert sign_in(client).status_code == 303
    return client, csrf(client.get("/dashboard/keys").data)


def audit(app) -> list[tuple[str, str, str]]:
    return [(e["actor"], e["action"], e["target"]) for e in audit_entries(app.extensions["sluice"].db)]


def test_without_a_password_the_dashboard_says_how_to_enable_it(make_app):
    client = make_app().test_client()
    page = client.get("/dashboard")
    assert page.status_code == 503
    assert b"SLUICE_ADMIN_PASSWORD" in page.data and b"hash-password" in page.data
    assert client.get("/dashboard/login").status_code == 503
    assert client.get("/").headers["Location"] == "/dashboard"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"SLUICE_ADMIN_PASSWORD": PASSWORD}, "SLUICE_SECRET_KEY"),
        ({"SLUICE_ADMIN_PASSWORD": "short", "SLUICE_SECRET_KEY": SECRET_KEY}, "at least 12"),
        ({"SLUICE_ADMIN_PASSWORD_HASH": "plain-text", "SLUICE_SECRET_KEY": SECRET_KEY}, "hash-password"),
    ],
)
def test_bad_password_settings_stop_start_up(env, message):
    with pytest.raises(ConfigError, match=message):
        load_settings(env)


def test_password_is_kept_only_hashed():
    settings = load_settings({"SLUICE_ADMIN_PASSWORD": PASSWORD, "SLUICE_SECRET_KEY": SECRET_KEY})
    assert settings.admin_password_hash.startswith("scrypt:") and PASSWORD not in repr(settings)
    given = generate_password_hash(PASSWORD)
    assert (
        load_settings({"SLUICE_ADMIN_PASSWORD_HASH": given, "SLUICE_SECRET_KEY": SECRET_KEY}).admin_password_hash
        == given
    )


def test_pages_need_a_sign_in(client):
    for page in PAGES:
        answer = client.get(page)
        assert answer.status_code == 302 and answer.headers["Location"].startswith("/dashboard/login")


def test_sign_in_sets_a_strict_cookie_and_every_page_renders(app, client):
    answer = sign_in(client)
    assert answer.status_code == 303 and answer.headers["Location"] == "/dashboard"
    cookie = answer.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and "Secure" not in cookie
    for page in PAGES:
        answer = client.get(page)
        assert answer.status_code == 200, page
        assert "script-src 'self'" in answer.headers["Content-Security-Policy"]
        assert answer.headers["Cache-Control"] == "no-store"
    assert ("dashboard:admin", "login", "127.0.0.1") in audit(app)


def test_cookie_is_secure_behind_a_trusted_https_proxy_only(make_app, config):
    settings = {"secret_key": SECRET_KEY, "admin_password_hash": generate_password_hash(PASSWORD)}
    trusted = make_app(config, trusted_proxies=1, **settings).test_client()
    assert "Secure" in sign_in(trusted, HTTP_X_FORWARDED_PROTO="https").headers["Set-Cookie"]
    untrusted = make_app(config, **settings).test_client()
    assert "Secure" not in sign_in(untrusted, HTTP_X_FORWARDED_PROTO="https").headers["Set-Cookie"]


def test_next_only_leads_within_the_dashboard(client):
    for target, expected in [("/dashboard/keys", "/dashboard/keys"), ("https://evil.test/", "/dashboard"),
                             ("//evil.test/dashboard", "/dashboard"), ("/v1/models", "/dashboard"),
                             ("/dashboard/../v1/models", "/dashboard"),
                             ("/dashboard/usage?range=7d", "/dashboard/usage?range=7d"),
                             ("/dashboard\r\nX-Evil: 1", "/dashboard"), ("/dashboardx", "/dashboard")]:  # fmt: skip
        token = csrf(client.get("/dashboard/login").data)  # a new one after each sign-in
        answer = client.post("/dashboard/login", data={"csrf_token": token, "password": PASSWORD, "next": target})
        assert answer.headers["Location"] == expected


def test_wrong_passwords_are_throttled_per_address(app, client):
    for _ in range(5):
        answer = sign_in(client, "wrong password!")
        assert answer.status_code == 401 and b"Wrong password." in answer.data
    blocked = sign_in(client)  # even the right password waits
    assert blocked.status_code == 429
    assert b"Too many failed sign-ins" in blocked.data and 1 <= int(blocked.headers["Retry-After"]) <= 60
    assert sign_in(client, REMOTE_ADDR="10.9.9.9").status_code == 303  # another address is not blocked
    assert audit(app).count(("dashboard:admin", "login.failed", "127.0.0.1")) == 5


def test_login_needs_a_csrf_token(client):
    client.get("/dashboard/login")
    answer = client.post("/dashboard/login", data={"password": PASSWORD})
    assert answer.status_code == 403 and b"security token" in answer.data
    assert client.get("/dashboard").status_code == 302


STATE_CHANGES = [
    ("/dashboard/keys", {"name": "sneaky"}),
    ("/dashboard/keys/{key}/disable", {}),
    ("/dashboard/keys/{key}/revoke", {}),
    ("/dashboard/tokens", {"upstream": "primary", "token": "tok-sneaky-000000000009"}),
    ("/dashboard/tokens/{token}/disable", {}),
    ("/dashboard/tokens/{token}/remove", {}),
    ("/dashboard/tokens/{token}/validate", {}),
    ("/dashboard/upstreams/primary", {"user_agent": "evil/1"}),
    ("/dashboard/logout", {}),
]


@pytest.mark.parametrize(("path", "form"), STATE_CHANGES)
@pytest.mark.parametrize("token", [None, "forged-token"])
def test_no_state_change_without_a_valid_csrf_token(app, admin, path, form, token, upstream):
    client, _ = admin
    gw = app.extensions["sluice"]
    key, _ = gw.keys.create("victim", now=time.time())
    token_id = gw.pool.rows()[0].id
    before = (gw.keys.list(), gw.pool.rows(), gw.pool.repo.overrides(), audit(app))
    data = dict(form, **({"csrf_token": token} if token else {}))
    answer = client.post(path.format(key=key.id, token=token_id), data=data)
    assert answer.status_code == 403
    assert (gw.keys.list(), gw.pool.rows(), gw.pool.repo.overrides(), audit(app)) == before
    assert len(upstream.calls) == 0  # no probe went out
    assert client.get("/dashboard/keys").status_code == 200  # still signed in


def test_keys_are_created_once_listed_disabled_and_revoked(app, admin):
    client, token = admin
    created = client.post("/dashboard/keys", data={"csrf_token": token, "name": "team-a", "rpm": "10",
                                                    "models": "mock-*", "expires_at": "2030-01-01T00:00"})  # fmt: skip
    assert created.status_code == 201
    secret = re.search(rb'value="(sk-sluice-[^"]+)"', created.data).group(1).decode()
    key = app.extensions["sluice"].keys.by_secret(secret)
    assert key.rpm == 10 and key.models == ("mock-*",) and key.expires_at == 1893456000.0
    listing = client.get("/dashboard/keys").data
    assert secret.encode() not in listing and b"team-a" in listing
    duplicate = client.post("/dashboard/keys", data={"csrf_token": token, "name": "team-a"})
    assert duplicate.status_code == 409 and b"already" in duplicate.data
    bad = client.post("/dashboard/keys", data={"csrf_token": token, "name": "x", "rpm": "-3"})
    assert bad.status_code == 400 and b"rpm" in bad.data
    assert client.post(f"/dashboard/keys/{key.id}/disable", data={"csrf_token": token}).status_code == 303
    assert client.post(f"/dashboard/keys/{key.id}/revoke", data={"csrf_token": token}).status_code == 303
    page = client.get("/dashboard/keys").data
    assert b"Key team-a revoked." in page and b'class="state revoked"' in page
    actions = [a for a in audit(app) if a[0] == "dashboard:admin"]
    for action in ("key.create", "key.disable", "key.revoke"):
        assert ("dashboard:admin", action, "team-a") in actions


def test_tokens_added_validated_disabled_removed_and_never_shown(app, admin, upstream):
    client, token = admin
    new = "tok-delta-runtime-000000000004"
    added = client.post("/dashboard/tokens", data={"csrf_token": token, "upstream": "primary", "token": new})
    assert added.status_code == 303
    page = client.get("/dashboard/upstreams").data
    assert new.encode() not in page and b"...0004" in page
    tid = next(r.id for r in app.extensions["sluice"].pool.rows() if r.source == "runtime")
    upstream.get("http://upstream.test/v1/models", json={"data": []})
    valid = client.post(f"/dashboard/tokens/{tid}/validate", data={"csrf_token": token}, follow_redirects=True)
    assert f"Token {tid} is valid: 200 OK".encode() in valid.data
    assert upstream.calls[-1].request.headers["Authorization"] == f"Bearer {new}"
    assert upstream.calls[-1].request.headers["User-Agent"].startswith("sluice/")
    upstream.replace("GET", "http://upstream.test/v1/models", status=401, json={"error": {"message": "revoked"}})
    invalid = client.post(f"/dashboard/tokens/{tid}/validate", data={"csrf_token": token}, follow_redirects=True)
    assert f"Token {tid} is NOT valid: 401".encode() in invalid.data
    for action in ("disable", "enable", "remove"):
        assert client.post(f"/dashboard/tokens/{tid}/{action}", data={"csrf_token": token}).status_code == 303
    assert all(r.id != tid for r in app.extensions["sluice"].pool.rows())
    actions = {(a[1], a[2].split(" ")[0]) for a in audit(app) if a[0] == "dashboard:admin"}
    assert {("token.add", tid), ("token.validate", tid), ("token.disable", tid), ("token.remove", tid)} <= actions


def test_header_overrides_are_validated_like_the_config(app, admin):
    client, token = admin
    bad = client.post("/dashboard/upstreams/primary", data={"csrf_token": token, "headers": "Authorization: x"})
    assert bad.status_code == 400 and app.extensions["sluice"].pool.repo.overrides() == {}
    bad = client.post("/dashboard/upstreams/primary", data={"csrf_token": token, "headers": "no colon here"})
    assert bad.status_code == 400
    form = {"csrf_token": token, "user_agent": "team-gw/2", "headers": "X-Team: research\n"}
    good = client.post("/dashboard/upstreams/primary", data=form)
    assert good.status_code == 303
    assert app.extensions["sluice"].pool.repo.overrides()["primary"] == ("team-gw/2", {"X-Team": "research"})


XSS = '"><script>alert(1)</script><img src=x onerror=alert(2)>'


def test_operator_strings_are_escaped(app, admin):
    client, token = admin
    assert client.post("/dashboard/keys", data={"csrf_token": token, "name": XSS}).status_code == 201
    client.post(
        "/dashboard/upstreams/primary", data={"csrf_token": token, "user_agent": XSS, "headers": f"X-Note: {XSS}"}
    )
    for page in PAGES:
        html = client.get(page).data.decode()
        assert "<script>alert" not in html and "<img src=x" not in html, page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in client.get("/dashboard/keys").data.decode()


def test_no_page_shows_a_secret(app, admin, upstream):
    client, token = admin
    created = client.post("/dashboard/keys", data={"csrf_token": token, "name": "k"}).data
    secret = re.search(rb'value="(sk-sluice-[^"]+)"', created).group(1).decode()
    client.post(
        "/dashboard/tokens", data={"csrf_token": token, "upstream": "primary", "token": "tok-echo-000000000005"}
    )
    upstream.post("http://upstream.test/v1/chat/completions", json={"choices": [], "usage": {"total_tokens": 3}})
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert (
        client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    )
    app.extensions["sluice"].writer.flush()
    html = "".join(client.get(page).data.decode() for page in PAGES)
    for value in (secret, MASTER_KEY, SECRET_KEY, PASSWORD, "tok-echo-000000000005", *TOKENS):
        assert value not in html
    assert ">k<" in client.get("/dashboard/requests").data.decode()  # the request is listed, by key name


def test_logout_ends_the_session_everywhere(app, admin):
    client, token = admin
    cookie = client.get_cookie("sluice_session", path="/dashboard").value
    assert client.post("/dashboard/logout", data={"csrf_token": token}).status_code == 303
    other = app.test_client()
    other.set_cookie("sluice_session", cookie, path="/dashboard")
    assert other.get("/dashboard/keys").status_code == 302  # the copied cookie no longer works
    assert ("dashboard:admin", "logout", "127.0.0.1") in audit(app)


def test_overview_charts_show_recorded_requests(app, admin, upstream):
    client, _ = admin
    upstream.post("http://upstream.test/v1/chat/completions", json={"choices": [], "usage": {"total_tokens": 7}})
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    for _ in range(3):
        client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {MASTER_KEY}"})
    app.extensions["sluice"].writer.flush()
    html = client.get("/dashboard").data.decode()
    bars = [int(n) for n in re.findall(r'data-bars="(\d+)"', html)]
    assert len(bars) == 4 and bars[0] >= 1 and bars[3] >= 1  # requests per minute and tokens have data
    assert re.search(r'<span class="label">Tokens used</span><span class="value">21<', html)


def test_hash_password_command_prints_a_usable_hash(app):
    from werkzeug.security import check_password_hash

    done = app.test_cli_runner().invoke(args=["admin", "hash-password"], input=PASSWORD + "\n")
    assert done.exit_code == 0
    assert check_password_hash(done.stdout.strip(), PASSWORD)
    short = app.test_cli_runner().invoke(args=["admin", "hash-password"], input="short\n")
    assert short.exit_code != 0 and "12 characters" in short.output


def test_a_session_holds_in_every_worker(make_app, config, tmp_path):
    """Each worker hashes a plain password with its own random salt; a session must hold in all of them."""
    env = {"SLUICE_ADMIN_PASSWORD": PASSWORD, "SLUICE_SECRET_KEY": SECRET_KEY}
    database = f"sqlite:///{tmp_path}/shared.db"
    one, two = (load_settings(env) for _ in range(2))
    assert one.admin_password_hash != two.admin_password_hash  # salted
    first = make_app(config, database_url=database, secret_key=SECRET_KEY, admin_password_hash=one.admin_password_hash,
                     admin_password_mark=one.admin_password_mark)  # fmt: skip
    second = make_app(config, database_url=database, secret_key=SECRET_KEY, admin_password_hash=two.admin_password_hash,
                      admin_password_mark=two.admin_password_mark)  # fmt: skip
    client = first.test_client()
    assert sign_in(client).status_code == 303
    other = second.test_client()
    other.set_cookie("sluice_session", client.get_cookie("sluice_session", path="/dashboard").value, path="/dashboard")
    assert other.get("/dashboard/keys").status_code == 200
    changed = load_settings({**env, "SLUICE_ADMIN_PASSWORD": "another long password"})
    third = make_app(
        config,
        database_url=database,
        secret_key=SECRET_KEY,
        admin_password_hash=changed.admin_password_hash,
        admin_password_mark=changed.admin_password_mark,
    )
    later = third.test_client()  # the same database, a new password: the old session has ended
    later.set_cookie("sluice_session", client.get_cookie("sluice_session", path="/dashboard").value, path="/dashboard")
    assert later.get("/dashboard/keys").status_code == 302


def test_throttle_ignores_forwarded_addresses_from_untrusted_peers(client):
    """Without SLUICE_TRUSTED_PROXIES a client cannot pick its address with X-Forwarded-For."""
    for i in range(5):
        sign_in(client, "wrong password!", HTTP_X_FORWARDED_FOR=f"10.1.1.{i}")
    assert sign_in(client, HTTP_X_FORWARDED_FOR="10.1.1.99").status_code == 429


def test_secret_looking_header_values_stay_hidden_and_kept(make_app, upstream):
    from app.config import UpstreamConfig
    from tests.conftest import BASE, make_config

    headers = {"api-key": "azure-secret-value-000000001", "X-Team": "research"}
    config = make_config(UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS, headers=headers))
    app = make_app(config, secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))
    client = app.test_client()
    sign_in(client)
    token = csrf(client.get("/dashboard/keys").data)
    page = client.get("/dashboard/upstreams").data.decode()
    assert "azure-secret-value-000000001" not in page and "api-key: (hidden) ...0001" in page
    lines = "api-key: (hidden) ...0001\nX-Team: platform"  # sent back as shown: the secret is kept
    assert client.post("/dashboard/upstreams/primary", data={"csrf_token": token, "headers": lines}).status_code == 303
    pool = app.extensions["sluice"].pool
    assert pool.stored_overrides()["primary"][1] == {"api-key": "azure-secret-value-000000001", "X-Team": "platform"}
    raw = pool.repo.overrides()["primary"][1]  # as stored: the secret-looking value sealed, the other plain
    assert raw["X-Team"] == "platform" and "azure-secret-value" not in json.dumps(raw)
    reset = client.post("/dashboard/upstreams/primary/reset", data={"csrf_token": token}, follow_redirects=True)
    assert b"uses the config file&#39;s headers again" in reset.data
    assert app.extensions["sluice"].pool.repo.overrides() == {}
    again = client.post("/dashboard/upstreams/primary/reset", data={"csrf_token": token})
    assert again.status_code == 409
    assert ("dashboard:admin", "upstream.reset", "primary") in audit(app)


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"expires_at": "2001-01-01T00:00"}, b"must be in the future"),
        ({"rpm": "99999999999"}, b"from 1 to 2147483647"),
        ({"monthly_tokens": "99999999999999999999"}, b"from 1 to 9223372036854775807"),
        ({"tpm": "\u00b2"}, b"whole number from 1 to"),
        ({"rpm": "9" * 5000}, b"whole number from 1 to 2147483647"),  # int() refuses > 4,300 digits
        ({"expires_at": "9" * 400}, b"ISO 8601"),
        ({"expires_at": "next tuesday"}, b"ISO 8601"),
    ],
)
def test_bad_key_settings_are_refused_with_400(app, admin, form, message):
    client, token = admin
    answer = client.post("/dashboard/keys", data={"csrf_token": token, "name": "bad", **form})
    assert answer.status_code == 400 and message in answer.data
    assert app.extensions["sluice"].keys.list() == []


def test_odd_query_values_do_not_break_pages(admin, auth):
    client, _ = admin
    far = client.post("/admin/api/keys", json={"name": "far", "expires_at": 1e30}, headers=auth)
    assert far.status_code == 400 and "10000" in far.get_json()["error"]["message"]
    for path in ("/dashboard/audit?before=99999999999999999999999", "/dashboard/audit?before=%C2%B2",
                 "/dashboard?range=7y", "/dashboard/usage?range=%00"):  # fmt: skip
        assert client.get(path).status_code == 200, path


def test_client_supplied_model_names_are_escaped(app, admin, upstream):
    client, _ = admin
    upstream.post("http://upstream.test/v1/chat/completions", json={"choices": [], "usage": {"total_tokens": 1}})
    chat = {"model": XSS, "messages": [{"role": "user", "content": "hi"}]}
    client.post("/v1/chat/completions", json=chat, headers={"Authorization": f"Bearer {MASTER_KEY}"})
    app.extensions["sluice"].writer.flush()
    for page in ("/dashboard/requests", "/dashboard/usage"):
        html = client.get(page).data.decode()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html, page


@pytest.mark.parametrize(
    ("counts", "q", "expected"),
    [
        ([0] * 13, 50, None),
        ([4] + [0] * 12, 50, 12.5),  # all in (0, 25]: the middle of the bucket
        ([0, 2, 2] + [0] * 10, 50, 50.0),  # half in (25, 50], half in (50, 100]
        ([0, 2, 2] + [0] * 10, 100, 100.0),
        ([0] * 12 + [3], 95, 10000.0),  # past the last bound: reported as that bound
    ],
)
def test_ttfb_percentiles_from_histograms(counts, q, expected):
    from app.services.overview import quantile

    assert quantile(counts, q) == expected


def test_pages_say_when_usage_records_are_off(make_app):
    from dataclasses import replace

    from tests.conftest import make_config

    config = make_config()
    config = replace(config, gateway=replace(config.gateway, usage_records=False))
    app = make_app(config, secret_key=SECRET_KEY, admin_password_hash=generate_password_hash(PASSWORD))
    client = app.test_client()
    sign_in(client)
    for page in ("/dashboard", "/dashboard/requests"):
        assert b"usage_records = false" in client.get(page).data, page
