"""Zip archives from untrusted sources: inspect the central directory before anything is extracted or read.

:func:`check_zip` refuses archives that could exhaust resources (too many entries, huge declared sizes,
zip-bomb compression ratios, overlapping entries) or that carry unsafe names (absolute paths, ``..``,
backslashes, drive letters, symlinks, duplicates). :func:`read_entry` then reads one entry while enforcing
the size its header declares. Nothing here extracts to disk.

Example::

    with zipfile.ZipFile(path) as zf:
        check_zip(zf, **DATASET_LIMITS)
        data = read_entry(zf, "cat/0001.jpg")
"""

from __future__ import annotations

import os
import re
import stat
import struct
import zipfile
from pathlib import Path
from typing import IO, Any

from simprune.errors import InputError, UnsafeInputError

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB

# Checkpoints saved by torch.save (a zip with one small pickle and one entry per storage).
CHECKPOINT_MAX_ENTRIES = 10_000
CHECKPOINT_MAX_TOTAL_BYTES = 4 * GiB
CHECKPOINT_MAX_ENTRY_BYTES = 2 * GiB
CHECKPOINT_MAX_RATIO = 200.0

# ImageFolder datasets packed as a zip (one small image per entry).
DATASET_MAX_ENTRIES = 200_000
DATASET_MAX_TOTAL_BYTES = 4 * GiB
DATASET_MAX_ENTRY_BYTES = 64 * MiB
DATASET_MAX_RATIO = 100.0

# ``.npz`` arrays (a zip of a few ``.npy`` members, possibly compressed; zero-heavy features compress well).
NPZ_MAX_ENTRIES = 64
NPZ_MAX_TOTAL_BYTES = 4 * GiB
NPZ_MAX_ENTRY_BYTES = 4 * GiB
NPZ_MAX_RATIO = 1000.0

# Entries smaller than this are exempt from the ratio limit: a few KiB of zeros compress 300:1, harmlessly.
RATIO_MIN_BYTES = 1 * MiB

CHECKPOINT_LIMITS: dict[str, Any] = {
    "max_entries": CHECKPOINT_MAX_ENTRIES,
    "max_total_bytes": CHECKPOINT_MAX_TOTAL_BYTES,
    "max_entry_bytes": CHECKPOINT_MAX_ENTRY_BYTES,
    "max_ratio": CHECKPOINT_MAX_RATIO,
}
DATASET_LIMITS: dict[str, Any] = {
    "max_entries": DATASET_MAX_ENTRIES,
    "max_total_bytes": DATASET_MAX_TOTAL_BYTES,
    "max_entry_bytes": DATASET_MAX_ENTRY_BYTES,
    "max_ratio": DATASET_MAX_RATIO,
}
NPZ_LIMITS: dict[str, Any] = {
    "max_entries": NPZ_MAX_ENTRIES,
    "max_total_bytes": NPZ_MAX_TOTAL_BYTES,
    "max_entry_bytes": NPZ_MAX_ENTRY_BYTES,
    "max_ratio": NPZ_MAX_RATIO,
}

SUPPORTED_COMPRESSION = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}

_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_DRIVE_RE = re.compile(r"^[A-Za-z]:")

ZipSource = str | os.PathLike[str] | IO[bytes] | zipfile.ZipFile


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def _declared_entry_count(fp: IO[bytes]) -> int:
    """Entry count declared by the end-of-central-directory record (zip64 aware), before zipfile parses it."""
    fp.seek(0, os.SEEK_END)
    size = fp.tell()
    tail_len = min(size, 22 + 65535)
    fp.seek(size - tail_len)
    tail = fp.read(tail_len)
    pos = tail.rfind(_EOCD_SIG)
    if pos < 0 or len(tail) - pos < 22:
        raise InputError("not a valid zip archive (no end-of-central-directory record)")
    total = struct.unpack("<H", tail[pos + 10 : pos + 12])[0]
    eocd_offset = size - tail_len + pos
    if total == 0xFFFF and eocd_offset >= 20:
        fp.seek(eocd_offset - 20)
        loc = fp.read(20)
        if loc[:4] == _ZIP64_LOCATOR_SIG:
            z64_offset = struct.unpack("<Q", loc[8:16])[0]
            if z64_offset + 56 <= size:
                fp.seek(z64_offset)
                rec = fp.read(56)
                if rec[:4] == _ZIP64_EOCD_SIG:
                    total = struct.unpack("<Q", rec[32:40])[0]
    return int(total)


def _raw_name_length(info: zipfile.ZipInfo) -> int:
    encoding = "utf-8" if info.flag_bits & 0x800 else "cp437"
    try:
        return len(info.orig_filename.encode(encoding))
    except UnicodeEncodeError:
        return len(info.orig_filename.encode("utf-8"))


def normalize_entry_name(name: str) -> str:
    """``name`` with ``.`` and empty components removed (``./a//b/`` -> ``a/b``); names are otherwise kept."""
    return "/".join(p for p in name.split("/") if p not in ("", "."))


def check_entry_name(name: str) -> None:
    """Raise :class:`UnsafeInputError` when ``name`` could address something outside the archive root."""
    if not name:
        raise UnsafeInputError("unsafe zip entry: empty file name")
    if "\x00" in name or any(ord(c) < 0x20 for c in name):
        raise UnsafeInputError(f"unsafe zip entry {name!r}: control characters in the file name")
    if "\\" in name:
        raise UnsafeInputError(f"unsafe zip entry {name!r}: backslash in the file name")
    if name.startswith("/"):
        raise UnsafeInputError(f"unsafe zip entry {name!r}: absolute path")
    if _DRIVE_RE.match(name):
        raise UnsafeInputError(f"unsafe zip entry {name!r}: drive letter in the path")
    if ".." in name.split("/"):
        raise UnsafeInputError(f"unsafe zip entry {name!r}: '..' path component")


def check_zip(
    path_or_file: ZipSource,
    *,
    max_entries: int = CHECKPOINT_MAX_ENTRIES,
    max_total_bytes: int = CHECKPOINT_MAX_TOTAL_BYTES,
    max_entry_bytes: int = CHECKPOINT_MAX_ENTRY_BYTES,
    max_ratio: float = CHECKPOINT_MAX_RATIO,
    ratio_min_bytes: int = RATIO_MIN_BYTES,
) -> list[zipfile.ZipInfo]:
    """Inspect a zip's central directory without extracting; return its entries when every check passes.

    Checks: entry count, declared uncompressed size per entry and in total, compression ratio per entry
    (entries of at least ``ratio_min_bytes``), overlapping entries (non-recursive zip bombs), encryption,
    compression method, and name safety (see :func:`check_entry_name`), symlink entries and duplicate names.

    Raises :class:`UnsafeInputError` naming the problem and the entry, or :class:`InputError` when the
    file is not a readable zip archive.
    """
    if isinstance(path_or_file, zipfile.ZipFile):
        fp = path_or_file.fp
        if fp is None:
            raise InputError("zip archive is closed")
        pos = fp.tell()
        try:
            declared = _declared_entry_count(fp)
        finally:
            fp.seek(pos)
        if declared > max_entries:
            raise UnsafeInputError(f"zip archive declares {declared} entries; the limit is {max_entries}")
        return _check_infos(
            path_or_file, max_entries, max_total_bytes, max_entry_bytes, max_ratio, ratio_min_bytes
        )

    if isinstance(path_or_file, (str, os.PathLike)):
        with open(Path(path_or_file), "rb") as f:
            return check_zip(
                f,
                max_entries=max_entries,
                max_total_bytes=max_total_bytes,
                max_entry_bytes=max_entry_bytes,
                max_ratio=max_ratio,
                ratio_min_bytes=ratio_min_bytes,
            )

    fp = path_or_file
    start = fp.tell()
    declared = _declared_entry_count(fp)
    if declared > max_entries:
        raise UnsafeInputError(f"zip archive declares {declared} entries; the limit is {max_entries}")
    fp.seek(start)
    try:
        zf = zipfile.ZipFile(fp)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as exc:
        raise InputError(f"not a valid zip archive: {exc}") from None
    try:
        return _check_infos(zf, max_entries, max_total_bytes, max_entry_bytes, max_ratio, ratio_min_bytes)
    finally:
        fp.seek(start)


def _check_infos(
    zf: zipfile.ZipFile,
    max_entries: int,
    max_total_bytes: int,
    max_entry_bytes: int,
    max_ratio: float,
    ratio_min_bytes: int,
) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_entries:
        raise UnsafeInputError(f"zip archive has {len(infos)} entries; the limit is {max_entries}")
    seen: set[str] = set()
    total = 0
    for info in infos:
        name = info.filename
        check_entry_name(info.orig_filename)  # the name before zipfile truncates it at a NUL byte
        mode = (info.external_attr >> 16) & 0xFFFF
        if stat.S_ISLNK(mode):
            raise UnsafeInputError(f"unsafe zip entry {name!r}: symbolic link")
        if info.flag_bits & 0x1:
            raise UnsafeInputError(f"zip entry {name!r} is encrypted; encrypted archives are not accepted")
        if info.compress_type not in SUPPORTED_COMPRESSION:
            raise InputError(f"zip entry {name!r} uses unsupported compression method {info.compress_type}")
        key = normalize_entry_name(name)
        if info.is_dir():
            key += "/"
        if key in seen:
            raise UnsafeInputError(f"zip archive contains the entry {name!r} more than once")
        seen.add(key)
        if info.file_size < 0 or info.compress_size < 0:
            raise UnsafeInputError(f"zip entry {name!r} declares a negative size")
        if info.file_size > max_entry_bytes:
            raise UnsafeInputError(
                f"zip entry {name!r} declares {_fmt_bytes(info.file_size)} uncompressed; "
                f"the per-entry limit is {_fmt_bytes(max_entry_bytes)}"
            )
        if info.file_size >= ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > max_ratio:
                raise UnsafeInputError(
                    f"zip entry {name!r} has compression ratio {ratio:.0f}:1 (limit {max_ratio:.0f}:1); "
                    "refusing a possible zip bomb"
                )
        total += info.file_size
        if total > max_total_bytes:
            raise UnsafeInputError(
                f"zip archive declares more than {_fmt_bytes(max_total_bytes)} uncompressed in total "
                f"(limit reached at entry {name!r})"
            )
    _check_no_overlap(zf, infos)
    return infos


def _check_no_overlap(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo]) -> None:
    """Refuse entries whose data would overlap the next entry or the central directory (zip-bomb trick)."""
    ordered = sorted(infos, key=lambda i: i.header_offset)
    end_of_data = getattr(zf, "start_dir", None)
    for i, info in enumerate(ordered):
        if info.header_offset < 0:
            raise UnsafeInputError(f"zip entry {info.filename!r} has a negative offset")
        # Lower bound on where this entry ends: local header (30 bytes) + name + compressed data.
        min_end = info.header_offset + 30 + _raw_name_length(info) + info.compress_size
        limit = ordered[i + 1].header_offset if i + 1 < len(ordered) else end_of_data
        if limit is not None and min_end > limit:
            raise UnsafeInputError(
                f"zip entry {info.filename!r} overlaps the data that follows it; refusing a possible zip bomb"
            )


def read_entry(zf: zipfile.ZipFile, entry: str | zipfile.ZipInfo, *, max_bytes: int | None = None) -> bytes:
    """Read one entry, never more than its declared size + 1 bytes; refuse it if the declaration lies.

    ``max_bytes`` additionally caps the declared size. Corrupt data (CRC mismatch, bad deflate stream)
    raises :class:`InputError`.
    """
    try:
        info = entry if isinstance(entry, zipfile.ZipInfo) else zf.getinfo(entry)
    except KeyError:
        raise InputError(f"zip archive has no entry {entry!r}") from None
    if max_bytes is not None and info.file_size > max_bytes:
        raise UnsafeInputError(
            f"zip entry {info.filename!r} declares {_fmt_bytes(info.file_size)}; "
            f"the limit is {_fmt_bytes(max_bytes)}"
        )
    try:
        with zf.open(info) as f:
            data = f.read(info.file_size + 1)
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError) as exc:
        raise InputError(f"cannot read zip entry {info.filename!r}: {exc}") from None
    if len(data) != info.file_size:
        raise UnsafeInputError(
            f"zip entry {info.filename!r} declares {info.file_size} bytes but holds "
            f"{'more' if len(data) > info.file_size else len(data)}"
        )
    return data
