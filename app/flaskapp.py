"""The Flask application class: Flask's, with each view's and hook's sync check made once.

Flask asks `ensure_sync` of every view, before/after-request hook and error handler on every call:
an `inspect` look at the function's code flags each time, about seven per proxied request. Sluice's
functions are fixed once the app is built, so the answer is kept per function (an `async def` view
would still be wrapped, once).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

MEMO_MAX = 1024  # functions: views, hooks and handlers number in the tens; anything made per call is not kept


class SluiceFlask(Flask):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._synced: dict[Callable[..., Any], Callable[..., Any]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        try:
            return self._synced[func]
        except KeyError:
            synced = super().ensure_sync(func)
            if len(self._synced) < MEMO_MAX:
                self._synced[func] = synced
            return synced
        except TypeError:  # unhashable
            return super().ensure_sync(func)
