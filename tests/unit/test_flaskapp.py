"""app/flaskapp.py: Flask's sync check of a view or hook is made once per function."""

from __future__ import annotations

from app import flaskapp
from app.flaskapp import SluiceFlask


def test_each_function_is_checked_once_and_kept(app, monkeypatch):
    assert isinstance(app, SluiceFlask)
    checks = []
    monkeypatch.setattr(flaskapp.Flask, "ensure_sync", lambda self, f: checks.append(f) or f)

    def view():
        return "ok"

    assert app.ensure_sync(view) is view and app.ensure_sync(view) is view
    assert checks == [view]


def test_the_memo_is_bounded_and_unhashable_callables_still_pass(app, monkeypatch):
    monkeypatch.setattr(flaskapp, "MEMO_MAX", len(app._synced))  # full: nothing more is kept
    made = [lambda: None for _ in range(3)]
    assert [app.ensure_sync(f) for f in made] == made and not any(f in app._synced for f in made)

    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

        def __call__(self):
            return None

    odd = Unhashable()
    assert app.ensure_sync(odd) is odd
