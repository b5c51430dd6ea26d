"""SQLAlchemy engine and session factory, one per database URL, plus the Alembic upgrade entry point."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_factories: dict[str, sessionmaker[Session]] = {}


def migrations_dir() -> Path:
    """The Alembic scripts: ``app/migrations`` in an installed wheel (setup.py maps the repository's top-level
    ``alembic/`` folder there), else ``alembic/`` next to ``app/`` in a source checkout (editable install)."""
    app_dir = Path(__file__).resolve().parents[1]
    for candidate in (app_dir / "migrations", app_dir.parent / "alembic"):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise FileNotFoundError(f"simprune's database migrations are missing: neither {app_dir / 'migrations'} nor "
                            f"{app_dir.parent / 'alembic'} holds env.py and versions/")


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def ensure_sqlite_dir(url: str) -> None:
    """Create the parent directory of a SQLite database file (no-op for other databases)."""
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)


def get_engine(url: str) -> Engine:
    """The engine for ``url`` (created once per process; SQLite gets WAL mode and a busy timeout)."""
    with _lock:
        eng = _engines.get(url)
        if eng is None:
            if url.startswith("sqlite"):
                ensure_sqlite_dir(url)
                eng = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                                    pool_size=10, max_overflow=40, pool_timeout=60)
                event.listen(eng, "connect", _sqlite_pragmas)
            else:
                eng = create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=40, pool_timeout=60)
            _engines[url] = eng
            _factories[url] = sessionmaker(eng, expire_on_commit=False)
        return eng


def session_factory(url: str) -> sessionmaker[Session]:
    """The session factory bound to ``url``'s engine."""
    get_engine(url)
    return _factories[url]


@contextmanager
def session_scope(url: str) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = session_factory(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engine(url: str) -> None:
    """Close and forget the engine for ``url`` (tests dropping their database call this first)."""
    with _lock:
        eng = _engines.pop(url, None)
        _factories.pop(url, None)
    if eng is not None:
        eng.dispose()


def alembic_config(url: str) -> Any:
    """An Alembic ``Config`` for simprune's migrations on ``url`` (for ``alembic.command.*``)."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.attributes["database_url"] = url
    return cfg


def upgrade_database(url: str, revision: str = "head") -> None:
    """Run the Alembic migrations on ``url`` up to ``revision`` (what ``simprune db upgrade`` does)."""
    from alembic import command

    ensure_sqlite_dir(url)
    command.upgrade(alembic_config(url), revision)
