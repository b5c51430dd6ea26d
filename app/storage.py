"""Where uploaded files and job artifacts live. ``Storage`` is the small interface the API and the worker use;
``LocalStorage`` keeps files under ``DATA_DIR/storage``. Keys are relative POSIX paths (``jobs/<id>/model.pt2``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import BinaryIO, Protocol, runtime_checkable

from app.core.config import Settings


@runtime_checkable
class Storage(Protocol):
    """A flat key -> file store."""

    def put_file(self, key: str, src: Path) -> None:
        """Store the local file ``src`` under ``key`` (``src`` may be moved away; callers must not reuse it)."""

    def open(self, key: str) -> BinaryIO:
        """Open ``key`` for binary reading; ``FileNotFoundError`` when absent."""

    def delete(self, key: str) -> None:
        """Remove ``key``; a missing key is not an error."""

    def exists(self, key: str) -> bool:
        """Whether ``key`` is stored."""

    def url(self, key: str) -> str:
        """A URL for ``key`` (``file://`` for local storage, a signed URL for object stores)."""


class LocalStorage:
    """Files under one root directory; writes are atomic (temp file + rename on the same filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
            raise ValueError(f"invalid storage key: {key!r}")
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"invalid storage key: {key!r}")
        return path

    def put_file(self, key: str, src: Path) -> None:
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.part")
        try:
            shutil.move(str(src), tmp)
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")  # noqa: SIM115

    def delete(self, key: str) -> None:
        path = self._path(key)
        path.unlink(missing_ok=True)
        parent = path.parent
        while parent != self.root:  # prune empty directories
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def url(self, key: str) -> str:
        return self._path(key).as_uri()

    def local_path(self, key: str) -> Path:
        """The file's path on disk (LocalStorage only; lets the worker hand paths to the engine)."""
        return self._path(key)


def get_storage(settings: Settings) -> Storage:
    """The storage backend for ``settings`` (local directory under DATA_DIR)."""
    return LocalStorage(settings.storage_dir)
