"""Structured logging: one JSON object per line, carrying the id of the job being run (``job_id``).

The worker sets :data:`current_job` around each job, so every log line it writes (its own, Celery's, the
engine's) names the job. ``configure_logging("json")`` installs the formatter on the root logger.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
from datetime import datetime, timezone

current_job: contextvars.ContextVar[str | None] = contextvars.ContextVar("simprune_job_id", default=None)
_STD = frozenset(vars(logging.makeLogRecord({})).keys()) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """``{"ts", "level", "logger", "message", "job_id", ...extra}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        job = getattr(record, "job_id", None) or current_job.get()
        if job:
            out["job_id"] = job
        for key, value in vars(record).items():
            if key not in _STD and key not in out:
                out[key] = value if isinstance(value, (str, int, float, bool, type(None))) else repr(value)
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """Plain text with ``[job_...]`` when a job is running."""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        job = current_job.get()
        return f"[{job}] {line}" if job else line


def configure_logging(fmt: str = "json", level: str | int = "INFO") -> None:
    """Send every log record to stderr as JSON (``fmt="json"``) or text, replacing existing root handlers."""
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level if isinstance(level, int) else level.upper())
