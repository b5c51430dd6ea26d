"""Measured latency: a dense and a pruned model timed side by side on one device, and the environment.

:func:`measure_latency` times both models eagerly (``torch.inference_mode``, CUDA synchronised after every
forward) and, when ONNX files are given, as ONNX Runtime sessions, at batch 1 and a throughput batch (32 on
CPU, 256 on CUDA by default, lowered when memory would not hold it). The two models run interleaved
(dense, pruned, then pruned, dense, ...) so drift and background load hit both alike; the median and the
minimum of each are reported with ``speedup = dense / pruned`` and ``efficiency = speedup / FLOPs ratio``
(1.0: time falls as fast as FLOPs do). The whole measurement keeps to a time budget: each (runtime, batch)
cell gets an equal share of what is left, at least 3 timed rounds, and a cell whose 3 rounds would not fit
is skipped with the reason.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` during one forward, above what was allocated
before it (``memory_method = "cuda_max_memory_allocated"``); on CPU an estimate, the peak of the live
bytes of module outputs during one forward (each output's storage counted from the module that produced it
until it is freed, tracked by weak references), which leaves out the weights and the allocator's scratch
space (``memory_method = "module_outputs_estimate"``). The weights' own size is reported as ``weights_mb``.
"""

from __future__ import annotations

import contextlib
import platform
import statistics
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

CPU_THROUGHPUT_BATCH = 32
CUDA_THROUGHPUT_BATCH = 256
MIN_ROUNDS = 3
MEMORY_SHARE = 0.25
"""A CPU throughput batch is lowered until its estimated activation memory fits this share of free memory."""


@dataclass
class LatencyConfig:
    """How to measure. ``batch_sizes`` None: batch 1 and the device's throughput batch."""

    batch_sizes: tuple[int, ...] | None = None
    warmup: int = 2
    repeats: int = 20
    budget_s: float = 60.0
    threads: int | None = None
    onnxruntime: bool = True

    def batches(self, device: torch.device) -> tuple[int, ...]:
        if self.batch_sizes:
            return tuple(dict.fromkeys(int(b) for b in self.batch_sizes))
        return (1, CUDA_THROUGHPUT_BATCH if device.type == "cuda" else CPU_THROUGHPUT_BATCH)


# --------------------------------------------------------------------------------------------------------
# environment


def device_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model name (``/proc/cpuinfo``, else the platform's processor)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "cpu"


def onnxruntime_version() -> str | None:
    try:
        import onnxruntime
    except ImportError:
        return None
    return str(onnxruntime.__version__)


def environment(device: torch.device | str, threads: int | None = None) -> dict[str, Any]:
    """Where a measurement ran: device type and name, CPU threads, torch/CUDA/onnxruntime versions, platform."""
    device = torch.device(device)
    env: dict[str, Any] = {
        "device_type": device.type, "device_name": device_name(device),
        "threads": threads or torch.get_num_threads(), "torch": torch.__version__,
        "onnxruntime": onnxruntime_version(), "platform": platform.platform(terse=True)[:200],
        "python": platform.python_version(),
    }
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
    return env


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[int]:
    """``torch.set_num_threads(threads)`` for the block (no change for None); yields the count in use."""
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        yield torch.get_num_threads()
    finally:
        torch.set_num_threads(before)


# --------------------------------------------------------------------------------------------------------
# timing


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so that a wall-clock interval covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_interleaved(fns: Sequence[Callable[[], Any]], device: torch.device, warmup: int, repeats: int,
                     budget_s: float, min_rounds: int = MIN_ROUNDS) -> tuple[list[list[float]], str | None]:
    """Seconds per call of each ``fn``, round-robin with the order rotated every round.

    ``warmup`` untimed rounds (at least one, which also prices a round), then between ``min_rounds`` and
    ``repeats`` timed rounds as ``budget_s`` allows. Returns ``(times, None)``, or ``([], reason)`` when even
    ``min_rounds`` rounds would not fit the budget.
    """
    start = time.perf_counter()
    for _ in range(max(1, warmup)):
        for fn in fns:
            fn()
        sync(device)
    per_round = (time.perf_counter() - start) / max(1, warmup)
    left = budget_s - (time.perf_counter() - start)
    if per_round * min_rounds > left:
        return [], f"{min_rounds} rounds of {per_round:.2f}s do not fit the {budget_s:.1f}s left for it"
    rounds = max(min_rounds, min(repeats, int(left / max(per_round, 1e-9))))
    times: list[list[float]] = [[] for _ in fns]
    for r in range(rounds):
        order = list(range(len(fns)))
        k = r % len(fns)
        for i in order[k:] + order[:k]:
            t0 = time.perf_counter()
            fns[i]()
            sync(device)
            times[i].append(time.perf_counter() - t0)
    return times, None


# --------------------------------------------------------------------------------------------------------
# memory


def weights_mb(model: nn.Module) -> float:
    """Parameters and buffers, in MiB."""
    n = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])
    return n / 2**20


@torch.inference_mode()
def activation_peak_bytes(model: nn.Module, x: torch.Tensor) -> int:
    """Peak of the live bytes of module outputs during one forward (see the module docstring)."""
    live: dict[int, int] = {}
    peak = [0]

    def release(key: int) -> None:
        live.pop(key, None)

    def hook(_mod: nn.Module, _inp: Any, out: Any) -> None:
        for t in out if isinstance(out, list | tuple) else (out,):
            if not isinstance(t, torch.Tensor):
                continue
            key = t.untyped_storage().data_ptr()
            if key in live:
                continue
            live[key] = t.untyped_storage().nbytes()
            weakref.finalize(t, release, key)
            peak[0] = max(peak[0], sum(live.values()))

    handles = [m.register_forward_hook(hook) for m in model.modules() if not list(m.children())]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return peak[0] + x.untyped_storage().nbytes()


def peak_memory_mb(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    """Peak memory of one forward in MiB: measured on CUDA, estimated on CPU (see the module docstring)."""
    if device.type == "cuda":
        sync(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        with torch.inference_mode():
            model(x)
        sync(device)
        return (torch.cuda.max_memory_allocated(device) - base) / 2**20
    return activation_peak_bytes(model, x) / 2**20


def _available_bytes() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    return None


def fit_batch(model: nn.Module, input_size: Sequence[int], batch: int, device: torch.device) -> int:
    """``batch`` halved until one forward fits: tried on CUDA (out-of-memory caught), estimated on CPU
    (activations of batch 1 times the batch under :data:`MEMORY_SHARE` of the available memory)."""
    if batch <= 1:
        return 1
    if device.type == "cuda":
        while batch > 1:
            try:
                with torch.inference_mode():
                    model(torch.zeros(batch, *input_size, device=device))
                return batch
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                batch //= 2
        return 1
    avail = _available_bytes()
    if avail is None:
        return batch
    per_sample = activation_peak_bytes(model, torch.zeros(1, *input_size))
    while batch > 1 and per_sample * batch > MEMORY_SHARE * avail:
        batch //= 2
    return batch


# --------------------------------------------------------------------------------------------------------
# the measurement


def _row(runtime: str, batch: int, times: list[list[float]], flops_ratio: float | None) -> dict[str, Any]:
    dense, pruned = times
    d_ms, p_ms = statistics.median(dense) * 1e3, statistics.median(pruned) * 1e3
    d_min, p_min = min(dense) * 1e3, min(pruned) * 1e3
    row: dict[str, Any] = {
        "runtime": runtime, "batch": batch, "rounds": len(dense),
        "dense_ms": round(d_ms, 4), "pruned_ms": round(p_ms, 4),
        "dense_min_ms": round(d_min, 4), "pruned_min_ms": round(p_min, 4),
        "speedup": round(d_ms / p_ms, 4), "speedup_min": round(d_min / p_min, 4),
    }
    if flops_ratio:
        row["efficiency"] = round(row["speedup"] / flops_ratio, 4)
    return row


def _ort_session(path: Path, device: torch.device, threads: int) -> tuple[Any, str]:
    """An ONNX Runtime session on the device (CUDA provider when present, else CPU) and the provider used."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    provider = "CPUExecutionProvider"
    if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
        provider = "CUDAExecutionProvider"
    return ort.InferenceSession(str(path), sess_options=opts, providers=[provider]), provider


@dataclass
class _Cells:
    """The cells still to time and the clock they share."""

    deadline: float
    left: int

    def share(self) -> float:
        budget = max(0.0, self.deadline - time.perf_counter()) / max(self.left, 1)
        self.left -= 1
        return budget


def _eager_cells(dense: nn.Module, pruned: nn.Module, input_size: Sequence[int], batches: Sequence[int],
                 device: torch.device, config: LatencyConfig, cells: _Cells, flops_ratio: float | None,
                 out: dict[str, Any]) -> None:
    for batch in batches:
        x = torch.randn(batch, *input_size, device=device)
        budget = cells.share()
        with torch.inference_mode():
            times, why = time_interleaved([lambda x=x: dense(x), lambda x=x: pruned(x)], device, config.warmup,
                                          config.repeats, budget)
        if why:
            out["skipped"].append({"runtime": "eager", "batch": batch, "reason": why})
            continue
        row = _row("eager", batch, times, flops_ratio)
        row["dense_peak_mb"] = round(peak_memory_mb(dense, x, device), 3)
        row["pruned_peak_mb"] = round(peak_memory_mb(pruned, x, device), 3)
        out["rows"].append(row)


def _ort_cells(onnx: tuple[Path, Path], input_size: Sequence[int], batches: Sequence[int], device: torch.device,
               threads: int, config: LatencyConfig, cells: _Cells, flops_ratio: float | None,
               out: dict[str, Any]) -> None:
    import numpy as np

    sessions = [_ort_session(p, device, threads) for p in onnx]
    out["onnxruntime_provider"] = sessions[0][1]
    names = [s.get_inputs()[0].name for s, _ in sessions]
    for batch in batches:
        x = np.random.default_rng(0).standard_normal((batch, *input_size)).astype(np.float32)
        budget = cells.share()
        try:
            fns = [lambda s=s, n=n, x=x: s.run(None, {n: x}) for (s, _), n in zip(sessions, names, strict=True)]
            times, why = time_interleaved(fns, torch.device("cpu"), config.warmup, config.repeats, budget)
        except Exception as exc:  # a static-batch export, or a provider failure: say so and go on
            times, why = [], f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
        if why:
            out["skipped"].append({"runtime": "onnxruntime", "batch": batch, "reason": why})
            continue
        out["rows"].append(_row("onnxruntime", batch, times, flops_ratio))


def measure_latency(dense: nn.Module, pruned: nn.Module, input_size: Sequence[int], device: torch.device | str,
                    *, onnx: tuple[Path, Path] | None = None, flops_ratio: float | None = None,
                    config: LatencyConfig | None = None) -> dict[str, Any]:
    """Time ``dense`` against ``pruned`` (moved to ``device``, in eval mode) and, with ``onnx`` = (dense
    .onnx, pruned .onnx), their ONNX Runtime sessions. ``input_size`` is one sample's shape (C, H, W).

    Returns ``{"device", "environment", "threads", "batches", "rows": [{runtime, batch, rounds, dense_ms,
    pruned_ms, dense_min_ms, pruned_min_ms, speedup, speedup_min, efficiency, dense_peak_mb,
    pruned_peak_mb}], "skipped": [{runtime, batch, reason}], "speedup", "efficiency", "flops_ratio",
    "weights_mb", "memory_method", "budget_s", "seconds"}``; ``speedup``/``efficiency`` are the eager batch-1
    figures (None when that cell was skipped).
    """
    config = config or LatencyConfig()
    device = torch.device(device)
    t0 = time.perf_counter()
    dense, pruned = dense.to(device).eval(), pruned.to(device).eval()
    with torch_threads(config.threads if device.type == "cpu" else None) as threads:
        batches = list(config.batches(device))
        capped = [min(b, fit_batch(dense, input_size, b, device)) for b in batches]
        batches = list(dict.fromkeys(capped))
        use_ort = bool(config.onnxruntime and onnx and all(Path(p).is_file() for p in onnx))
        out: dict[str, Any] = {
            "device": str(device), "environment": environment(device, threads if device.type == "cpu" else None),
            "threads": threads if device.type == "cpu" else None, "batches": batches, "rows": [], "skipped": [],
            "flops_ratio": round(flops_ratio, 4) if flops_ratio else None,
            "weights_mb": {"dense": round(weights_mb(dense), 3), "pruned": round(weights_mb(pruned), 3)},
            "memory_method": "cuda_max_memory_allocated" if device.type == "cuda" else "module_outputs_estimate",
            "budget_s": config.budget_s,
        }
        cells = _Cells(deadline=t0 + config.budget_s, left=len(batches) * (2 if use_ort else 1))
        _eager_cells(dense, pruned, input_size, batches, device, config, cells, flops_ratio, out)
        if use_ort:
            assert onnx is not None
            _ort_cells(onnx, input_size, batches, device, threads, config, cells, flops_ratio, out)
    first = next((r for r in out["rows"] if r["runtime"] == "eager" and r["batch"] == batches[0]), None)
    out["speedup"] = first["speedup"] if first else None
    out["efficiency"] = first.get("efficiency") if first else None
    out["seconds"] = round(time.perf_counter() - t0, 3)
    return out


def slow_rows(latency: dict[str, Any], flops_ratio: float | None) -> list[dict[str, Any]]:
    """The measured rows whose speedup is under half the FLOPs ratio (the report's warning)."""
    if not flops_ratio:
        return []
    return [r for r in latency.get("rows", []) if r["speedup"] < 0.5 * flops_ratio]


def latency_warning(latency: dict[str, Any], flops_ratio: float | None) -> str | None:
    """A one-line warning naming the rows whose speedup is under half the FLOPs ratio, or None."""
    rows = slow_rows(latency, flops_ratio)
    if not rows or not flops_ratio:
        return None
    cells = ", ".join(f"{r['runtime']} batch {r['batch']}: {r['speedup']:.2f}x" for r in rows)
    return (f"measured speedup is under half of the FLOPs ratio {flops_ratio:.2f}x on {latency.get('device')} "
            f"({cells}); the removed FLOPs do not turn into time on this device: try round_to (a device "
            "profile finds the fast channel multiple) or a latency target (target_speedup with a profile)")
