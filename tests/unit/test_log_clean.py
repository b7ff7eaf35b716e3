"""Client text in the request log line: printable, no whitespace, bounded (the fast path gives the same)."""

from __future__ import annotations

import pytest

from app.requestlog import _clean


@pytest.mark.parametrize(
    ("value", "cleaned"),
    [
        ("gpt-4o", "gpt-4o"),
        ("", ""),
        ("a b", "a?b"),
        ("a\nb", "a?b"),
        ("a\u00a0b", "a?b"),  # no-break space
        ("a\u2028b", "a?b"),  # line separator
        ("a\x00b\x1b", "a?b?"),
        ("\u3000", "?"),  # ideographic space
        ("modèle", "modèle"),
        ("x" * 121, "x" * 120 + "..."),
        ("x" * 120, "x" * 120),
    ],
)
def test_client_text_is_made_safe_for_one_log_line(value, cleaned):
    assert _clean(value) == cleaned
