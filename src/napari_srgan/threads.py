"""Thread pools that have finished their work when the caller goes on, also when it goes on
because a signal (SIGTERM, Ctrl-C) raised an exception in the main thread."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor


@contextlib.contextmanager
def joined_pool(workers: int) -> Iterator[ThreadPoolExecutor]:
    """A thread pool whose threads have all ended when the block is left: tasks not started are
    cancelled, running ones finish, so none writes into an output after its cleanup removed it.
    ThreadPoolExecutor's own exit misses a thread whose start a signal interrupted (it is not
    in the pool's list yet, and runs tasks all the same), so each thread registers itself."""
    started: list[threading.Thread] = []
    pool = ThreadPoolExecutor(
        workers, initializer=lambda: started.append(threading.current_thread())
    )
    try:
        yield pool
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        for thread in started:
            thread.join()
