"""Free the max_parallel slots of a worker that died (killed, out of memory, timed out).

gunicorn's master runs this in a child process when a worker exits (gunicorn.conf.py's
`child_exit`), so the master itself never imports the database or Redis drivers before the
gevent workers monkey-patch them:

    python -m app.storage.reaper --pid 1234     # the worker's pid, on this host
    python -m app.storage.reaper --dead         # every worker of this host that is not running

`--dead` is also done once at start-up (app/storage/startup.py, from `on_starting`): after the whole gateway was
killed (SIGKILL, out of memory, a power cut) no master saw its workers go, and their slots would
otherwise stay taken until their requests' deadlines.
"""

from __future__ import annotations

import argparse
import os
import sys

from app.storage.db import Database, StorageError
from app.storage.limits import Limiter, SqlLimiter, local_pid, worker_name


def limiter_for(database_url: str, redis_url: str | None) -> tuple[Limiter, Database]:
    """The limiter the workers use (the same choice as app.build_gateway), and its database."""
    db = Database(database_url)
    if redis_url:
        from app.storage.redis_limits import RedisLimiter  # lazy: only with SLUICE_REDIS_URL

        return RedisLimiter(redis_url, db), db
    return SqlLimiter(db), db


def main(argv: list[str] | None = None) -> None:
    from app.config import settings_or_exit

    parser = argparse.ArgumentParser(prog="python -m app.storage.reaper", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="the pid of the worker that exited (on this host)")
    which.add_argument("--dead", action="store_true", help="every worker of this host that is not running")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    limiter, db = limiter_for(settings.database_url, settings.redis_url)
    try:
        if args.pid is not None:
            free(limiter, [worker_name(args.pid)])
        else:
            free_dead(limiter)
    except StorageError as exc:  # the slots still expire at their requests' deadlines
        sys.exit(f"sluice: could not free the slots of dead workers: {exc}")
    finally:
        db.dispose()


def free(limiter: Limiter, workers: list[str]) -> None:
    for worker in workers:
        freed = limiter.free_worker(worker)
        if freed:
            print(f"sluice: freed {freed} in-flight slot(s) of worker {worker}", file=sys.stderr)


def free_dead(limiter: Limiter) -> None:
    """Free the slots of this host's workers that are no longer running (StorageError if the store fails)."""
    free(limiter, dead_workers(limiter))


def dead_workers(limiter: Limiter) -> list[str]:
    """Workers of this host (and pid namespace) holding slots whose process is gone."""
    prefix = worker_name(0).removesuffix("0")
    return sorted(w for w in limiter.workers(prefix) if (pid := local_pid(w)) is not None and not running(pid))


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


if __name__ == "__main__":
    main()
