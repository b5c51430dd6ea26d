"""Opaque keyset cursors over ``(created_at DESC, id DESC)``: stable under inserts, O(page) per request."""

from __future__ import annotations

import base64
import json
from datetime import datetime
from typing import Any

from sqlalchemy import Select, and_, or_

from app.api.problems import Problem


def encode_cursor(created_at: datetime, row_id: str) -> str:
    """The cursor pointing just after the row (``created_at``, ``row_id``)."""
    raw = json.dumps([created_at.isoformat(), row_id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


MAX_CURSOR_CHARS = 256
"""Cursors this API writes are about 100 characters; anything much longer is not one of them."""


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """Inverse of :func:`encode_cursor`; a 400 problem for anything malformed (too long, not base64, not a
    ``[timestamp, id]`` pair; never parsed deeper than that)."""
    try:
        if len(cursor) > MAX_CURSOR_CHARS:
            raise ValueError("too long")
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        pair = json.loads(raw)
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(x, str) for x in pair)):
            raise ValueError("not a cursor")
        return datetime.fromisoformat(pair[0]), pair[1][:64]
    except (ValueError, TypeError, RecursionError):
        raise Problem(400, "invalid cursor", "invalid-cursor") from None


def paginate(stmt: Select[Any], model: Any, cursor: str | None, limit: int) -> Select[Any]:
    """Apply ordering, the cursor condition and ``limit + 1`` (the extra row tells whether more exist)."""
    if cursor:
        ts, row_id = decode_cursor(cursor)
        stmt = stmt.where(or_(model.created_at < ts, and_(model.created_at == ts, model.id < row_id)))
    return stmt.order_by(model.created_at.desc(), model.id.desc()).limit(limit + 1)


def page_rows(rows: list[Any], limit: int) -> tuple[list[Any], str | None]:
    """(rows of this page, next cursor or None)."""
    if len(rows) > limit:
        rows = rows[:limit]
        return rows, encode_cursor(rows[-1].created_at, rows[-1].id)
    return rows, None
