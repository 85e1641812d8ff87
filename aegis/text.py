"""Text from outside (a service's answer, a config's names) made safe to print.

Messages quote what services say, and the terminal, a CI log or a JSON consumer shows
them. ``printable`` shows every character that is not printable — control characters
(ESC, CR, LF, BEL), format characters such as bidirectional overrides, separators — as its
Python escape, so a service's words can neither drive a terminal nor reorder a line.
"""

from __future__ import annotations

__all__ = ["printable"]


def printable(text: object) -> str:
    """``text`` with each non-printable character shown as its escape (``\\x1b``, ``\\n``)."""
    text = str(text)
    if text.isprintable():  # the usual case, at C speed
        return text
    return "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
