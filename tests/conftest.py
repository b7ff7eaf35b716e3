"""Shared fixtures: a configured app, its test client, a `responses` upstream, captured logs."""

from __future__ import annotations

import io
import itertools
import logging

import pytest
import responses

from app import create_app
from app.config import Config, GatewayConfig, Settings, UpstreamConfig

MASTER_KEY = "sk-test-master-key-0123456789"
TOKENS = ("tok-alpha-0000000001", "tok-bravo-0000000002", "tok-charlie-00000003")
BASE = "http://upstream.test/v1"


def make_config(*upstreams: UpstreamConfig, max_attempts: int = 3) -> Config:
    if not upstreams:
        upstreams = (UpstreamConfig(name="primary", base_url=BASE, tokens=TOKENS),)
    return Config(GatewayConfig(max_attempts=max_attempts, max_body_bytes=16384), tuple(upstreams), "test")


@pytest.fixture
def config() -> Config:
    return make_config()


@pytest.fixture
def make_app(tmp_path):
    """Build an app on its own SQLite file; keyword arguments override Settings fields. Each app's
    background chores (usage writes, the prober, ...) stop with the test, as at a worker's exit."""
    count = itertools.count()
    made = []

    def make(config: Config | None = None, **settings):
        settings.setdefault("master_key", MASTER_KEY)
        settings.setdefault("log_level", "DEBUG")
        settings.setdefault("database_url", f"sqlite:///{tmp_path}/sluice-{next(count)}.db")
        settings.setdefault("data_dir", str(tmp_path))
        app = create_app(config=config or make_config(), settings=Settings(**settings))
        made.append(app)
        return app

    yield make
    for app in made:
        app.extensions["sluice"].close()
        app.extensions["sluice"].db.dispose()  # its SQLite connections: a suite of apps would hold thousands


@pytest.fixture
def app(make_app, config):
    return make_app(config)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
def upstream():
    """A `responses` mock of the upstream; every registered reply must be used."""
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        yield mock


@pytest.fixture
def logs(app):
    """Everything the `sluice` loggers write, through the real handler and its redactor."""
    stream = io.StringIO()
    logger = logging.getLogger("sluice")
    handler = next(h for h in logger.handlers if getattr(h, "sluice", False))
    capture = logging.StreamHandler(stream)
    capture.setFormatter(handler.formatter)
    for flt in handler.filters:
        capture.addFilter(flt)
    logger.addHandler(capture)
    yield stream
    logger.removeHandler(capture)


def chat(stream: bool = False, **extra) -> dict:
    return {"model": "gpt-test", "stream": stream, "messages": [{"role": "user", "content": "hi"}], **extra}
