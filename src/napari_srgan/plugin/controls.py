"""Small building blocks the two dock widgets share: section headings, a status line that never
widens the dock, an in-dock progress bar, a spin box with an "auto" value and a help link."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from magicgui.backends._qtpy.widgets import QBaseRangedWidget
from magicgui.widgets import ComboBox, Label, ProgressBar
from magicgui.widgets.bases import RangedWidget
from qtpy.QtWidgets import QComboBox, QSpinBox

#: Widest a status or info line may be (px): a long error must never widen the dock.
TEXT_WIDTH = 220
#: Longest text kept in a status line; the full message goes to the napari notification.
STATUS_CHARACTERS = 240


def section(title: str) -> Label:
    """A bold heading spanning the form, as stardist-napari groups its settings."""
    return Label(label=f"<b>{title}</b>", value="")


def breakable(text: str) -> str:
    """``text`` with zero-width break opportunities after path separators and underscores in
    long words, so a long path wraps instead of pushing the dock wider."""
    return re.sub(r"\S{24,}", lambda m: re.sub(r"([/\\_.\-])", "\\1\u200b", m.group()), text)


def text_line(tooltip: str = "") -> Label:
    """A word-wrapped label whose width is capped below the dock's natural width."""
    label = Label(value="")
    native = label.native
    native.setWordWrap(True)
    native.setMaximumWidth(TEXT_WIDTH)
    native.setMinimumWidth(0)
    label.tooltip = tooltip
    return label


def show_status(label: Label, text: str) -> None:
    """Put ``text`` (shortened) into a status line made by :func:`text_line`."""
    if len(text) > STATUS_CHARACTERS:
        text = text[: STATUS_CHARACTERS - 40].rstrip() + "… (full message in the notification)"
    label.value = breakable(text)


def compact_combo(combo: ComboBox, characters: int = 18) -> ComboBox:
    """A long choice (a model or layer name) must not widen the dock either."""
    native = combo.native
    native.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    native.setMinimumContentsLength(characters)
    return combo


class DockProgress:
    """The progress bar in the dock: a busy pulse with a text ("loading model…"), then n/N."""

    def __init__(self, tooltip: str = "") -> None:
        self.bar = ProgressBar(value=0, min=0, max=1, visible=False)
        self.bar.native.setTextVisible(True)
        self.bar.tooltip = tooltip

    def busy(self, text: str) -> None:
        """An indeterminate pulse: work is going on but its length is not known yet."""
        native = self.bar.native
        native.setRange(0, 0)
        native.setFormat(text)
        self.bar.visible = True

    def count(self, done: int, total: int, unit: str) -> None:
        native = self.bar.native
        native.setRange(0, max(total, 1))
        native.setValue(done)
        native.setFormat(f"%v/%m {unit}")
        self.bar.visible = True

    @property
    def shown(self) -> bool:
        """Whether the bar is part of the dock now (``visible`` is False in a hidden viewer)."""
        return not self.bar.native.isHidden()

    @property
    def text(self) -> str:
        """What the bar shows (its format with the numbers filled in)."""
        native = self.bar.native
        return native.text() if native.maximum() else native.format()

    def hide(self) -> None:
        self.bar.visible = False


class _SpinBoxWithSpecialValue(QBaseRangedWidget):
    """magicgui's Qt spin box backend on a plain QSpinBox, which can show a special value."""

    def __init__(self, **kwargs) -> None:
        super().__init__(QSpinBox, **kwargs)


class AutoSpinBox(RangedWidget):
    """An integer spin box whose lowest value reads "auto" (``value`` is then None).

    The lowest value is one step below the smallest usable one, so stepping up from "auto" goes
    straight to a value that works.
    """

    def __init__(self, *, smallest: int, largest: int, step: int, **kwargs) -> None:
        super().__init__(
            widget_type=_SpinBoxWithSpecialValue,
            min=smallest - step,
            max=largest,
            step=step,
            value=smallest - step,
            **kwargs,
        )
        self.native.setSpecialValueText("auto")

    @property
    def chosen(self) -> int | None:
        """The chosen value, or None for "auto"."""
        return None if self.value == self.min else int(self.value)

    def set_smallest(self, smallest: int) -> None:
        """Change the smallest usable value; "auto" stays "auto", too-small values grow."""
        was_auto = self.chosen is None
        self.min = smallest - int(self.step)
        if was_auto:
            self.value = self.min
        elif self.value < smallest:
            self.value = smallest


def help_url() -> str | None:
    """The documentation: the project's "Documentation" (or home page) URL from its metadata,
    else the README of a source checkout."""
    try:
        urls = metadata.metadata("napari-srgan").get_all("Project-URL") or []
    except metadata.PackageNotFoundError:
        urls = []
    links = dict(tuple(part.strip() for part in url.split(",", 1)) for url in urls if "," in url)
    for key in ("Documentation", "documentation", "Homepage", "homepage", "Source Code"):
        if key in links:
            return links[key]
    readme = Path(__file__).resolve().parents[3] / "README.md"
    return readme.as_uri() if readme.is_file() else None


def help_link() -> Label:
    """A "Help" link to the documentation (opens in the web browser)."""
    url = help_url()
    link = f'<a href="{url}" style="color: #8ab4f8;">Help: how to use these widgets</a>'
    text = link if url else ""
    label = Label(value=text)
    label.native.setOpenExternalLinks(True)
    label.tooltip = "Open the napari-srgan documentation in your web browser"
    return label
