"""Routing: which upstreams serve a model, and the model catalogue for /v1/models (aliases first)."""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence

from app.config import UpstreamConfig
from app.config_routing import ModelAlias
from app.dialects.openai_chat import MODELS
from app.services.calls import UpstreamCall, fixed_hop, fixed_leg
from app.services.upstream import UpstreamClient

log = logging.getLogger("sluice.router")

_GLOB_CHARS = set("*?[")
FETCH_TIMEOUT = 10.0  # seconds: a slow /models must not hold a client's /v1/models for long


def is_glob(pattern: str) -> bool:
    return any(c in _GLOB_CHARS for c in pattern)


def matches(upstream: UpstreamConfig, model: str) -> bool:
    return any(fnmatch.fnmatchcase(model, pattern) for pattern in upstream.models)


def route(upstreams: Sequence[UpstreamConfig], model: str) -> list[UpstreamConfig]:
    """The upstreams whose `models` match `model`, in config order."""
    return [u for u in upstreams if matches(u, model)]


class ModelCatalog:
    """Model ids: literal ids from the config, plus upstream /models ids matching the globs.

    An upstream's own list is fetched only when it has glob patterns, and cached for
    `ttl` seconds (`failure_ttl` after a failed fetch, so a dead upstream is not hammered).
    """

    def __init__(
        self,
        upstreams: Sequence[UpstreamConfig],
        client: UpstreamClient,
        *,
        ttl: float = 300.0,
        failure_ttl: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.upstreams = upstreams
        self.client = client
        self.ttl = ttl
        self.failure_ttl = failure_ttl
        self.clock = clock
        self._cache: dict[str, tuple[float, list[dict]]] = {}
        self._locks = {u.name: threading.Lock() for u in upstreams}

    def models(self, request_id: str) -> list[dict]:
        """Every model object, first upstream wins on duplicate ids."""
        seen: dict[str, dict] = {}
        for upstream in self.upstreams:
            for model in self._for_upstream(upstream, request_id):
                seen.setdefault(model["id"], model)
        return list(seen.values())

    def find(self, model_id: str, request_id: str) -> dict | None:
        return next((m for m in self.models(request_id) if m["id"] == model_id), None)

    def _for_upstream(self, upstream: UpstreamConfig, request_id: str) -> list[dict]:
        literal = [_model(m, upstream.name) for m in upstream.models if not is_glob(m)]
        if not any(is_glob(m) for m in upstream.models):
            return literal
        remote = [m for m in self._remote(upstream, request_id) if matches(upstream, m["id"])]
        return literal + remote

    def _remote(self, upstream: UpstreamConfig, request_id: str) -> list[dict]:
        """The upstream's own list: one refresh at a time; others get the stale list meanwhile."""
        cached = self._cache.get(upstream.name)
        if cached is not None and cached[0] > self.clock():
            return cached[1]
        lock = self._locks[upstream.name]
        if not lock.acquire(blocking=cached is None):
            return cached[1] if cached else []
        try:
            cached = self._cache.get(upstream.name)
            if cached is None or cached[0] <= self.clock():
                fetched = self._fetch(upstream, request_id)
                ttl = self.ttl if fetched is not None else self.failure_ttl
                stale = cached[1] if cached else []
                cached = (self.clock() + ttl, stale if fetched is None else fetched)
                self._cache[upstream.name] = cached
            return cached[1]
        finally:
            lock.release()

    def _fetch(self, upstream: UpstreamConfig, request_id: str) -> list[dict] | None:
        path = "/models?limit=1000" if upstream.api == "anthropic" else "/models"  # Anthropic pages by 20
        call = UpstreamCall(
            "GET", fixed_leg(path, None, MODELS), False, fixed_hop([upstream]), request_id,
            max_attempts=1, read_timeout=FETCH_TIMEOUT,
        )  # fmt: skip
        result = self.client.send(call)
        if result.body is None:
            log.warning("models fetch failed upstream=%s request_id=%s", upstream.name, request_id)
            return None
        try:
            data = json.loads(result.body)["data"]
            return [_model(str(m["id"]), upstream.name, m) for m in data if isinstance(m, dict) and "id" in m]
        except (ValueError, KeyError, TypeError):
            log.warning("models fetch returned an unexpected body upstream=%s", upstream.name)
            return None


def with_aliases(aliases: Sequence[ModelAlias], models: list[dict]) -> list[dict]:
    """The model list with the aliases ([[models]]) first, owned by "sluice"; an alias hides a model of its name."""
    names = {a.name for a in aliases}
    return [_model(a.name, "sluice") for a in aliases] + [m for m in models if m["id"] not in names]


def _model(model_id: str, owner: str, upstream_object: dict | None = None) -> dict:
    base = {"id": model_id, "object": "model", "created": 0, "owned_by": owner}
    if upstream_object:
        base["created"] = upstream_object.get("created", 0)
        base["owned_by"] = upstream_object.get("owned_by", owner)
    return base
