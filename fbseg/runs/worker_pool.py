"""Worker processes for a run's readers and writers: started as
``python -m fbseg.runs.worker_pool``, fed pickled calls over a pipe.

Unlike ``multiprocessing``'s spawned workers these never import the parent's main module:
a script needs no ``if __name__ == "__main__":`` guard, and a heavy script (one that imports
torch at the top, say) does not slow their start. Each worker has one feeder thread in the
parent, which mostly waits on the pipe (outside the interpreter lock).
"""

from __future__ import annotations

import pickle
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import Any, BinaryIO


class WorkerDied(RuntimeError):
    """A worker process ended while it held a call."""


class WorkerPool(Executor):
    """``count`` worker processes behind the ``Executor`` interface (``submit`` → Future).

    Calls must be picklable: module-level functions and plain data. A call that raises gives
    its Future that exception; a worker that dies fails the call it held with ``WorkerDied``
    and is replaced. Workers ignore Ctrl-C: what they were given is finished, and
    ``shutdown`` waits for it. ``role`` names the workers in that exception's message.
    """

    def __init__(self, count: int, role: str = "worker") -> None:
        self._role = role
        self._calls: queue.Queue = queue.Queue()
        self._workers = [_start_worker() for _ in range(count)]
        self._feeders = [
            threading.Thread(target=self._feed, args=(i,), daemon=True, name="fbseg-worker-feed")
            for i in range(count)
        ]
        for feeder in self._feeders:
            feeder.start()
        self._closed = False

    def submit(self, fn: Callable, /, *args: Any, **kwargs: Any) -> Future:
        if self._closed:
            raise RuntimeError("cannot submit to a pool that was shut down")
        future: Future = Future()
        self._calls.put((future, fn, args, kwargs))
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._closed = True
        if cancel_futures:
            while True:
                try:
                    call = self._calls.get_nowait()
                except queue.Empty:
                    break
                if call is not None:
                    call[0].cancel()
        for _ in self._feeders:
            self._calls.put(None)
        if wait:
            for feeder in self._feeders:
                feeder.join()
            for worker in self._workers:
                worker.wait()

    def _feed(self, index: int) -> None:
        """Hand worker ``index`` one call at a time; replace it if it dies; close its pipe
        at the end."""
        try:
            while True:
                call = self._calls.get()
                if call is None:
                    return
                future, fn, args, kwargs = call
                if not future.set_running_or_notify_cancel():
                    continue
                worker = self._workers[index]
                try:
                    pickle.dump((fn, args, kwargs), worker.stdin, pickle.HIGHEST_PROTOCOL)
                    worker.stdin.flush()
                    ok, value = pickle.load(worker.stdout)
                except (EOFError, OSError, pickle.UnpicklingError) as exc:
                    future.set_exception(
                        WorkerDied(f"a {self._role} process ended unexpectedly ({exc})")
                    )
                    _stop(worker)
                    self._workers[index] = _start_worker()
                    continue
                except BaseException as exc:  # the call itself could not be pickled
                    future.set_exception(exc)
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
        finally:
            try:
                self._workers[index].stdin.close()
            except OSError:
                pass


def _stop(worker: subprocess.Popen) -> None:
    """End a worker that broke its pipe (it may still be running)."""
    for pipe in (worker.stdin, worker.stdout):
        try:
            pipe.close()
        except OSError:
            pass
    worker.kill()
    worker.wait()


# Bytes each pipe to and from a worker holds where the system lets a process set it (Linux):
# a decoded photo or a result crosses in one or two reads instead of one per 64 KB, each of
# which hands the interpreter lock to the thread that drives the model and back.
PIPE_BYTES = 2**20


def _widen(pipe: BinaryIO) -> None:
    """Ask for ``PIPE_BYTES`` of pipe buffer; keep the system's size where that is refused."""
    try:
        import fcntl

        fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):
        pass


def _start_worker() -> subprocess.Popen:
    """One worker, told the parent's import path first (so it imports the same fbseg)."""
    worker = subprocess.Popen(
        [sys.executable, "-m", __name__],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    _widen(worker.stdin)
    _widen(worker.stdout)
    pickle.dump(list(sys.path), worker.stdin, pickle.HIGHEST_PROTOCOL)
    worker.stdin.flush()
    return worker


def _serve(calls: BinaryIO, replies: BinaryIO) -> None:
    """The worker's loop: run each call, reply (True, value) or (False, exception)."""
    while True:
        try:
            fn, args, kwargs = pickle.load(calls)
        except EOFError:
            return
        try:
            reply = (True, fn(*args, **kwargs))
        except Exception as exc:
            reply = (False, exc)
        try:
            pickle.dump(reply, replies, pickle.HIGHEST_PROTOCOL)
        except Exception as exc:  # an unpicklable value or exception
            pickle.dump((False, RuntimeError(repr(exc))), replies, pickle.HIGHEST_PROTOCOL)
        replies.flush()


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    calls, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the replies
    sys.path[:] = pickle.load(calls)
    _serve(calls, replies)


if __name__ == "__main__":
    main()
