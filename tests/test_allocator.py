"""The allocator setting that keeps freed tensor memory in the process (glibc)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from simprune.allocator import keep_freed_memory

CHECK = "from simprune.allocator import keep_freed_memory as k; print(k(), k())"


def _run(env: dict[str, str]) -> str:
    out = subprocess.run([sys.executable, "-c", CHECK], env=os.environ | env, capture_output=True, text=True,
                         check=True, timeout=60)
    return out.stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt: Linux only")
def test_set_once_on_linux_and_switched_off_by_the_environment() -> None:
    assert keep_freed_memory() is True and keep_freed_memory() is True  # conftest set it: the answer is kept
    assert _run({"SIMPRUNE_KEEP_FREED_MEMORY": "1"}) == "True True"
    assert _run({"SIMPRUNE_KEEP_FREED_MEMORY": "0"}) == "False False"
