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


def _check_request(request: Request, file_limits: dict[str, int], max_field_bytes: int) -> bytes:
    """The multipart boundary of ``request``: 415 for another content type, 413 when the declared
    Content-Length already exceeds every limit together (files plus ``MAX_FIELDS`` text fields)."""
    ctype, params = parse_options_header(request.headers.get("content-type", ""))
    if ctype != b"multipart/form-data" or b"boundary" not in params:
        raise Problem(415, "expected a multipart/form-data body", "unsupported-media-type")
    max_total = sum(file_limits.values()) + MAX_FIELDS * max_field_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_total:
        raise Problem(413, f"request body of {int(declared)} bytes exceeds the limit of {max_total} bytes",
                      "upload-too-large", limit=max_total)
    return params[b"boundary"]


class _FormReader:
    """The parser callbacks: collect the part headers, stream a file part to its temp file (hashing it and
    enforcing its limit), buffer a text field (enforcing ``max_field_bytes``)."""

    def __init__(self, tmp_dir: Path, file_limits: dict[str, int], max_field_bytes: int) -> None:
        self.tmp_dir, self.file_limits, self.max_field_bytes = tmp_dir, file_limits, max_field_bytes
        self.form = ParsedForm()
        self.headers: dict[str, bytes] = {}
        self.hname, self.hval = b"", b""
        self.cur: dict[str, Any] = {}  # the part being read: name, and file/fh/hash/limit or buf

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self.on_part_begin,
            "on_part_data": self.on_part_data,
            "on_part_end": self.on_part_end,
            "on_header_field": self.on_header_field,
            "on_header_value": self.on_header_value,
            "on_header_end": self.on_header_end,
            "on_headers_finished": self.on_headers_finished,
        }

    @property
    def in_file(self) -> bool:
        """Whether a file part is open (at the end of the body: it was truncated)."""
        return "fh" in self.cur

    def on_part_begin(self) -> None:
        self.headers = {}
        self.cur.clear()

    def on_header_field(self, data: bytes, start: int, end: int) -> None:
        self.hname += data[start:end]

    def on_header_value(self, data: bytes, start: int, end: int) -> None:
        self.hval += data[start:end]

    def on_header_end(self) -> None:
        self.headers[self.hname.decode("latin-1").lower()] = self.hval
        self.hname, self.hval = b"", b""

    def on_headers_finished(self) -> None:
        disp, opts = parse_options_header(self.headers.get("content-disposition", b""))
        name = opts.get(b"name", b"").decode("utf-8", "replace")
        if disp != b"form-data" or not name:
            raise Problem(400, "multipart part without a form-data name", "bad-multipart")
        if len(self.form.fields) + len(self.form.files) >= MAX_FIELDS:
            raise Problem(413, "too many form fields", "upload-too-large")
        self.cur["name"] = name
        if b"filename" in opts:
            self._open_file(name, opts[b"filename"].decode("utf-8", "replace"))
        else:
            self.cur["buf"] = bytearray()

    def _open_file(self, name: str, client_filename: str) -> None:
        if name not in self.file_limits:
            raise Problem(422, f"unexpected file field '{name}'; expected one of {sorted(self.file_limits)}",
                          "validation-error")
        if name in self.form.files:
            raise Problem(422, f"file field '{name}' given twice", "validation-error")
        filename = safe_filename(client_filename, name)
        path = self.tmp_dir / f"upload-{secrets.token_hex(8)}{safe_suffix(filename)}"
        up = UploadedFile(field=name, filename=filename, path=path)
        self.form.files[name] = up
        self.cur["file"] = up
        self.cur["fh"] = open(path, "wb")  # noqa: SIM115  (closed in on_part_end / close)
        self.cur["hash"] = hashlib.sha256()
        self.cur["limit"] = self.file_limits[name]

    def on_part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        cur = self.cur
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
            if len(cur["buf"]) > self.max_field_bytes:
                raise Problem(413, f"form field '{cur['name']}' exceeds {self.max_field_bytes} bytes",
                              "upload-too-large")

    def on_part_end(self) -> None:
        cur = self.cur
        if "fh" in cur:
            fh: IO[bytes] = cur.pop("fh")
            fh.close()
            cur["file"].sha256 = cur["hash"].hexdigest()
        elif "buf" in cur:
            self.form.fields[cur["name"]] = bytes(cur.pop("buf")).decode("utf-8", "replace")

    def discard(self) -> None:
        """Close the open file part, if any, and delete every temp file."""
        fh = self.cur.pop("fh", None)
        if fh is not None:
            fh.close()
        self.form.cleanup()


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
    boundary = _check_request(request, file_limits, max_field_bytes)
    tmp_dir.mkdir(parents=True, exist_ok=True)
    reader = _FormReader(tmp_dir, file_limits, max_field_bytes)
    parser = MultipartParser(boundary, reader.callbacks())
    try:
        async for chunk in request.stream():
            if chunk:
                parser.write(chunk)
        parser.finalize()
        if reader.in_file:
            raise Problem(400, "truncated multipart body", "bad-multipart")
    except MultipartParseError as exc:
        reader.discard()
        raise Problem(400, f"malformed multipart body: {exc}", "bad-multipart") from None
    except BaseException:
        reader.discard()
        raise
    return reader.form
