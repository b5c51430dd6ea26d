"""Load model weights from untrusted files without executing code; save them as safetensors.

Accepted: ``.safetensors`` and ``torch.save`` checkpoints (the zip format, and the legacy pickle format,
which ``torch.load(weights_only=True)`` also reads safely). Formats are recognised by their content, not
their file name. Refused: TorchScript archives and ``torch.export`` (``.pt2``) archives, which carry
programs, and pickles of anything other than tensors and plain containers.

Example::

    sd = load_state_dict("resnet56.th")          # {'conv1.weight': tensor, ...}
    save_state_dict(sd, "resnet56.safetensors")
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import struct
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import torch

from simprune.archive import (
    CHECKPOINT_MAX_ENTRIES,
    CHECKPOINT_MAX_ENTRY_BYTES,
    CHECKPOINT_MAX_RATIO,
    CHECKPOINT_MAX_TOTAL_BYTES,
    check_zip,
)
from simprune.errors import InputError, UnsafeInputError

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "module")
"""Keys under which training scripts commonly nest the state_dict, tried in this order."""

MAX_WRAPPER_DEPTH = 2
"""How many wrappers are peeled off (``{'model': {'state_dict': ...}}`` is two)."""

STRIP_PREFIXES = ("module.", "_orig_mod.")
"""Prefixes added by DataParallel/DistributedDataParallel and torch.compile."""

EXPECTED = (
    "expected a state_dict (mapping of parameter names to tensors), optionally wrapped in "
    "{'state_dict': ...}, {'model_state_dict': ...}, {'model': ...}, {'net': ...} or {'module': ...}; "
    "save one with torch.save(model.state_dict(), path) or safetensors"
)

FORMAT_SAFETENSORS = "safetensors"
FORMAT_TORCH_ZIP = "torch-zip"
FORMAT_TORCH_LEGACY = "torch-legacy"
FORMAT_TORCHSCRIPT = "torchscript"
FORMAT_TORCH_EXPORT = "torch-export"
FORMAT_UNKNOWN = "unknown"
FORMAT_ONNX = "onnx"
"""An ONNX model (``.onnx``): not a weights file; :mod:`simprune.onnx_import` checks and converts it."""

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_UNSAFE_PICKLE_RE = re.compile(
    r"GLOBAL|allowlist|add_safe_globals|is blocked|Can only (build|create)|persistent|reduce", re.IGNORECASE
)
_GLOBAL_RE = re.compile(r"GLOBAL (\S+)")


def _sniff(f: BinaryIO, name: str) -> str:
    """Format of the open file ``f`` from its first bytes (and, for zips, its entry names).

    Zip archives pass :func:`simprune.archive.check_zip` first (raises for unsafe or unreadable zips).
    """
    f.seek(0, os.SEEK_END)
    size = f.tell()
    f.seek(0)
    head = f.read(16)
    f.seek(0)
    if head[:4] in _ZIP_MAGIC:
        try:
            return _zip_kind(f)
        except UnsafeInputError as exc:
            raise UnsafeInputError(f"{name}: {exc}") from None
        except InputError as exc:
            raise InputError(f"{name} is corrupt or truncated: {exc}") from None
        finally:
            f.seek(0)
    if len(head) >= 9:
        (header_len,) = struct.unpack("<Q", head[:8])
        if 0 < header_len and 8 + header_len <= size and head[8:9] == b"{":
            return FORMAT_SAFETENSORS
    if len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5:
        return FORMAT_TORCH_LEGACY
    return FORMAT_UNKNOWN


def _zip_kind(f: BinaryIO) -> str:
    infos = check_zip(
        f,
        max_entries=CHECKPOINT_MAX_ENTRIES,
        max_total_bytes=CHECKPOINT_MAX_TOTAL_BYTES,
        max_entry_bytes=CHECKPOINT_MAX_ENTRY_BYTES,
        max_ratio=CHECKPOINT_MAX_RATIO,
    )
    return _zip_kind_from_names([i.filename for i in infos])


def _zip_kind_from_names(names: list[str]) -> str:
    tails = {n.split("/", 1)[1] if "/" in n else n for n in names}
    if "constants.pkl" in tails or any(t.startswith("code/") for t in tails):
        return FORMAT_TORCHSCRIPT
    if "archive_format" in tails or any(t.startswith("models/") for t in tails):
        return FORMAT_TORCH_EXPORT
    if "data.pkl" in tails:
        return FORMAT_TORCH_ZIP
    return FORMAT_UNKNOWN


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """``{'sha256', 'size', 'format'}`` for a checkpoint file, without loading it.

    ``format`` is one of safetensors, torch-zip, torch-legacy, torchscript, torch-export, onnx, unknown.
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    try:
        if p.suffix.lower() == ".pt2":
            fmt = FORMAT_TORCH_EXPORT
        elif p.suffix.lower() == ".onnx":
            fmt = FORMAT_ONNX
        else:
            with open(p, "rb") as f:
                fmt = _sniff(f, p.name)
    except InputError:
        fmt = FORMAT_UNKNOWN
    return {"sha256": h.hexdigest(), "size": p.stat().st_size, "format": fmt}


def load_state_dict(
    path: str | Path, *, max_bytes: int = CHECKPOINT_MAX_TOTAL_BYTES
) -> dict[str, torch.Tensor]:
    """Load a state_dict (parameter name -> tensor, on CPU) from an untrusted checkpoint file.

    Common wrappers are peeled off (see :data:`WRAPPER_KEYS`), ``module.`` and ``_orig_mod.`` prefixes
    stripped and non-tensor values dropped.

    Raises :class:`UnsafeInputError` for TorchScript/torch.export archives, pickles of arbitrary objects
    and zip archives failing :func:`simprune.archive.check_zip`; :class:`InputError` for anything else
    that is not a readable state_dict (truncated, corrupt, wrong structure).
    """
    p = Path(path)
    if not p.is_file():
        raise InputError(f"checkpoint not found: {p}")
    size = p.stat().st_size
    if size == 0:
        raise InputError(f"checkpoint {p.name} is empty")
    if size > max_bytes:
        raise UnsafeInputError(f"checkpoint {p.name} is {size} bytes; the limit is {max_bytes}")
    if p.suffix.lower() == ".pt2":
        raise UnsafeInputError(_program_message(FORMAT_TORCH_EXPORT))

    # One open file for checking and loading, so what was checked is what gets loaded.
    with open(p, "rb") as f:
        fmt = _sniff(f, p.name)  # zip archives are checked with simprune.archive.check_zip here
        if fmt in (FORMAT_TORCHSCRIPT, FORMAT_TORCH_EXPORT):
            raise UnsafeInputError(_program_message(fmt))
        if fmt in (FORMAT_TORCH_ZIP, FORMAT_TORCH_LEGACY):
            obj: Any = _torch_load(f, p.name)
    if fmt == FORMAT_SAFETENSORS:
        obj = _load_safetensors(p)
    elif p.suffix.lower() == ".onnx":
        raise InputError(f"{p.name} is an ONNX model, not a weights file: give it without an architecture "
                         "(CLI: simprune prune --weights model.onnx, no --arch; API: upload it with no 'arch')")
    elif fmt not in (FORMAT_TORCH_ZIP, FORMAT_TORCH_LEGACY):
        raise InputError(
            f"{p.name} is not a recognised checkpoint (neither safetensors nor a torch.save file); {EXPECTED}"
        )
    return _to_state_dict(obj, p.name)


def _program_message(fmt: str) -> str:
    what = "a TorchScript archive" if fmt == FORMAT_TORCHSCRIPT else "a torch.export (.pt2) archive"
    return (
        f"refused: the file is {what}, which contains a program; only weights are accepted "
        "(torch.save(model.state_dict(), path) or a .safetensors file)"
    )


def _load_safetensors(p: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(p), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise InputError(f"{p.name} is not a valid safetensors file: {exc}") from None


def _is_raw_pickle_opcode(msg: str) -> bool:
    """Whether torch's weights-only unpickler stopped at a real pickle opcode it does not support (a raw
    ``pickle.dumps`` file, e.g. protocol 4's FRAME) rather than at garbage bytes."""
    import pickletools
    import re

    found = re.search(r"Unsupported operand (\d+)", msg)
    return bool(found) and chr(int(found.group(1))) in {op.code for op in pickletools.opcodes}


def _torch_load(f: BinaryIO, name: str) -> Any:
    # A file object, not a path: torch.load would hand paths ending in .safetensors to safetensors.
    try:
        f.seek(0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if _UNSAFE_PICKLE_RE.search(msg):
            found = _GLOBAL_RE.search(msg)
            detail = f" (it references {found.group(1)})" if found else ""
            raise UnsafeInputError(
                "refused: the file contains pickled objects other than tensors; only weights are accepted"
                f"{detail}. Re-save with torch.save(model.state_dict(), path) or as safetensors."
            ) from None
        if _is_raw_pickle_opcode(msg):  # a raw pickle (protocol >= 4 opcodes), not a torch.save file
            f.seek(0)
            head = f.read(2)
            proto = f" (protocol {head[1]})" if len(head) == 2 and head[0] == 0x80 else ""
            raise UnsafeInputError(
                f"refused: {name} is a raw pickle{proto}, not a torch.save checkpoint; unpickling arbitrary data "
                "can execute code, so it is not loaded. Save torch.save(model.state_dict(), path) or .safetensors."
            ) from None
        raise InputError(f"{name} is corrupt or truncated: cannot unpickle it") from None
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        TypeError,
        AttributeError,
        KeyError,
        IndexError,
        struct.error,
        UnicodeDecodeError,
        MemoryError,
    ) as exc:
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise InputError(f"{name} is corrupt or truncated, or not a torch.save checkpoint: {first}") from None


def _to_state_dict(obj: Any, name: str) -> dict[str, torch.Tensor]:
    for _ in range(MAX_WRAPPER_DEPTH):
        if not isinstance(obj, Mapping):
            break
        for key in WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
        else:
            break
    if not isinstance(obj, Mapping):
        raise InputError(f"{name} holds a {type(obj).__name__}; {EXPECTED}")
    sd: dict[str, torch.Tensor] = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            continue
        if not isinstance(key, str):
            raise InputError(f"{name}: state_dict key {key!r} is not a string; {EXPECTED}")
        sd[key] = value.detach() if isinstance(value, torch.nn.Parameter) else value
    if not sd:
        raise InputError(f"{name} contains no tensors; {EXPECTED}")
    return _strip_prefixes(sd)


def _strip_prefixes(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Drop torch.compile's ``_orig_mod.`` components and DataParallel's ``module.`` prefix (on all keys)."""
    out = {(k.replace("._orig_mod.", ".")): v for k, v in sd.items()}
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) and len(k) > len(prefix) for k in out):
                out = {k[len(prefix) :]: v for k, v in out.items()}
                changed = True
    if len(out) != len(sd):
        raise InputError("state_dict keys collide after stripping 'module.'/'_orig_mod.' prefixes")
    return out


def save_state_dict(
    sd: Mapping[str, torch.Tensor], path: str | Path, metadata: Mapping[str, str] | None = None
) -> Path:
    """Write ``sd`` to ``path`` as safetensors (CPU, contiguous; tensors sharing storage are cloned).

    The file is written to a temporary name and renamed, so readers never see a partial file.
    """
    from safetensors.torch import save_file

    p = Path(path)
    seen: set[tuple[str, int]] = set()
    tensors: dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if not isinstance(value, torch.Tensor):
            raise InputError(f"state_dict value for {key!r} is a {type(value).__name__}, not a tensor")
        t = value.detach().to("cpu")
        storage_key = (str(t.device), t.untyped_storage().data_ptr())
        if t.numel() and storage_key[1] != 0:
            if storage_key in seen:
                t = t.clone()
            seen.add((str(t.device), t.untyped_storage().data_ptr()))
        tensors[key] = t.contiguous()
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=dict(metadata) if metadata else None)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p
