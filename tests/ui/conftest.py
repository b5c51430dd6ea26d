"""Fixtures for the browser tests: a live server with a real worker, an API key, the shared ResNet-20 (a
random-init cifar_resnet20 when ../shared is absent), a small dataset, and Chromium from Debian driven by
Playwright (never a downloaded browser). Without Chromium the tests are skipped, except in CI where they fail."""

from __future__ import annotations

import os
import shutil
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "service"))

from service_helpers import REPO, LiveServer, WorkerProcess, make_embedded, new_key  # noqa: E402

CHROMIUM = os.environ.get("SIMPRUNE_CHROMIUM", "/usr/bin/chromium")
SHARED = REPO.parent / "shared" / "data"
SHOTS = REPO / "docs" / "screenshots"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Headless system Chromium."""
    if not Path(CHROMIUM).exists() and not shutil.which("chromium"):
        if IN_CI:
            pytest.fail(f"{CHROMIUM} missing (CI=true: .ci/run installs Debian's chromium)")
        pytest.skip(f"{CHROMIUM} missing: apt-get install chromium")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium"),
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A live server with one real worker, and a key."""
    s = make_embedded(tmp_path_factory.mktemp("ui") / "data")
    with LiveServer(s) as server, WorkerProcess(s) as worker:
        yield {"url": server.url, "key": new_key(s), "worker": worker}


@pytest.fixture(scope="session")
def ui_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The checkpoint to upload and a small dataset (5 real CIFAR-10 test images per class when ../shared has
    them, else 40 random images as .npz)."""
    d = tmp_path_factory.mktemp("ui_files")
    shared_ckpt = SHARED / "checkpoints" / "resnet20-12fca82f.th"
    if shared_ckpt.exists():
        ckpt = d / shared_ckpt.name
        shutil.copyfile(shared_ckpt, ckpt)
    else:
        import torch

        from simprune.checkpoint import save_state_dict
        from simprune.zoo import build_model

        torch.manual_seed(0)
        ckpt = save_state_dict(build_model("cifar_resnet20", num_classes=10).state_dict(), d / "resnet20.safetensors")
    test_zip = SHARED / "cifar10-jpeg" / "test.zip"
    if test_zip.exists():
        data = d / "cifar10-50.zip"
        with zipfile.ZipFile(test_zip) as src, zipfile.ZipFile(data, "w") as dst:
            per_class: dict[str, int] = {}
            for name in src.namelist():
                cls = name.split("/")[-2] if name.count("/") >= 1 and not name.endswith("/") else None
                if cls and per_class.get(cls, 0) < 5:
                    per_class[cls] = per_class.get(cls, 0) + 1
                    dst.writestr("/".join(name.split("/")[-2:]), src.read(name))
    else:
        rng = np.random.default_rng(0)
        data = d / "random40.npz"
        np.savez(data, x=rng.integers(0, 255, size=(40, 32, 32, 3), dtype=np.uint8), y=np.arange(40) % 10)
    return {"ckpt": ckpt, "data": data}


@pytest.fixture(scope="session")
def shot() -> Any:
    """``shot(page, name)`` saves a screenshot as docs/screenshots/NAME.png (linked from the README)."""
    SHOTS.mkdir(parents=True, exist_ok=True)

    def save(page: Any, name: str) -> None:
        page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)

    return save
