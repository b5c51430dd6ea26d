"""Keep freed tensor memory in the process on glibc: large CPU passes stop paying page faults on every tensor.

glibc's malloc hands blocks above its mmap threshold (128 KiB, rising to at most 32 MiB) straight to the kernel
and gives freed heap back above its trim threshold, so every large activation of a CPU forward or backward pass
is faulted in page by page, again at each step. On the 2-core VMs this project is measured on, a CIFAR ResNet
block over 1,024 images took 225 ms that way and 58 ms with the memory kept (a 67 MB ReLU: 17 ms -> 2.5 ms;
ResNet-56 pruned forward + backward at batch 64: 140 ms -> 103 ms; BENCHMARKS.md, session 16).
:func:`keep_freed_memory` raises both thresholds (and the heap's growth step) with ``mallopt``; the process
then keeps up to the trim threshold of freed memory for reuse instead of returning it. Called by the CLI, the
worker and the benchmarks; a library user may call it too. ``SIMPRUNE_KEEP_FREED_MEMORY=0`` turns it off.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
MMAP_THRESHOLD = 256 << 20
"""Blocks above this still come straight from the kernel (a single huge activation is returned when freed)."""
TRIM_THRESHOLD = 512 << 20
"""Freed memory at the heap's top kept for reuse before any is returned to the kernel."""
TOP_PAD = 64 << 20
"""How much the heap grows by at a time."""

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Raise glibc malloc's mmap and trim thresholds for this process (once); True when they were set.

    False (nothing changed) off Linux/glibc or with ``SIMPRUNE_KEEP_FREED_MEMORY=0``."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get("SIMPRUNE_KEEP_FREED_MEMORY", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = all(mallopt(k, v) == 1 for k, v in ((M_MMAP_THRESHOLD, MMAP_THRESHOLD),
                                                 (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_TOP_PAD, TOP_PAD)))
    return _done
