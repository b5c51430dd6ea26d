"""Streaming multipart parsing: file parts go straight to a temp file in chunks, hashed on the way, and the
size limit is enforced while streaming (413 as soon as it is exceeded; the body is never buffered whole)."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from fastapi import Request
from python_multipart import MultipartParser
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import parse_options_header

from app.api.problems import Problem

_SAFE_SUFFIX = re.compile(r"^\.[A-Za-z0-9]{1,16}$")
MAX_FIELDS = 64


@dataclass
class UploadedFile:
    """One file part, already on disk under the temp directory."""

    field: str
    filename: str
    path: Path
    size: int = 0
    sha256: str = ""


@dataclass
class ParsedForm:
    """Text fields and file parts of a multipart body. Call :meth:`cleanup` when done (idempotent)."""

    fields: dict[str, str] = field(default_factory=dict)
    files: dict[str, UploadedFile] = field(default_factory=dict)

    def cleanup(self) -> None:
        """Delete every temp file still present."""
        for f in self.files.values():
            f.path.unlink(missing_ok=True)


def safe_filename(name: str | None, default: str) -> str:
    """The last path component of a client-supplied name, reduced to a harmless character set."""
    base = re.split(r"[\\/]", name or "")[-1]
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".")[:200]
    return base or default


def safe_suffix(filename: str) -> str:
    """The file's extension (``.safetensors``, ``.pt``, ``.zip``, ...) or ``""`` if it looks odd."""
    suffix = Path(filename).suffix.lower()
    return suffix if _SAFE_SUFFIX.match(suffix) else ""


async def parse_multipart(
    request: Request,
    tmp_dir: Path,
    file_limits: dict[str, int],
    max_field_bytes: int,
) -> ParsedForm:
    """Parse ``request``'s multipart body. ``file_limits`` maps each accepted file field to its byte limit.

    Raises a 413 problem as soon as a file (or the declared Content-Length) exceeds its limit, 400/422 for
    malformed bodies or unexpected file fields. On error every temp file is deleted before raising.
    """
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(415, "expected a multipart/form-data body", "unsupported-media-type")
    overhead = MAX_FIELDS * max_field_bytes
    max_total = sum(file_limits.values()) + overhead
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_total:
        raise Problem(413, f"request body of {int(declared)} bytes exceeds the limit of {max_total} bytes",
                      "upload-too-large", limit=max_total)

    tmp_dir.mkdir(parents=True, exist_ok=True)
    form = ParsedForm()
    state: dict[str, Any] = {"headers": {}, "hname": b"", "hval": b""}
    cur: dict[str, Any] = {}

    def on_part_begin() -> None:
        state["headers"] = {}
        cur.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["hname"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["hval"] += data[start:end]

    def on_header_end() -> None:
        state["headers"][state["hname"].decode("latin-1").lower()] = state["hval"]
        state["hname"], state["hval"] = b"", b""

    def on_headers_finished() -> None:
        disp, opts = parse_options_header(state["headers"].get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if disp != b"form-data" or not name:
            raise Problem(400, "multipart part without a form-data name", "bad-multipart")
        if len(form.fields) + len(form.files) >= MAX_FIELDS:
            raise Problem(413, "too many form fields", "upload-too-large")
        cur["name"] = name
        if b"filename" in opts:
            if name not in file_limits:
                raise Problem(422, f"unexpected file field '{name}'; expected one of {sorted(file_limits)}",
                              "validation-error")
            if name in form.files:
                raise Problem(422, f"file field '{name}' given twice", "validation-error")
            filename = safe_filename(opts[b"filename"].decode("utf-8", "replace"), name)
            path = tmp_dir / f"upload-{secrets.token_hex(8)}{safe_suffix(filename)}"
            up = UploadedFile(field=name, filename=filename, path=path)
            form.files[name] = up
            cur["file"] = up
            cur["fh"] = open(path, "wb")  # noqa: SIM115  (closed in on_part_end / cleanup)
            cur["hash"] = hashlib.sha256()
            cur["limit"] = file_limits[name]
        else:
            cur["buf"] = bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if "fh" in cur:
            up: UploadedFile = cur["file"]
            up.size += len(chunk)
            if up.size > cur["limit"]:
                raise Problem(413, f"file '{up.field}' exceeds the limit of {cur['limit']} bytes",
                              "upload-too-large", limit=cur["limit"])
            cur["hash"].update(chunk)
            cur["fh"].write(chunk)
        else:
            cur["buf"] += chunk
            if len(cur["buf"]) > max_field_bytes:
                raise Problem(413, f"form field '{cur['name']}' exceeds {max_field_bytes} bytes",
                              "upload-too-large")

    def on_part_end() -> None:
        if "fh" in cur:
            fh: IO[bytes] = cur.pop("fh")
            fh.close()
            cur["file"].sha256 = cur["hash"].hexdigest()
        elif "buf" in cur:
            form.fields[cur["name"]] = bytes(cur.pop("buf")).decode("utf-8", "replace")

    parser = MultipartParser(
        params[b"boundary"],
        {
            "on_part_begin": on_part_begin,
            "on_part_data": on_part_data,
            "on_part_end": on_part_end,
            "on_header_field": on_header_field,
            "on_header_value": on_header_value,
            "on_header_end": on_header_end,
            "on_headers_finished": on_headers_finished,
        },
    )
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if "fh" in cur:
            raise Problem(400, "truncated multipart body", "bad-multipart")
    except MultipartParseError as exc:
        _close(cur)
        form.cleanup()
        raise Problem(400, f"malformed multipart body: {exc}", "bad-multipart") from None
    except BaseException:
        _close(cur)
        form.cleanup()
        raise
    return form


def _close(cur: dict[str, Any]) -> None:
    fh = cur.pop("fh", None)
    if fh is not None:
        fh.close()
