"""Free the max_parallel slots of a worker that died (killed, out of memory, timed out).

gunicorn's master runs this in a child process when a worker exits (gunicorn.conf.py's
`child_exit`), so the master itself never imports the database or Redis drivers before the
gevent workers monkey-patch them:

    python -m app.storage.reaper --pid 1234     # the worker's pid, on this host
"""

from __future__ import annotations

import argparse
import sys

from app.storage.db import Database, StorageError
from app.storage.limits import Limiter, SqlLimiter, worker_name


def limiter_for(database_url: str, redis_url: str | None) -> tuple[Limiter, Database]:
    """The limiter the workers use (the same choice as app.build_gateway), and its database."""
    db = Database(database_url)
    if redis_url:
        from app.storage.redis_limits import RedisLimiter  # lazy: only with SLUICE_REDIS_URL

        return RedisLimiter(redis_url, db), db
    return SqlLimiter(db), db


def main(argv: list[str] | None = None) -> None:
    from app.config import ConfigError, load_settings

    parser = argparse.ArgumentParser(prog="python -m app.storage.reaper", description=__doc__.splitlines()[0])
    parser.add_argument("--pid", type=int, required=True, help="the pid of the worker that exited (on this host)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        sys.exit(f"sluice: configuration error: {exc}")
    worker = worker_name(args.pid)
    limiter, db = limiter_for(settings.database_url, settings.redis_url)
    try:
        freed = limiter.free_worker(worker)
    except StorageError as exc:  # the slots still expire at their requests' deadlines
        sys.exit(f"sluice: could not free the slots of worker {worker}: {exc}")
    finally:
        db.dispose()
    if freed:
        print(f"sluice: freed {freed} in-flight slot(s) of worker {worker}", file=sys.stderr)


if __name__ == "__main__":
    main()
