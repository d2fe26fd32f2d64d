"""Which dask scheduler computes a streamed upscale: a local one by name, or a
dask.distributed scheduler by address, checked before dask.distributed is handed the address.

dask's protocol trusts its peer (it reads a length prefix and allocates it; it waits without a
bound for a greeting), so an address must be a scheduler on a trusted network. This module
imports neither torch nor dask at import time: the CLI's argument parser uses it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import socket
import struct
import time
from collections.abc import Iterator

from napari_srgan.messages import first_line

log = logging.getLogger(__name__)

SCHEDULERS = ("threads", "processes", "synchronous")
#: Address schemes of a dask.distributed scheduler this package connects to.
SCHEDULER_SCHEMES = ("tcp", "tls")
#: Seconds to wait for a scheduler to accept a connection and greet.
CONNECT_TIMEOUT = 10.0
#: A dask handshake is a few hundred bytes; a larger length prefix means the peer is not dask.
MAX_HANDSHAKE_BYTES = 1 << 16
#: Seconds between asking the workers whether a stopped job's last blocks have finished, and
#: the longest wait for them (a hung worker must not keep a stopped command alive for good).
DRAIN_POLL, DRAIN_TIMEOUT = 0.1, 60.0


def parse_scheduler(value: str) -> str:
    """``value`` if it names a local dask scheduler or a ``tcp://`` / ``tls://`` host:port
    address; a ValueError saying what is accepted otherwise (also an argparse ``type``)."""
    if value in SCHEDULERS:
        return value
    scheme, separator, rest = value.partition("://")
    host, _colon, port = rest.rpartition(":")
    if not separator or scheme not in SCHEDULER_SCHEMES or not host or not port.isdigit():
        raise ValueError(
            f"scheduler {value!r} must be one of {', '.join(SCHEDULERS)} or an address "
            "tcp://host:port or tls://host:port"
        )
    if not 0 < int(port) < 65536:
        raise ValueError(f"scheduler {value!r}: port {port} is not a TCP port")
    return value


def probe_scheduler(address: str, timeout: float | None = None) -> None:
    """Check that ``address`` is a dask scheduler before handing it to dask.distributed, which
    waits without a bound on a silent peer and trusts the length prefix of any reply.

    Connects with a timeout and, for ``tcp://``, reads the greeting a dask server sends first:
    its 8-byte length prefix must be small.
    """
    timeout = timeout or CONNECT_TIMEOUT
    scheme, _, rest = parse_scheduler(address).partition("://")
    host, _, port = rest.rpartition(":")
    host = host.strip("[]")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout) as connection:
            if scheme != "tcp":
                return  # TLS: the handshake (with its own timeout) checks the peer
            prefix = b""
            while len(prefix) < 8:
                chunk = connection.recv(8 - len(prefix))
                if not chunk:
                    raise ValueError(f"scheduler {address} closed the connection at once")
                prefix += chunk
    except TimeoutError:
        raise ValueError(
            f"scheduler {address} did not answer like a dask scheduler within {timeout:g} s"
        ) from None
    except OSError as error:
        raise ValueError(
            f"cannot connect to scheduler {address}: {error.strerror or error}"
        ) from None
    (length,) = struct.unpack("<Q", prefix)
    if not 0 < length <= MAX_HANDSHAKE_BYTES:
        raise ValueError(f"{address} does not speak dask's protocol; is it a dask scheduler?")


def leave_stops_to_the_parent() -> None:
    """In each worker process of dask's ``processes`` scheduler: ignore the stop signals that
    reach a whole process group (Ctrl-C, a closed terminal, a batch system's SIGTERM). The
    parent handles them: it stops handing out blocks and waits for the ones being written, then
    removes the unfinished store; a worker interrupted mid-block printed a traceback instead,
    or broke the pool."""
    import signal

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)


@contextlib.contextmanager
def dask_scheduler(scheduler: str) -> Iterator[None]:
    """Compute with a local dask scheduler, or connect to a distributed one by address (on a
    trusted network only: dask's protocol trusts its peer)."""
    import dask

    from napari_srgan.io.zarr_files import dask_threads

    if scheduler == "threads":  # blocks still running when a write fails or is stopped finish first
        with dask_threads():
            yield
        return
    if parse_scheduler(scheduler) in SCHEDULERS:
        options = {"multiprocessing.initializer": leave_stops_to_the_parent}
        with dask.config.set(scheduler=scheduler, **(options if scheduler == "processes" else {})):
            yield
        return
    try:
        from distributed import Client
    except ImportError:
        raise ValueError(
            "a scheduler address needs dask.distributed: pip install distributed"
        ) from None
    probe_scheduler(scheduler)
    try:
        client = Client(scheduler, set_as_default=False, timeout=CONNECT_TIMEOUT)
    except Exception as error:  # distributed raises many types (TLS setup, timeouts, refusals)
        raise ValueError(f"cannot connect to scheduler {scheduler}: {first_line(error)}") from None
    with client, dask.config.set(scheduler=functools.partial(cancelling_get, client)):
        yield


def cancelling_get(client, dsk, keys, **kwargs):
    """``client.get``, but when the wait for the result ends early (Ctrl-C, SIGTERM, a task that
    failed) the job's tasks still queued on the cluster are cancelled at once, and this raises
    only once no worker runs one of them (or after :data:`DRAIN_TIMEOUT`, with a warning). A
    running task cannot be interrupted: it finishes on its worker, and a chunk it wrote after
    the unfinished store was removed recreated part of it beside the output, without the mark
    that lets the next run remove it."""
    futures = client.get(dsk, keys, sync=False, **kwargs)
    try:
        return client.gather(futures)
    except BaseException:
        with contextlib.suppress(Exception):  # a lost scheduler: nothing left to cancel or ask
            _cancel(client, dsk, futures)
        raise


def _cancel(client, dsk, futures) -> None:
    """Cancel a job's futures, then wait until no worker holds an unreleased task of its graph
    ``dsk`` (the key names tell the job's tasks from other clients' on a shared cluster)."""
    from distributed import futures_of

    graph = dsk.__dask_graph__() if hasattr(dsk, "__dask_graph__") else dsk  # expr or dict
    names = frozenset(_key_name(key) for key in graph)
    client.cancel(futures_of(futures), force=True)
    deadline, waited = time.monotonic() + DRAIN_TIMEOUT, False
    while any(client.run(_tasks_of, names, on_error="ignore").values()):
        if not waited:  # said once: the command seems to hang otherwise
            log.warning(
                f"napari-srgan: waiting (at most {DRAIN_TIMEOUT:g} s) for the tasks that the "
                "cluster's workers are computing: they cannot be interrupted"
            )
            waited = True
        if time.monotonic() > deadline:
            log.warning(
                f"napari-srgan: warning: tasks still run on the cluster {DRAIN_TIMEOUT:g} s "
                "after the stop; a chunk they write may be left beside the output in a hidden "
                ".partial folder"
            )
            return
        time.sleep(DRAIN_POLL)


def _key_name(key) -> str:
    """The name a dask key shares with the other blocks of its array (``("name", 0, 1)``)."""
    return str(key[0] if isinstance(key, tuple) else key)


def _tasks_of(names: frozenset[str], dask_worker) -> int:
    """On a worker: how many tasks whose key has one of ``names`` it holds, released ones left
    out. A cancelled task is released at once, except one being computed: it stays (in state
    "cancelled") until it ends."""
    return sum(
        task.state != "released" and _key_name(key) in names
        for key, task in dask_worker.state.tasks.items()
    )
