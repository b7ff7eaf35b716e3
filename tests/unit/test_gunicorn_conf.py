"""gunicorn.conf.py: worker_connections from SLUICE_WORKER_CONNECTIONS or the open-file hard limit, and its log line."""

from __future__ import annotations

import resource
import runpy
from pathlib import Path
from types import SimpleNamespace

import pytest

CONF = Path(__file__).resolve().parents[2] / "gunicorn.conf.py"
INF = resource.RLIM_INFINITY


def load(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, setting: str | None, soft: int, hard: int) -> dict:
    """Run gunicorn.conf.py as gunicorn does, under a faked open-file limit; the soft limit it sets is recorded."""
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path / "metrics"))  # else it picks (and sets) its own
    monkeypatch.setenv("SLUICE_DATA_DIR", str(tmp_path))
    if setting is None:
        monkeypatch.delenv("SLUICE_WORKER_CONNECTIONS", raising=False)
    else:
        monkeypatch.setenv("SLUICE_WORKER_CONNECTIONS", setting)
    raised: list[tuple[int, int]] = []
    monkeypatch.setattr(resource, "getrlimit", lambda _which: (soft, hard))
    monkeypatch.setattr(resource, "setrlimit", lambda _which, limits: raised.append(limits))
    namespace = runpy.run_path(str(CONF))
    namespace["raised"] = raised
    return namespace


@pytest.fixture
def conf(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict:
    """The module's pure functions, loaded without touching this process's limits or environment."""
    return load(monkeypatch, tmp_path, None, 1_024, 20_000)


@pytest.mark.parametrize(
    ("hard", "expected"),
    [
        (20_000, 9_936),  # (20000 - 128) // 2
        (20_129, 10_000),  # room for the cap, exactly
        (1_048_576, 10_000),  # systemd's and docker's usual hard limit: capped
        (INF, 10_000),
        (4_096, 1_984),
        (1_024, 448),
        (129, 0),
        (100, 0),
    ],
)
def test_connections_allowed_by_the_hard_limit(conf, hard, expected):
    assert conf["connections_allowed"](hard) == expected


@pytest.mark.parametrize(("connections", "fds"), [(1, 130), (1_000, 2_128), (9_936, 20_000), (10_000, 20_128)])
def test_descriptors_needed(conf, connections, fds):
    assert conf["fds_needed"](connections) == fds


@pytest.mark.parametrize(
    ("setting", "hard", "expected", "why"),
    [
        (None, 20_000, 9_936, "worker_connections=9936 from the open-file hard limit 20000: 2 per stream + 128"),
        ("", 20_000, 9_936, "from the open-file hard limit 20000"),  # set but empty: unset
        (None, INF, 10_000, "from the open-file hard limit unlimited: 2 per stream + 128 reserve, capped at 10000"),
        ("1000", 20_000, 1_000, "worker_connections=1000 from SLUICE_WORKER_CONNECTIONS (2128 descriptors)"),
        (" 250 ", 512, 250, "worker_connections=250 from SLUICE_WORKER_CONNECTIONS"),
        ("50000", 20_000, 50_000, "from SLUICE_WORKER_CONNECTIONS"),  # the limit check is _raise_open_file_limit's
    ],
)
def test_choose_worker_connections(conf, setting, hard, expected, why):
    chosen, reason = conf["choose_worker_connections"](setting, hard)
    assert chosen == expected
    assert why in reason


@pytest.mark.parametrize(
    ("setting", "hard", "message"),
    [
        ("many", 20_000, "SLUICE_WORKER_CONNECTIONS must be a whole number above 0, not 'many'"),
        ("0", 20_000, "whole number above 0"),
        ("-5", 20_000, "whole number above 0"),
        ("1e3", 20_000, "whole number above 0"),
        (None, 129, "the open-file hard limit (129) leaves no room for a stream"),
    ],
)
def test_choose_worker_connections_refuses(conf, setting, hard, message):
    with pytest.raises(ValueError) as caught:
        conf["choose_worker_connections"](setting, hard)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("setting", "soft", "hard", "connections", "raised"),
    [
        (None, 1_024, 20_000, 9_936, [(20_000, 20_000)]),  # the default fills the hard limit
        (None, 1_024, INF, 10_000, [(20_128, INF)]),
        (None, 30_000, 40_000, 10_000, []),  # the soft limit is enough already
        ("1000", 1_024, 20_000, 1_000, [(2_128, 20_000)]),
    ],
)
def test_the_loaded_settings_and_the_soft_limit(monkeypatch, tmp_path, setting, soft, hard, connections, raised):
    loaded = load(monkeypatch, tmp_path, setting, soft, hard)
    assert loaded["worker_connections"] == connections
    assert loaded["raised"] == raised


@pytest.mark.parametrize(
    ("setting", "hard", "message"),
    [
        ("1000", 512, "the open-file limit (512) is below the 2128 that SLUICE_WORKER_CONNECTIONS=1000 needs"),
        ("lots", 20_000, "sluice: configuration error: SLUICE_WORKER_CONNECTIONS must be a whole number above 0"),
        (None, 100, "sluice: configuration error: the open-file hard limit (100) leaves no room"),
    ],
)
def test_start_up_stops_with_a_clear_error(monkeypatch, tmp_path, setting, hard, message):
    with pytest.raises(SystemExit) as caught:
        load(monkeypatch, tmp_path, setting, 100, hard)
    assert message in str(caught.value)


def test_the_start_up_log_says_what_it_chose_and_why(monkeypatch, tmp_path):
    loaded = load(monkeypatch, tmp_path, None, 1_024, 20_000)
    lines: list[str] = []
    log = SimpleNamespace(info=lambda fmt, *args: lines.append(fmt % args))
    loaded["when_ready"](SimpleNamespace(log=log))
    assert lines == [
        "sluice: worker_connections=9936 from the open-file hard limit 20000: 2 per stream + 128 reserve, "
        "capped at 10000"
    ]


def test_a_worker_freezes_its_start_up_objects_and_makes_full_collections_rare(conf):
    import gc

    import gevent

    before, tracked, frozen = gc.get_threshold(), gevent.config.track_greenlet_tree, gc.get_freeze_count()
    try:
        conf["post_worker_init"](SimpleNamespace())
        assert gc.get_threshold() == conf["GC_THRESHOLDS"] == (700, 10, 100)
        assert gc.get_freeze_count() > frozen  # this process's objects moved out of the collector's way
        assert gevent.config.track_greenlet_tree is False
        assert not gevent.Greenlet(lambda: None).spawning_stack  # nothing captured per greenlet
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
        gevent.config.track_greenlet_tree = tracked
