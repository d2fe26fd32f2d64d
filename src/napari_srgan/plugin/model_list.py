"""Tells open widgets that the set of models changed (a Train run saved one)."""

from __future__ import annotations

from psygnal import Signal


class _ModelList:
    changed = Signal()


model_list = _ModelList()


def follow_model_list(widget) -> None:
    """Refresh a magicgui widget's choices when models change, until its Qt widget is gone."""
    model_list.changed.connect(widget.reset_choices)
    widget.native.destroyed.connect(lambda *_: model_list.changed.disconnect(widget.reset_choices))
