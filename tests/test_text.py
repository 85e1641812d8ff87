"""printable: what a service or a config says, shown without driving the terminal."""

from __future__ import annotations

import pytest

from aegis.text import printable


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain words, ünïcode ✓", "plain words, ünïcode ✓"),
        ("\x1b[2Jcleared", "\\x1b[2Jcleared"),
        ("two\r\nlines\ttab", "two\\r\\nlines\\ttab"),
        ("evil\u202etxt.exe", "evil\\u202etxt.exe"),
        ("\x9bC1 \x00nul", "\\x9bC1 \\x00nul"),
        (42, "42"),
    ],
)
def test_non_printable_characters_are_shown_escaped(text: object, shown: str) -> None:
    assert printable(text) == shown
