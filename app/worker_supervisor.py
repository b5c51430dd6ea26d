"""``simprune worker --gpus all|0,2|none``: one Celery worker process per selected GPU, supervised.

Each worker is pinned to its GPU with ``CUDA_VISIBLE_DEVICES`` (so it sees one device, ``cuda:0``), registers
as a ``gpu`` worker (consuming the ``gpu`` and ``cpu`` queues) and is named after its GPU (``simprune-gpu2@host``).
``--gpus none`` runs one CPU worker (no GPU visible). The supervisor restarts a worker that exits (backing off
from 1 s to 30 s while it keeps crashing) and stops them all on SIGTERM/SIGINT: SIGTERM to each (Celery's warm
shutdown), then SIGKILL to the process groups still there after ``stop_timeout`` seconds; a second signal kills
at once. Each worker runs in its own process group and, on Linux, dies with the supervisor if it is killed.

Stand-in mode for tests and machines without GPUs: ``SIMPRUNE_FAKE_GPUS=N`` makes ids ``0..N-1`` available;
the workers are real processes, pinned and named the same way, registered as GPU workers, computing on the CPU.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from app.cli import WORKER_STOP_TIMEOUT_S, WorkerChild, console, worker_command
from app.core.config import Settings

#: a worker that ran this long before exiting is restarted without back-off
HEALTHY_AFTER_S = 60.0
MAX_BACKOFF_S = 30.0
POLL_S = 0.25


class GpuSpecError(ValueError):
    """A ``--gpus`` value that cannot be satisfied (one line, for the CLI)."""


@dataclass
class Slot:
    """One supervised worker: its node name, environment, and the process running it now."""

    name: str
    env: dict[str, str]
    child: WorkerChild | None = None
    started: float = 0.0
    failures: int = 0
    restart_at: float | None = None
    restarts: int = 0
    history: list[int] = field(default_factory=list)  # exit codes of earlier processes


def visible_gpus(settings: Settings) -> list[str]:
    """The GPU ids ``--gpus`` may name: ``0..N-1`` in stand-in mode (``SIMPRUNE_FAKE_GPUS``), the entries of
    ``CUDA_VISIBLE_DEVICES`` when it is set, else the GPUs ``nvidia-smi`` (or torch) counts."""
    if settings.fake_gpus:
        return [str(i) for i in range(settings.fake_gpus)]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip() and d.strip() != "-1"]
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=20).stdout
            return [str(i) for i, line in enumerate(ln for ln in out.splitlines() if ln.startswith("GPU "))]
        except (OSError, subprocess.SubprocessError):
            pass
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def parse_gpus(value: str, available: list[str]) -> list[str] | None:
    """The GPU ids ``value`` selects (``all``, ``none`` -> None, or a comma list of ids from ``available``).
    Raises :class:`GpuSpecError` for an empty, repeated or unknown id, and for ``all`` without GPUs."""
    text = value.strip().lower()
    if text == "none":
        return None
    shown = ",".join(available) or "none"
    if text == "all":
        if not available:
            raise GpuSpecError("--gpus all: no GPU found (nvidia-smi and CUDA see none); use --gpus none for a "
                               "CPU worker")
        return list(available)
    ids = [part.strip() for part in value.split(",")]
    if not value.strip() or any(not i for i in ids):
        raise GpuSpecError(f"--gpus {value!r}: give all, none, or GPU ids separated by commas (e.g. 0,2)")
    if len(set(ids)) != len(ids):
        raise GpuSpecError(f"--gpus {value!r}: a GPU is named twice")
    missing = [i for i in ids if i not in available]
    if missing:
        raise GpuSpecError(f"--gpus {value!r}: GPU {', '.join(missing)} not found; available: {shown}")
    return ids


def _node_name(hostname: str | None, suffix: str) -> str:
    prefix, _, host = (hostname or "simprune@%h").partition("@")
    return f"{prefix}-{suffix}@{host or '%h'}"


def plan_workers(value: str, settings: Settings, hostname: str | None = None) -> list[Slot]:
    """The workers ``--gpus value`` asks for, with their names and environments (nothing started)."""
    gpus = parse_gpus(value, visible_gpus(settings) if value.strip().lower() != "none" else [])
    base = dict(os.environ)
    if gpus is None:
        env = {**base, "CUDA_VISIBLE_DEVICES": "", "SIMPRUNE_WORKER_KIND": "cpu", "SIMPRUNE_DEVICE": "cpu"}
        return [Slot(_node_name(hostname, "cpu"), env)]
    slots = []
    port = settings.worker_metrics_port
    for n, gpu in enumerate(gpus):
        # ids as nvidia-smi numbers them (PCI bus order; CUDA's default order may differ on mixed cards)
        env = {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", **base, "CUDA_VISIBLE_DEVICES": gpu, "SIMPRUNE_WORKER_KIND": "gpu"}
        if settings.fake_gpus:  # stand-in: a real worker process, computing on the CPU
            env["SIMPRUNE_DEVICE"] = "cpu"
        elif settings.device.startswith("cuda:"):  # one device is visible: it is cuda:0
            env["SIMPRUNE_DEVICE"] = "cuda"
        if port:  # one metrics port per worker: PORT, PORT+1, ...
            env["SIMPRUNE_WORKER_METRICS_PORT"] = str(port + n)
        slots.append(Slot(_node_name(hostname, "gpu" + re.sub(r"[^A-Za-z0-9]+", "-", gpu)), env))
    return slots


class Supervisor:
    """Runs the slots' workers until SIGTERM/SIGINT, restarting the ones that exit."""

    def __init__(self, slots: list[Slot], loglevel: str = "INFO",
                 stop_timeout: float = WORKER_STOP_TIMEOUT_S) -> None:
        self.slots, self.loglevel, self.stop_timeout = slots, loglevel, stop_timeout
        self.stopping = False
        self._killing = False

    def _start(self, slot: Slot) -> None:
        slot.child = WorkerChild(worker_command(self.loglevel, slot.name), env=slot.env)
        slot.started, slot.restart_at = time.monotonic(), None
        console.print(f"simprune: worker {slot.name} started (pid {slot.child.pid}, "
                      f"CUDA_VISIBLE_DEVICES={slot.env.get('CUDA_VISIBLE_DEVICES')!r})", highlight=False)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        if self.stopping:  # a second signal: kill at once
            self._killing = True
            for slot in self.slots:
                if slot.child is not None:
                    slot.child.kill()
            return
        self.stopping = True
        for slot in self.slots:
            if slot.child is not None:
                slot.child.terminate()

    def _check(self, slot: Slot) -> None:
        """Restart ``slot``'s worker once it has exited (after its back-off)."""
        now = time.monotonic()
        if slot.child is not None and slot.child.proc.poll() is not None:
            code = slot.child.proc.returncode
            slot.child.kill()  # anything the worker left in its process group
            slot.history.append(code)
            slot.failures = 0 if now - slot.started >= HEALTHY_AFTER_S else slot.failures + 1
            delay = min(MAX_BACKOFF_S, 2.0 ** (slot.failures - 1)) if slot.failures else 0.0
            slot.child, slot.restart_at = None, now + delay
            console.print(f"simprune: worker {slot.name} exited with code {code}; restarting in {delay:g} s",
                          highlight=False)
        if slot.child is None and slot.restart_at is not None and now >= slot.restart_at:
            slot.restarts += 1
            self._start(slot)

    def _stop_all(self) -> None:
        for slot in self.slots:
            if slot.child is not None:
                slot.child.terminate()
        deadline = time.monotonic() + self.stop_timeout
        for slot in self.slots:
            if slot.child is None:
                continue
            try:
                slot.child.proc.wait(timeout=0 if self._killing else max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                console.print(f"simprune: worker {slot.name} did not stop within {self.stop_timeout:g} s: killed",
                              highlight=False)
            slot.child.kill()  # its whole process group, whether it exited or not
            slot.child.proc.wait()
            slot.child = None

    def run(self) -> int:
        """Start every worker, supervise until a signal, stop them all; the exit code (0)."""
        previous: dict[int, Any] = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for slot in self.slots:
                if not self.stopping:
                    self._start(slot)
            while not self.stopping:
                for slot in self.slots:
                    self._check(slot)
                time.sleep(POLL_S)
        finally:
            self.stopping = True
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        console.print(f"simprune: {len(self.slots)} worker(s) stopped", highlight=False)
        return 0
