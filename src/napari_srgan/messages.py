"""One-line error messages: what every interface (CLI, widgets, files) shows the user."""

from __future__ import annotations

import os


def first_line(error: BaseException) -> str:
    """The first line of ``error``'s message, or its type's name when it has none: libraries'
    multi-line messages (tracebacks of codecs, torch's tips) would break the one-line rule.
    Other unprintable characters (a terminal's escape sequences) are shown escaped."""
    text = str(error).strip()
    return printable(text.splitlines()[0]) if text else type(error).__name__


def with_type(error: BaseException) -> str:
    """``Type: first line`` of ``error``, or ``Type`` alone when it has no message (a wrapped
    library error whose message alone says little, e.g. a KeyError's is the key)."""
    name, text = type(error).__name__, first_line(error)
    return name if text == name else f"{name}: {text}"


def shown(path: str | os.PathLike) -> str:
    """``path`` as a message shows it: a newline (or another line break) in a file name would
    cut the one-line message, an escape character would drive the terminal, so unprintable
    characters are written as Python escapes (``a\\nb.tif``); ordinary names stay as they are."""
    return printable(os.fspath(path))


def printable(text: str) -> str:
    """``text`` with unprintable characters (control characters, line and paragraph
    separators, undecodable bytes of a file name) written as Python escapes."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


#: The most characters of a model file's text (a card's name, licence...) a line shows.
MAX_SHOWN_CHARACTERS = 200


def brief(text: str) -> str:
    """``text`` printable and at most :data:`MAX_SHOWN_CHARACTERS` long: a model file can hold
    megabytes in a card's name, which went whole into result lines, lists and layer names."""
    text = printable(text)
    if len(text) <= MAX_SHOWN_CHARACTERS:
        return text
    return text[: MAX_SHOWN_CHARACTERS - 1] + "…"
