"""Progress for the command line: a live bar on a terminal, plain lines in a log.

A network cannot report progress from inside one tile, so on a terminal the bar keeps ticking
(a spinner and the elapsed time) while a long tile runs. When stderr is a file or a pipe there
are no carriage returns: one line at the start, one every ``interval`` seconds while work goes
on, and one at the end.
"""

from __future__ import annotations

import sys
import threading
import time
from typing import TextIO

SPINNER = "|/-\\"


class Progress:
    """``with Progress("cells.tif", "tile") as p: ... p.update(done, total)``; nothing shows
    before :meth:`start` (or the first :meth:`update`), so a run refused in pre-flight prints
    no bar."""

    def __init__(
        self,
        label: str,
        unit: str,
        *,
        stream: TextIO | None = None,
        interval: float = 10.0,
        live: bool | None = None,
    ) -> None:
        self.label, self.unit = label, unit
        self.stream = stream or sys.stderr
        self.interval = interval
        self.live = self.stream.isatty() if live is None else live
        self.done, self.total = 0, None
        #: A short status after the count (e.g. the latest losses).
        self.note = ""
        self._bar = None
        self._started: float | None = None
        self._last_line = 0.0
        self._last_shown: int | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._ticker: threading.Thread | None = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, kind, error, traceback) -> None:
        self.close(finished=kind is None)

    def start(self) -> None:
        """Show the progress (the work is about to begin) and keep it ticking."""
        if self._started is not None:
            return
        self._started = time.monotonic()
        if self.live:
            from tqdm import tqdm

            self._bar = tqdm(
                total=self.total, desc=self.label, unit=self.unit, file=self.stream, leave=True
            )
        else:
            self._line()
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def update(self, done: int, total: int | None = None, note: str | None = None) -> None:
        with self._lock:
            self.done, self.total = done, total if total is not None else self.total
            self.note = self.note if note is None else note
        self.start()
        with self._lock:
            if self._bar is not None:
                self._bar.total = self.total
                self._bar.set_postfix_str(self.note, refresh=False)
                self._bar.update(done - self._bar.n)
            elif done == self.total or time.monotonic() - self._last_line >= self.interval:
                self._line()

    def write(self, message: str) -> None:
        """A line of text that does not break the bar."""
        with self._lock:
            if self._bar is not None:
                self._bar.write(message, file=self.stream)
            else:
                print(message, file=self.stream, flush=True)

    def close(self, finished: bool = True) -> None:
        self._stop.set()
        if self._ticker is not None:
            self._ticker.join()
        with self._lock:
            if self._bar is not None:
                self._bar.set_postfix_str(self.note, refresh=False)  # no spinner at the end
                self._bar.close()
                self._bar = None
            elif self._started is not None and finished and self._last_shown != self.done:
                self._line()

    def _line(self) -> None:
        assert self._started is not None
        elapsed = time.monotonic() - self._started
        if self.total is not None:
            count = f"{self.done}/{self.total} {self.unit}s"
        else:
            count = f"{self.done} {self.unit}s" if self.done else "started"
        seconds = f"{elapsed:.{1 if elapsed < 10 else 0}f} s"
        note = f", {self.note}" if self.note else ""
        print(f"{self.label}: {count}, {seconds}{note}", file=self.stream, flush=True)
        self._last_line, self._last_shown = time.monotonic(), self.done

    def _tick(self) -> None:
        """Keep a long step visibly alive: spin on a terminal, a line now and then in a log."""
        turn = 0
        while not self._stop.wait(0.25 if self.live else self.interval / 4):
            with self._lock:
                if self._bar is not None:
                    turn += 1
                    spinner = SPINNER[turn % len(SPINNER)]
                    self._bar.set_postfix_str(f"{self.note} {spinner}".lstrip(), refresh=True)
                elif time.monotonic() - self._last_line >= self.interval:
                    self._line()
