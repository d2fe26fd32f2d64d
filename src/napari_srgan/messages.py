"""One-line error messages: what every interface (CLI, widgets, files) shows the user."""

from __future__ import annotations


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when it has none: libraries'
    multi-line messages (tracebacks of codecs, torch's tips) would break the one-line rule."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
