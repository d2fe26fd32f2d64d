"""Tells open widgets that the set of models, or a model file, changed.

A Train run emits :data:`model_list`'s signal when it saves; a file watcher on the user model
folder catches models added, replaced or removed by anything else (the CLI, a file manager).
"""

from __future__ import annotations

from collections.abc import Callable

from psygnal import Signal
from qtpy.QtCore import QFileSystemWatcher

from napari_srgan.models.registry import user_model_dir


class _ModelList:
    changed = Signal()


model_list = _ModelList()


def follow_model_list(widget, *also: Callable[[], None]) -> None:
    """Refresh a magicgui widget's choices (and call ``also``) when models change, until its Qt
    widget is gone."""

    def refresh(*_args) -> None:
        widget.reset_choices()
        for callback in also:
            callback()

    model_list.changed.connect(refresh)
    watcher = QFileSystemWatcher(widget.native)
    folder = user_model_dir()

    def watch_files() -> None:
        """Watch every model file (a replaced file drops out of the watch list)."""
        known = set(watcher.files())
        new = [str(p) for p in folder.glob("*.safetensors") if str(p) not in known]
        if new:
            watcher.addPaths(new)

    if folder.is_dir():
        watcher.addPath(str(folder))
        watch_files()

    def folder_changed(*_args) -> None:
        if folder.is_dir():
            watch_files()
        refresh()

    watcher.directoryChanged.connect(folder_changed)
    watcher.fileChanged.connect(folder_changed)
    widget.native.destroyed.connect(lambda *_: model_list.changed.disconnect(refresh))
