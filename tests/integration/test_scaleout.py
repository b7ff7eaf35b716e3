"""deploy/nginx-multi.conf for real: two Sluice instances (gunicorn, 2 workers each, a data
directory and instance id of their own) sharing one PostgreSQL, one Redis, the secret key, the
master key, the admin password and one config file, behind nginx, the bundled mock as their
upstream (issue 15, part 3; docs/scaleout.md). The instance kill comes last: it leaves one dead."""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from tests.integration.conftest import (
    MASTER_KEY,
    ROOT,
    Server,
    free_port,
    start,
    start_gateway,
    start_mock,
    upstream_toml,
)
from tests.services import nginx_binary, postgres_url, race, redis_url, reset_postgres, reset_redis

pytestmark = pytest.mark.integration
MASTER = {"Authorization": f"Bearer {MASTER_KEY}"}
CLOSE = {"Connection": "close"}  # a new connection per request: spread over both workers of an instance
SECRET_KEY = "scale-out-secret-key-0123456789abcdef"
PASSWORD = "scale-out-admin-password"
COOL_TOKENS = ["limited-token-0000000001", "good-token-00000000002"]  # the mock answers limited-* with 429


@dataclass
class Cluster:
    nginx: Server
    a: Server
    b: Server
    mock: Server


def render_nginx(prefix: Path, port: int, instances: list[str]) -> Path:
    """The shipped nginx-multi.conf with this test's addresses; one nginx worker, so its round robin
    (kept per worker) alternates strictly and every check below reaches both instances."""
    config = (ROOT / "deploy" / "nginx-multi.conf").read_text()
    names = re.findall(r"server (sluice-\d):8000 ", config)
    assert names == ["sluice-1", "sluice-2"] and "listen 8080;" in config
    for name, address in zip(names, instances, strict=True):
        config = config.replace(f"server {name}:8000 ", f"server {address} ")
    config = config.replace("listen 8080;", f"listen 127.0.0.1:{port};")
    config = config.replace("worker_processes auto;", "worker_processes 1;")
    config = config.replace("http {", f"http {{\n    client_body_temp_path {prefix}/client_body;", 1)
    (prefix / "nginx.conf").write_text(config)
    return prefix / "nginx.conf"


def start_nginx(tmp: Path, instances: list[str], ready: str = "/healthz") -> Server:
    """nginx on the rendered config; ready once `ready` answers (an internal location: nginx's own 404)."""
    port = free_port()
    prefix = tmp / f"nginx-{port}"
    prefix.mkdir()
    config = render_nginx(prefix, port, instances)
    globals_ = f"daemon off; pid {prefix}/nginx.pid;" + (" user nobody nogroup;" if os.geteuid() == 0 else "")
    cmd = [nginx_binary(), "-p", str(prefix), "-c", str(config), "-g", globals_]
    process = start(cmd, f"http://127.0.0.1:{port}{ready}", prefix / "nginx.log")
    return Server(f"http://127.0.0.1:{port}", process, prefix / "nginx.log")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("scale")
    database, redis = postgres_url(), redis_url()
    reset_postgres(database)
    reset_redis(redis)
    servers: list[Server] = []  # stopped in reverse order, whatever happens
    try:
        mock = start_mock(tmp, "--delay", "0.02")
        servers.append(mock)
        config = upstream_toml("main", mock.url, ["good-token-00000000001"], ["mock-*"])
        config += upstream_toml("cool", mock.url, COOL_TOKENS, ["cool-*"])
        shared = tmp / "sluice.toml"
        shared.write_text(config)
        env = {
            "SLUICE_CONFIG": str(shared), "SLUICE_DATABASE_URL": database, "SLUICE_REDIS_URL": redis,
            "SLUICE_SECRET_KEY": SECRET_KEY, "SLUICE_ADMIN_PASSWORD": PASSWORD, "SLUICE_TRUSTED_PROXIES": "1",
        }  # fmt: skip
        with ThreadPoolExecutor(2) as pool:  # both at once, as a fleet restarts: the schema is migrated once
            starts = [pool.submit(_instance, tmp / name, config, name, env) for name in ("a", "b")]
        servers += [future.result() for future in starts if future.exception() is None]  # stopped below
        for future in starts:
            if future.exception() is not None:
                raise future.exception()
        servers.append(start_nginx(tmp, [s.url.removeprefix("http://") for s in servers[1:]]))
        yield Cluster(nginx=servers[3], a=servers[1], b=servers[2], mock=mock)
    finally:
        for server in reversed(servers):
            server.stop()


def _instance(tmp: Path, config: str, name: str, env: dict[str, str]) -> Server:
    tmp.mkdir()
    return start_gateway(tmp, config, workers=2, SLUICE_INSTANCE_ID=f"scale-{name}", **env)


def chat(url: str, key: str = MASTER_KEY, request_id: str | None = None, **body) -> requests.Response:
    payload = {"model": "mock-gpt", "messages": [{"role": "user", "content": "Hello"}], **body}
    headers = {"Authorization": f"Bearer {key}", **CLOSE, **({"X-Request-ID": request_id} if request_id else {})}
    return requests.post(f"{url}/v1/chat/completions", json=payload, headers=headers, timeout=30)


def admin(url: str, method: str, path: str, **kwargs) -> requests.Response:
    return requests.request(method, f"{url}/admin/api{path}", headers={**MASTER, **CLOSE}, timeout=20, **kwargs)


def new_key(url: str, name: str, **limits: int) -> dict:
    created = admin(url, "POST", "/keys", json={"name": name, **limits})
    assert created.status_code == 201, created.text
    return created.json()


def served_by_both(cluster: Cluster, prefix: str) -> None:
    """Each instance logged at least one request whose id starts with `prefix` (a line at its end)."""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        counts = [s.log().count(f"request_id={prefix}") for s in (cluster.a, cluster.b)]
        if all(counts):
            return
        time.sleep(0.1)
    pytest.fail(f"requests {prefix}* did not reach both instances: {counts}")


def test_rpm_is_exact_across_instances(cluster):
    key = new_key(cluster.nginx.url, "scale-rpm", rpm=10)["key"]
    answers = race(30, lambda: chat(cluster.nginx.url, key, request_id=f"rpm-{threading.get_ident()}"))
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [200] * 10 + [429] * 20
    assert {r.json()["error"]["code"] for r in answers if r.status_code == 429} == {"rate_limit_exceeded"}
    served_by_both(cluster, "rpm-")


def _slow_stream(url: str, key: str, request_id: str) -> tuple[int, str]:
    """A streamed request of about 6 s, read to its end: (status, body)."""
    body = {"model": "mock-gpt", "stream": True, "mock": {"chunks": 20, "delay": 0.3}}
    with requests.post(f"{url}/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": "hi"}]},
                       headers={"Authorization": f"Bearer {key}", **CLOSE, "X-Request-ID": request_id},
                       stream=True, timeout=30) as resp:  # fmt: skip
        return resp.status_code, resp.text


def test_max_parallel_holds_across_instances(cluster):
    """max_parallel = 3, 8 streams at once through nginx, over both instances: 3 reach the mock, 5 are refused."""
    key = new_key(cluster.nginx.url, "scale-parallel", max_parallel=3)["key"]
    before = requests.get(f"{cluster.mock.url}/_mock/stats", timeout=5).json()["streams_started"]
    answers = race(8, lambda: _slow_stream(cluster.nginx.url, key, f"par-{threading.get_ident()}"))
    ok = [text for status, text in answers if status == 200]
    refused = [text for status, text in answers if status == 429]
    assert len(ok) == 3 and len(refused) == 5, [status for status, _ in answers]
    assert all(text.rstrip().endswith("data: [DONE]") for text in ok)
    assert all('"too_many_parallel_requests"' in text for text in refused)
    assert requests.get(f"{cluster.mock.url}/_mock/stats", timeout=5).json()["streams_started"] - before == 3
    served_by_both(cluster, "par-")
    assert chat(cluster.a.url, key).status_code == 200 and chat(cluster.b.url, key).status_code == 200  # slots freed


def _limited_uses(cluster: Cluster) -> int:
    recent = requests.get(f"{cluster.mock.url}/_mock/stats", timeout=5).json()["recent"]
    return sum(r["headers"].get("Authorization") == f"Bearer {COOL_TOKENS[0]}" for r in recent)


def test_a_token_cooled_down_on_one_instance_is_skipped_by_the_other(cluster):
    requests.post(f"{cluster.mock.url}/_mock/reset", timeout=5)
    cool = {"model": "cool-gpt", "mock": {"retry_after": 120}}  # the 429 asks for two minutes
    for _ in range(10):  # until instance A has tried the limited token (and cooled it down)
        assert chat(cluster.a.url, **cool).status_code == 200  # retried on the good token
        if _limited_uses(cluster):
            break
    assert _limited_uses(cluster) == 1
    for _ in range(8):  # both workers of instance B
        assert chat(cluster.b.url, **cool).status_code == 200
    assert _limited_uses(cluster) == 1


def test_revocation_on_one_instance_reaches_the_other_at_once(cluster):
    created = new_key(cluster.a.url, "scale-revoked")
    for _ in range(4):  # both workers of B have used (and may cache) the key
        assert chat(cluster.b.url, created["key"]).status_code == 200
    assert admin(cluster.a.url, "DELETE", f"/keys/{created['id']}").json()["state"] == "revoked"
    # PostgreSQL delivers the change signal (NOTIFY) to B's listeners asynchronously, within milliseconds
    time.sleep(0.2)
    for url in [cluster.b.url] * 4 + [cluster.nginx.url] * 2:
        resp = chat(url, created["key"])
        assert resp.status_code == 401 and resp.json()["error"]["code"] == "invalid_api_key"


def _cookie(resp: requests.Response) -> str:
    return f"sluice_session={resp.cookies['sluice_session']}"


def _csrf(page: str) -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)


def _dashboard(url: str, cookie: str) -> requests.Response:
    return requests.get(f"{url}/dashboard/keys", headers={"Cookie": cookie, **CLOSE}, allow_redirects=False, timeout=20)


def test_a_dashboard_session_made_on_one_instance_is_valid_on_the_other(cluster):
    a, b = cluster.a.url, cluster.b.url
    new_key(a, "scale-dashboard")
    page = requests.get(f"{a}/dashboard/login", headers=CLOSE, timeout=20)
    login = requests.post(f"{a}/dashboard/login", data={"csrf_token": _csrf(page.text), "password": PASSWORD},
                          headers={"Cookie": _cookie(page), **CLOSE}, allow_redirects=False, timeout=20)  # fmt: skip
    assert login.status_code == 303, login.text[:300]
    cookie = _cookie(login)
    keys_page = _dashboard(b, cookie)
    assert keys_page.status_code == 200 and "scale-dashboard" in keys_page.text  # signed in on B, A's key listed
    assert _dashboard(b, "sluice_session=none").status_code == 302  # the control: no session, no page
    logout = requests.post(f"{b}/dashboard/logout", data={"csrf_token": _csrf(keys_page.text)},
                           headers={"Cookie": cookie, **CLOSE}, allow_redirects=False, timeout=20)  # fmt: skip
    assert logout.status_code == 303
    assert _dashboard(a, cookie).status_code == 302  # signed out on B: the session is over on A too


def _usage(url: str) -> list[dict]:
    return admin(url, "GET", "/usage?by=key&since=1h").json()["data"]


def _mock_usage(cluster: Cluster) -> int:
    return requests.get(f"{cluster.mock.url}/_mock/stats", timeout=5).json()["usage_total"]


def test_usage_totals_are_the_same_through_either_instance(cluster):
    key, before = new_key(cluster.nginx.url, "scale-usage")["key"], _mock_usage(cluster)
    for i in range(6):
        resp = chat(cluster.nginx.url, key, request_id=f"use-{i}", stream=i % 2 == 1)
        assert resp.status_code == 200
    served_by_both(cluster, "use-")
    reported = _mock_usage(cluster) - before
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # records are written in batches, off the request path
        rows = {row["group"]: row for row in _usage(cluster.a.url)}
        if rows.get("scale-usage", {}).get("requests") == 6:
            break
        time.sleep(0.2)
    assert rows["scale-usage"]["requests"] == 6 and rows["scale-usage"]["total_tokens"] == reported > 0
    for _ in range(10):  # the same rows through B (other keys' records may land between two reads: read again)
        if _usage(cluster.b.url) == _usage(cluster.a.url):
            return
        time.sleep(0.5)
    pytest.fail("the usage summaries of A and B differ")


class Swallower(threading.Thread):
    """An instance that dies with each request: reads the request, then resets the connection, no answer."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.requests, self.done = 0, threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5)
                if b"\r\n\r\n" in conn.recv(65536):
                    self.requests += 1
                time.sleep(0.1)  # the body (if any) has arrived too
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = reset
        self.sock.close()


# The first request of a fresh nginx goes to the first server (round robin, equal weights): the failing one.
RETRY_CASES = [
    ("nothing listens", "POST", 200, 0),  # connection refused: never reached it, so the other instance answers
    ("dies after reading", "POST", 502, 1),  # reached it: never sent again (no non_idempotent)
    ("dies after reading", "GET", 200, 1),  # idempotent: sent again, to the other instance
]


@pytest.mark.parametrize(("first", "method", "status", "reached"), RETRY_CASES)
def test_nginx_sends_a_request_to_the_other_instance_only_if_that_is_safe(cluster, tmp_path, first, method, status,
                                                                          reached):  # fmt: skip
    swallower = Swallower()
    swallower.start()
    failing = swallower.address if first == "dies after reading" else f"127.0.0.1:{free_port()}"
    nginx = start_nginx(tmp_path, [failing, cluster.a.url.removeprefix("http://")], ready="/_nginx_error/400")
    try:
        if method == "POST":
            resp = chat(nginx.url, request_id=f"retry-{first}")
        else:
            resp = requests.get(f"{nginx.url}/v1/models", headers={**MASTER, **CLOSE}, timeout=30)
        assert resp.status_code == status, resp.text[:300]
        assert swallower.requests == reached
        assert f'upstream: "http://{failing}/' in nginx.log()  # the failing one was tried first
        if status == 502:
            assert resp.json()["error"]["code"] == "gateway_unavailable"
            time.sleep(0.3)
            assert f"request_id=retry-{first}" not in cluster.a.log()
    finally:
        nginx.stop()
        swallower.done.set()
        swallower.join(timeout=5)


@dataclass
class Load:
    """Plain requests through nginx one after another until stopped (bounded): (start, status) each."""

    url: str
    results: list[tuple[float, int]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        while not self.stop.is_set() and len(self.results) < 2000:
            started = time.monotonic()
            try:
                status = chat(self.url).status_code
            except requests.RequestException:
                status = 0
            self.results.append((started, status))


def _stream_outcome(url: str, index: int, started: threading.Event, outcome: list[str]) -> None:
    body = {"model": "mock-gpt-mini", "messages": [{"role": "user", "content": "hi"}], "stream": True,
            "mock": {"chunks": 25, "delay": 0.2}}  # fmt: skip
    text = ""
    try:
        with requests.post(f"{url}/v1/chat/completions", json=body, headers={**MASTER, **CLOSE}, stream=True,
                           timeout=30) as resp:  # fmt: skip
            for chunk in resp.iter_content(None):
                text += chunk.decode(errors="replace")
                started.set()
    except requests.RequestException:  # nginx cut it: its instance is gone
        pass
    started.set()
    outcome[index] = "complete" if text.rstrip().endswith("data: [DONE]") else "cut"


def _start_streams(url: str, count: int) -> tuple[list[threading.Thread], list[str]]:
    """`count` 5 s streams, started one after another (so round robin puts half on each instance)."""
    outcome, threads = [""] * count, []
    for index in range(count):
        started = threading.Event()
        thread = threading.Thread(target=_stream_outcome, args=(url, index, started, outcome), daemon=True)
        thread.start()
        assert started.wait(15)
        threads.append(thread)
    return threads, outcome


def _kill_instance(server: Server) -> None:
    """SIGKILL the instance's process group (master and workers), and wait until every one is gone."""
    os.killpg(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.killpg(server.process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    pytest.fail("processes of the killed instance are still running")


def test_new_requests_keep_succeeding_while_an_instance_is_killed(cluster):
    mini_before = requests.get(f"{cluster.mock.url}/_mock/stats", timeout=5).json()["models"].get("mock-gpt-mini", 0)
    streams, outcome = _start_streams(cluster.nginx.url, 4)
    load = Load(cluster.nginx.url)
    runner = threading.Thread(target=load.run, daemon=True)
    runner.start()
    time.sleep(1.0)
    _kill_instance(cluster.b)
    dead = time.monotonic()
    time.sleep(3.0)
    load.stop.set()
    runner.join(timeout=40)
    for thread in streams:
        thread.join(timeout=30)
    before = [status for started, status in load.results if started < dead]
    after = [status for started, status in load.results if started >= dead]
    assert before and len(after) >= 10, (len(before), len(after))
    assert after == [200] * len(after)  # a connect to the dead instance is retried on the live one
    assert sorted(outcome) == ["complete", "complete", "cut", "cut"]  # B's two streams end with it
    mini = requests.get(f"{cluster.mock.url}/_mock/stats", timeout=5).json()["models"]["mock-gpt-mini"]
    assert mini - mini_before == 4  # a POST that reached the dead instance was not sent again
