"""Run core jobs off the GUI thread and bring their reports back to it.

Core functions report through plain callbacks from the worker thread; :class:`Relay` turns each
report into a queued Qt signal, so widgets only ever touch Qt objects on the main thread.
Setting ``NAPARI_SRGAN_SYNCHRONOUS=1`` (tests do) runs jobs in the calling thread instead, which
makes widget tests deterministic (the idea of stardist-napari's test switch).

While a threaded job runs, torch computes on one core fewer than the machine has, so the GUI
thread always finds a free core (measured by ``benchmarks/gui_responsiveness.py``).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

from napari.qt.threading import thread_worker
from qtpy.QtCore import QObject, Signal

SYNCHRONOUS_ENV = "NAPARI_SRGAN_SYNCHRONOUS"
#: Cores kept free for the GUI thread while a worker computes (0 gives torch every core).
GUI_CORES = 1

_threads_lock = threading.Lock()
_running_jobs = 0
_threads_before = 0


@contextlib.contextmanager
def leave_cores_for_the_gui() -> Iterator[None]:
    """Run torch on ``cores - GUI_CORES`` threads (at least one) and restore the previous
    count when the last running job ends (torch's thread count is global to the process)."""
    import torch

    global _running_jobs, _threads_before
    with _threads_lock:
        if _running_jobs == 0:
            _threads_before = torch.get_num_threads()
            torch.set_num_threads(max(1, _threads_before - GUI_CORES))
        _running_jobs += 1
    try:
        yield
    finally:
        with _threads_lock:
            _running_jobs -= 1
            if _running_jobs == 0:
                torch.set_num_threads(_threads_before)


class Relay(QObject):
    """Carries reports from any thread to slots on the main thread."""

    report = Signal(object)


class BackgroundJob:
    """One running job: its stop flag and (when threaded) its worker."""

    def __init__(self) -> None:
        self.stop_flag = threading.Event()
        self.relay = Relay()
        self.worker = None
        self.done = False

    def stop(self) -> None:
        self.stop_flag.set()

    def report(self, message: object) -> None:
        """Send ``message`` to the widget (from any thread); dropped once the widget is gone."""
        try:
            self.relay.report.emit(message)
        except RuntimeError:  # the Qt side was deleted (the viewer closed): stop quietly
            self.stop_flag.set()

    def end_reports(self) -> None:
        """Deliver no more reports, including any still queued (PyQt drops the calls queued to
        a disconnected slot). The slot, which refers to the widget and so to this job, is let
        go of here: left for Python's cycle collector, a slot freed while a report from another
        thread was still queued for it was then called anyway, crashing the process (the
        engine reports from its tile-writer thread, and in synchronous mode every such report
        is still queued when the job ends)."""
        with contextlib.suppress(RuntimeError, TypeError):
            self.relay.report.disconnect()

    def detach(self) -> None:
        """Stop, and deliver nothing more: the widget that wanted the results is gone."""
        self.stop()
        self.end_reports()
        if self.worker is not None:
            for name in ("returned", "errored", "finished"):
                with contextlib.suppress(RuntimeError, TypeError):
                    getattr(self.worker, name).disconnect()


def busy(job: BackgroundJob | None) -> bool:
    """Whether a widget's last ``job`` has not ended: its callbacks have not all run. (Its
    worker's ``is_running`` is False both before a queued worker begins and after it has
    returned but before its callbacks run: a second job started then ran beside it.)"""
    return job is not None and not job.done


def run_job(
    function: Callable[[BackgroundJob], object],
    *,
    on_report: Callable[[object], None],
    on_returned: Callable[[object], None],
    on_errored: Callable[[Exception], None],
    on_finished: Callable[[], None],
    owner: QObject | None = None,
) -> BackgroundJob:
    """Start ``function(job)``; it reports with ``job.report(...)`` and checks
    ``job.stop_flag``. The callbacks run on the main thread. ``owner`` (the widget's Qt
    object) stops the job when it is destroyed."""
    job = BackgroundJob()

    def ending(callback: Callable) -> Callable:
        def end(*args) -> None:
            job.done = True
            job.end_reports()  # a threaded job's reports all arrived before its end
            callback(*args)

        return end

    on_returned, on_errored, on_finished = map(ending, (on_returned, on_errored, on_finished))
    job.relay.report.connect(on_report)
    if os.environ.get(SYNCHRONOUS_ENV) == "1":
        try:
            on_returned(function(job))
        except Exception as error:
            on_errored(error)
        finally:
            on_finished()
        return job
    connections = {"returned": on_returned, "errored": on_errored, "finished": on_finished}

    def in_background(handle: BackgroundJob) -> object:
        with leave_cores_for_the_gui():
            return function(handle)

    worker = thread_worker(in_background, start_thread=False, connect=connections)(job)
    job.worker = worker
    if owner is not None:  # a closed widget stops its job instead of receiving reports
        owner.destroyed.connect(job.detach)
    worker.start()
    return job
