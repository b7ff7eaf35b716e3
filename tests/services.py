"""Access to the real PostgreSQL and Redis the tests use (started by deploy/ci-services.sh).

Locally a missing service skips its tests; in CI (CI=true) it fails them instead.
"""

from __future__ import annotations

import os

import pytest


def require(variable: str, what: str) -> str:
    value = os.environ.get(variable)
    if value:
        return value
    message = f'{what} is not available: set {variable} (`eval "$(deploy/ci-services.sh)"`)'
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def postgres_url() -> str:
    """The test database; under pytest-xdist one of its own per worker process (created on first use),
    since the storage tests drop and recreate the schema."""
    url = require("SLUICE_TEST_DATABASE_URL", "PostgreSQL")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    return _worker_database(url, worker) if worker else url


def redis_url() -> str:
    """The test Redis database; under pytest-xdist one per worker process (15 for gw0, 14 for gw1, ...)."""
    url = require("SLUICE_TEST_REDIS_URL", "Redis")
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if not worker:
        return url
    base, _, index = url.rpartition("/")
    return f"{base}/{int(index or 0) - int(worker.removeprefix('gw'))}"


_databases: dict[str, str] = {}


def _worker_database(url: str, worker: str) -> str:
    if url not in _databases:
        from sqlalchemy import create_engine, text
        from sqlalchemy.engine import make_url

        base = make_url(url)
        name = f"{base.database}_{worker}"
        engine = create_engine(base, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            if conn.execute(text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": name}).first() is None:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
        _databases[url] = base.set(database=name).render_as_string(hide_password=False)
    return _databases[url]


def reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


def reset_redis(url: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    client.flushdb()
    client.close()


def race(count: int, attempt) -> list:
    """Run `attempt()` in `count` threads released together; returns their results in order."""
    import threading

    barrier = threading.Barrier(count)
    results: list = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        results[index] = attempt()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def program(what: str, package: str, *candidates: str) -> str:
    """The path of an installed program (the first candidate found); fails in CI, skips locally."""
    import shutil

    for candidate in candidates:
        found = shutil.which(candidate) or (os.path.isabs(candidate) and os.path.exists(candidate) and candidate)
        if found:
            return str(found)
    message = f"{what} is not installed (Debian package {package}; .ci/run installs it)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def nginx_binary() -> str:
    return program("nginx", "nginx", "nginx", "/usr/sbin/nginx")


def chromium_binary() -> str:
    """Debian's Chromium for the browser tests (Playwright drives it; no browser download)."""
    return program("Chromium", "chromium", "chromium", "chromium-browser")
