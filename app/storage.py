"""Where uploaded files and job artifacts live. ``Storage`` is the small interface the API and the worker use;
``LocalStorage`` keeps files under ``DATA_DIR/storage``; ``S3Storage`` keeps them in an S3-compatible bucket
(AWS S3, MinIO, Ceph...) so API and workers on different machines share them. ``SIMPRUNE_STORAGE`` picks one.
Keys are relative POSIX paths (``jobs/<id>/1/model.pt2``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, BinaryIO, Protocol, runtime_checkable

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

    def delete_prefix(self, prefix: str) -> int:
        """Remove every key under ``prefix`` (a ``dir/`` style prefix); returns how many were removed."""


class StorageError(RuntimeError):
    """The storage backend failed (unreachable, full, refused); the message says which key and why."""


def check_key(key: str) -> str:
    """``key`` when it is a safe relative POSIX path, else ``ValueError``."""
    if not key or key.startswith("/") or "\\" in key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"invalid storage key: {key!r}")
    return key


class LocalStorage:
    """Files under one root directory; writes are atomic (temp file + rename on the same filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / check_key(key)).resolve()
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
        except OSError as exc:  # disk full, read-only, permissions: name the key and the cause
            raise StorageError(f"storage error: could not store '{key}': {exc}") from exc
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

    def delete_prefix(self, prefix: str) -> int:
        base = self._path(prefix.rstrip("/"))
        if not base.is_dir():
            return 0
        files = [p for p in base.rglob("*") if p.is_file()]
        shutil.rmtree(base, ignore_errors=True)
        parent = base.parent
        while parent != self.root:
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        return len(files)

    def local_path(self, key: str) -> Path:
        """The file's path on disk (LocalStorage only; lets the worker hand paths to the engine)."""
        return self._path(key)


class S3Storage:
    """Objects in an S3-compatible bucket (boto3). Uploads are multipart for large files; S3 PUTs are atomic,
    so a reader never sees a partial object. Errors surface as :class:`StorageError` naming the key."""

    def __init__(self, bucket: str, prefix: str = "", endpoint_url: str = "", region: str = "us-east-1",
                 access_key_id: str = "", secret_access_key: str = "", url_expiry_s: int = 3600) -> None:
        import boto3
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.url_expiry_s = url_expiry_s
        creds: dict[str, Any] = {}
        if access_key_id:
            creds = {"aws_access_key_id": access_key_id, "aws_secret_access_key": secret_access_key}
        self.client = boto3.client(
            "s3", endpoint_url=endpoint_url or None, region_name=region,
            config=Config(retries={"max_attempts": 3, "mode": "standard"}, connect_timeout=5, read_timeout=60,
                          s3={"addressing_style": "path"}),
            **creds,
        )

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _fail(self, op: str, key: str, exc: Exception) -> StorageError:
        return StorageError(f"storage error: could not {op} '{key}' in bucket '{self.bucket}': {exc}")

    def put_file(self, key: str, src: Path) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.upload_file(str(src), self.bucket, self._key(key))
        except (BotoCoreError, ClientError, OSError) as exc:
            raise self._fail("store", key, exc) from exc
        Path(src).unlink(missing_ok=True)

    def open(self, key: str) -> BinaryIO:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            obj = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                raise FileNotFoundError(key) from None
            raise self._fail("read", key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail("read", key, exc) from exc
        return obj["Body"]  # botocore StreamingBody: read(n), close(), context manager

    def delete(self, key: str) -> None:
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            self.client.delete_object(Bucket=self.bucket, Key=self._key(key))
        except (BotoCoreError, ClientError) as exc:
            raise self._fail("delete", key, exc) from exc

    def exists(self, key: str) -> bool:
        from botocore.exceptions import ClientError

        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return False
            raise self._fail("inspect", key, exc) from exc
        return True

    def url(self, key: str) -> str:
        return str(self.client.generate_presigned_url(
            "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=self.url_expiry_s))

    def keys(self, prefix: str = "") -> list[str]:
        """Every key under ``prefix`` (without the storage's own prefix)."""
        out: list[str] = []
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                     Prefix=self.prefix + prefix)
        for page in pages:
            out += [o["Key"][len(self.prefix):] for o in page.get("Contents", [])]
        return out

    def delete_prefix(self, prefix: str) -> int:
        check_key(prefix.rstrip("/"))
        keys = self.keys(prefix.rstrip("/") + "/")
        for i in range(0, len(keys), 1000):
            batch = [{"Key": self.prefix + k} for k in keys[i:i + 1000]]
            self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": batch, "Quiet": True})
        return len(keys)


def get_storage(settings: Settings) -> Storage:
    """The storage backend ``settings.storage`` names: a local directory under DATA_DIR, or an S3 bucket."""
    if settings.storage == "s3":
        return S3Storage(settings.s3_bucket, settings.s3_prefix, settings.s3_endpoint_url, settings.s3_region,
                         settings.s3_access_key_id, settings.s3_secret_access_key, settings.s3_url_expiry_s)
    return LocalStorage(settings.storage_dir)
