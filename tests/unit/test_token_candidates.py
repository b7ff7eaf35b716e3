"""The token pool's candidates are worked out again only when the stored rows change or a value is learnt:
the request path asks for them twice per attempt."""

from __future__ import annotations

import time

from app.services.secrets import SecretsUnavailable


def test_the_same_rows_give_the_same_candidates_and_a_change_is_seen_at_once(app):
    pool = app.extensions["sluice"].pool
    first = pool.candidates("primary")
    assert pool.candidates("primary") is first and len(first) == 3
    token, _ = first[0]
    pool.repo.set_flags(token.id, enabled=False)
    after = pool.candidates("primary")
    assert [t.id for t, _ in after] == [t.id for t, _ in first[1:]]


def test_a_value_that_could_not_be_read_is_tried_again_on_the_next_call(make_app, monkeypatch):
    pool = make_app(secret_key="s" * 40).extensions["sluice"].pool
    sealed = pool.box.encrypt("sk-runtime-000000000001")
    pool.repo.add_runtime("primary:rt1", "primary", sealed, "sk-r...0001", time.time())
    real, fails = pool.box.decrypt, [True]

    def decrypt(cipher):
        if fails.pop() if fails else False:
            raise SecretsUnavailable("not now")
        return real(cipher)

    monkeypatch.setattr(pool.box, "decrypt", decrypt)
    assert "primary:rt1" not in [t.id for t, _ in pool.candidates("primary")]
    assert "primary:rt1" in [t.id for t, _ in pool.candidates("primary")]  # same rows: not memoised without it
