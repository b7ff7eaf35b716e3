"""Schema migrations (Alembic), run once at start-up under a lock so workers never race.

python -m app.storage.migrate          # what gunicorn's master runs before forking
flask --app wsgi db upgrade            # the same, by hand
"""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Connection

from app.storage.db import Database

MIGRATIONS = Path(__file__).parent / "migrations"
_PG_LOCK_ID = 727_100  # arbitrary, constant: the advisory lock that serialises migrations


def upgrade(db: Database, revision: str = "head") -> None:
    """Bring the schema to `revision`; concurrent callers wait for each other."""
    with _migration_lock(db) as conn:
        cfg = AlembicConfig()
        cfg.set_main_option("script_location", str(MIGRATIONS))
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)
        conn.commit()


@contextmanager
def _migration_lock(db: Database) -> Iterator[Connection]:
    if db.is_sqlite:
        path = db.url.removeprefix("sqlite:///") or "sluice.db"
        with open(f"{path}.migrate-lock", "w") as lock_file:
            fcntl.flock(lock_file, fcntl.LOCK_EX)
            with db.engine.connect() as conn:
                yield conn
        return
    with db.engine.connect() as conn:
        conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_LOCK_ID})")
        conn.commit()
        try:
            yield conn
        finally:
            conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_LOCK_ID})")
            conn.commit()


def main() -> None:
    from app.config import settings_or_exit

    settings = settings_or_exit()
    db = Database(settings.database_url)
    upgrade(db)
    db.dispose()


if __name__ == "__main__":
    main()
