"""Faster arithmetic for the gradient stages (block and output reconstruction) and the sensitivity scans:
channels-last memory format, and bfloat16 autocast where the device computes it natively.

Measured on this project's 2-core AMD EPYC (AVX-512 with BF16), 2 threads, batch 64 of 32x32 images, ResNet-56 at
50% FLOPs (``bench/recon_step_time.py``): one forward + backward of the pruned model takes 293 ms contiguous in
fp32, 217 ms channels-last, 149 ms channels-last under bfloat16 autocast; the dense model's forward 103 / 86 / 53 ms.
The pipeline runs both reconstructions under bf16 autocast where the device computes it natively
(``recon_bf16`` None): with the output stage's learning rate scaled to its step count, ResNet-56's 3-seed accuracy
after the output stage is the same in bf16 as in fp32 (82.75 vs 82.77) in 23% less time (BENCHMARKS.md, session
20; an earlier measurement, at the unscaled rate, had found no bf16 checkpoint better than the start). Where
only the teacher runs in bf16 (``output_recon_teacher_bf16``): on a 2-core Xeon with AMX its forward takes 31 ms
instead of 72 ms and the accuracies did not move. Weights stay in fp32
(autocast computes in bf16 and keeps fp32 master weights), and the models are given back contiguous. The same
stages also compute each BatchNorm inside the convolution before it: :mod:`simprune.folded_norms`.
"""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Iterator

import torch
from torch import nn


def _onednn_isa_cap() -> str:
    """oneDNN's instruction-set cap (``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``), upper case; "ALL" when unset."""
    return (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()


def _onednn_cap_allows(*isas: str) -> bool:
    """Whether oneDNN's instruction-set cap (if any) names one of ``isas`` (substrings of the cap's name)."""
    cap = _onednn_isa_cap()
    return cap == "ALL" or any(k in cap for k in isas)


def _isa_cap_allows_bf16() -> bool:
    """False when oneDNN's instruction set is capped below the bf16 instructions (AVX-512 BF16, AMX, AVX10)."""
    return _onednn_cap_allows("BF16", "FP16", "AMX", "AVX10")


def cpu_vector_isa() -> str:
    """"AVX512", "AVX2" or "" (other CPUs): the vector instructions both ATen and oneDNN use here, each capped by
    its own environment variable (``ATEN_CPU_CAPABILITY``; ``ONEDNN_MAX_CPU_ISA`` / ``DNNL_MAX_CPU_ISA``)."""
    try:
        aten = str(torch.backends.cpu.get_cpu_capability()).upper()
    except (AttributeError, RuntimeError):
        return ""
    if aten.startswith("AVX512") and _onednn_cap_allows("AVX512", "AMX", "AVX10"):
        return "AVX512"
    if aten.startswith(("AVX512", "AVX2")) and _onednn_cap_allows("AVX2", "AVX512", "AMX", "AVX10"):
        return "AVX2"
    return ""


def bf16_native(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 convolutions natively: CUDA with bf16 support; an x86 CPU with AVX-512
    BF16 or AMX instructions (oneDNN's own check also says yes for plain AVX-512, where it emulates bf16: 2.1-2.6x
    slower than fp32 for ResNet-56, ``bench/recon_step_time.py`` under ``ONEDNN_MAX_CPU_ISA=AVX512_CORE``);
    an Arm CPU with the bf16 extension. Elsewhere bf16 is emulated and slower than fp32."""
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    try:
        if not (torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()):
            return False
    except (AttributeError, RuntimeError):
        return False
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686", "x86"):
        return True  # Arm: oneDNN's check reads the bf16 extension itself
    if not _isa_cap_allows_bf16():
        return False
    checks = [getattr(torch.cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not any(callable(c) for c in checks):
        return True  # an older torch without these: oneDNN's check is all there is
    return any(bool(c()) for c in checks if callable(c))


def use_bf16(choice: bool | None, device: torch.device) -> bool:
    """``choice`` None: bf16 where the device runs it natively; True / False: as asked."""
    return bf16_native(device) if choice is None else bool(choice)


def autocast(device: torch.device, enabled: bool) -> contextlib.AbstractContextManager[object]:
    """bfloat16 autocast on ``device`` when ``enabled``, else a no-op context."""
    if not enabled or device.type not in ("cpu", "cuda"):
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def _has_conv2d(model: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in model.modules())


@contextlib.contextmanager
def channels_last(*models: nn.Module, enabled: bool = True) -> Iterator[bool]:
    """Convert the 4-D parameters of models with 2-D convolutions to channels-last for the duration of the
    block and back to contiguous afterwards (yields whether it converted). Parameters keep their identity, so
    optimisers and hooks created inside the block see the same tensors."""
    todo = [m for m in models if enabled and _has_conv2d(m)]
    for m in todo:
        m.to(memory_format=torch.channels_last)
    try:
        yield bool(todo)
    finally:
        for m in todo:
            m.to(memory_format=torch.contiguous_format)


def to_channels_last(x: torch.Tensor, enabled: bool) -> torch.Tensor:
    """A 4-D batch in channels-last memory format when ``enabled`` (other tensors unchanged)."""
    return x.contiguous(memory_format=torch.channels_last) if enabled and x.dim() == 4 else x
