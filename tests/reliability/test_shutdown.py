"""``simprune serve`` stops its worker: on SIGTERM (``kill``, ``docker stop``, systemd) and SIGINT (Ctrl-C) the
API shuts down and the worker child exits too, within seconds; if serve itself is SIGKILLed, the kernel takes
the worker down with it (Linux). Real processes, the embedded default (SQLite database and broker)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from procs import child_pids, pid_gone, serve_proc, wait_http
from service_helpers import free_port

STOPPED_WITHIN_S = 10.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


def _worker_of(serve_pid: int, log: Path, timeout: float = 90) -> int:
    """The worker child of serve, once it logged that it is ready (so the signal finds it idle, not starting)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        children = child_pids(serve_pid)
        if children and log.exists() and "ready." in log.read_text(errors="replace"):
            assert len(children) == 1, children
            return children[0]
        time.sleep(0.2)
    raise TimeoutError(f"no ready worker under serve (pid {serve_pid}):\n{log.read_text(errors='replace')[-4000:]}")


def _wait_gone(pids: list[int], timeout: float) -> float:
    """Seconds until every pid in ``pids`` has exited (raises if some outlive ``timeout``)."""
    start = time.monotonic()
    while not all(pid_gone(p) for p in pids):
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"still running after {timeout:g} s: {[p for p in pids if not pid_gone(p)]}")
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_serve_stops_its_worker_on_a_signal(sig: signal.Signals, tmp_path: Path) -> None:
    port = free_port()
    serve = serve_proc(tmp_path / "d", port).start()
    assert serve.proc is not None
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        worker = _worker_of(serve.proc.pid, serve.log_path)
        serve.proc.send_signal(sig)
        try:
            elapsed = _wait_gone([serve.proc.pid, worker], STOPPED_WITHIN_S)
        except TimeoutError as exc:
            raise AssertionError(f"{exc}\n{serve.log()}") from None
        assert serve.proc.wait(timeout=5) == 0, serve.log()
    finally:
        if worker is not None and not pid_gone(worker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker, signal.SIGKILL)
        serve.stop()
    log = serve.log()
    assert "worker stopped" in log, log
    print(f"serve and its worker gone {elapsed:.1f} s after {sig.name}")


def test_a_killed_serve_takes_its_worker_down(tmp_path: Path) -> None:
    port = free_port()
    serve = serve_proc(tmp_path / "d", port).start()
    assert serve.proc is not None
    worker = None
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz", timeout=90)
        worker = _worker_of(serve.proc.pid, serve.log_path)
        serve.proc.kill()
        serve.proc.wait(timeout=10)
        _wait_gone([worker], STOPPED_WITHIN_S)  # PR_SET_PDEATHSIG: no orphaned worker
    finally:
        if worker is not None and not pid_gone(worker):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(worker, signal.SIGKILL)
        serve.stop()
