"""Worker processes behind the Executor interface (the readers and writers of a run beside a GPU)."""

import os
import subprocess
import sys
import textwrap
from concurrent.futures import CancelledError

import pytest

from fbseg.runs.worker_pool import WorkerDied, WorkerPool


def test_calls_run_in_other_processes_and_exceptions_come_back():
    pool = WorkerPool(2)
    try:
        pids = {pool.submit(os.getpid).result(timeout=30) for _ in range(8)}
        assert os.getpid() not in pids and 1 <= len(pids) <= 2
        assert pool.submit(divmod, 17, 5).result(timeout=30) == (3, 2)
        with pytest.raises(ZeroDivisionError):
            pool.submit(divmod, 1, 0).result(timeout=30)
        assert pool.submit(sorted, [3, 1, 2]).result(timeout=30) == [1, 2, 3]  # still serving
    finally:
        pool.shutdown()


def test_a_worker_that_dies_fails_its_call_and_is_replaced():
    pool = WorkerPool(1)
    try:
        first = pool.submit(os.getpid).result(timeout=30)
        with pytest.raises(WorkerDied, match="ended unexpectedly"):
            pool.submit(os._exit, 3).result(timeout=30)
        assert pool.submit(len, "abc").result(timeout=30) == 3  # the next call is served
        assert pool.submit(os.getpid).result(timeout=30) != first  # by a new process
    finally:
        pool.shutdown()


def test_shutdown_finishes_what_was_given_and_can_cancel_the_rest():
    pool = WorkerPool(1)
    done = [pool.submit(sum, range(n)) for n in range(20)]
    pool.shutdown(wait=True)
    assert [f.result() for f in done] == [sum(range(n)) for n in range(20)]
    with pytest.raises(RuntimeError, match="shut down"):
        pool.submit(len, "x")
    pool = WorkerPool(1)
    slow = [pool.submit(__import__("time").sleep, 0.2) for _ in range(5)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert any(f.cancelled() for f in slow)
    with pytest.raises(CancelledError):
        [f.result() for f in slow]


def test_a_script_without_a_main_guard_can_use_it(tmp_path):
    """Workers never import the parent's main module (multiprocessing's spawn does, and a
    script without ``if __name__ == "__main__":`` would then run again in each worker)."""
    script = tmp_path / "script.py"
    marker = tmp_path / "runs.txt"
    script.write_text(
        textwrap.dedent(
            f"""
            from fbseg.runs.worker_pool import WorkerPool
            with open({str(marker)!r}, "a") as f:
                f.write("ran\\n")
            pool = WorkerPool(2)
            print(pool.submit(max, [4, 9, 2]).result(timeout=30))
            pool.shutdown()
            """
        )
    )
    out = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    assert out.stdout.strip() == "9"
    assert marker.read_text() == "ran\n"  # the script ran once: in the parent alone


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="pipe sizes are set on Linux")
def test_a_decoded_photo_crosses_a_widened_pipe_whole():
    """Each pipe holds ``PIPE_BYTES`` where the system allows it (a 600×400 photo crosses in
    one read, not one per 64 KB), and large arrays come back intact."""
    import fcntl

    import numpy as np

    from fbseg.runs import worker_pool

    with open("/proc/sys/fs/pipe-max-size") as f:
        if int(f.read()) < worker_pool.PIPE_BYTES:
            pytest.skip("this system caps pipes below PIPE_BYTES")
    pool = WorkerPool(1)
    try:
        rng = np.random.default_rng(0)
        photo = rng.integers(0, 256, (400, 600, 3), dtype=np.uint8)
        back = pool.submit(np.flip, photo, 0).result(timeout=30)
        np.testing.assert_array_equal(back, photo[::-1])
        worker = pool._workers[0]
        for pipe in (worker.stdin, worker.stdout):
            size = fcntl.fcntl(pipe.fileno(), fcntl.F_GETPIPE_SZ)
            assert size >= worker_pool.PIPE_BYTES
    finally:
        pool.shutdown()
