"""Free the max_parallel slots of workers that died (killed, out of memory, timed out).

gunicorn's master runs this in a child process when a worker exits (gunicorn.conf.py's
`child_exit`), so the master itself never imports the database or Redis drivers before the
gevent workers monkey-patch them:

    python -m app.storage.reaper --pid 1234     # the worker's pid, in this instance
    python -m app.storage.reaper --all          # every worker of this instance: none may be running

Slots name their worker "<instance id>:<pid>" (app/storage/limits.py): the instance id is kept
in SLUICE_DATA_DIR (or given as SLUICE_INSTANCE_ID), so a restarted container, with new pids in
a new pid namespace, still knows its own slots, and two hosts never take each other's.
`--all` is done once at start-up (app/storage/startup.py, from `on_starting`, before any worker
runs): after the whole gateway was killed (SIGKILL, out of memory, `docker stop` past its
timeout, a power cut) no master saw its workers go, and their slots would otherwise stay taken
until their requests' deadlines. While it is down, the other instances' workers free them
within seconds (app/storage/liveness.py), as no worker of it beats any more.
"""

from __future__ import annotations

import argparse
import sys

from app.storage.db import Database, StorageError
from app.storage.limiters import make_limiter
from app.storage.limits import InstanceIdError, Limiter, instance_prefix, worker_name


def limiter_for(database_url: str, redis_url: str | None) -> tuple[Limiter, Database]:
    """The limiter the workers use (limits.make_limiter), and its database."""
    db = Database(database_url)
    return make_limiter(db, redis_url), db


def main(argv: list[str] | None = None) -> None:
    from app.config import settings_or_exit

    parser = argparse.ArgumentParser(prog="python -m app.storage.reaper", description=__doc__.splitlines()[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--pid", type=int, help="the pid of the worker that exited (in this instance)")
    which.add_argument("--all", action="store_true", help="every worker of this instance (none may be running)")
    args = parser.parse_args(argv)
    settings = settings_or_exit()
    limiter, db = limiter_for(settings.database_url, settings.redis_url)
    try:
        if args.pid is not None:
            free(limiter, [worker_name(args.pid)])
        else:
            free_instance(limiter)
    except (StorageError, InstanceIdError) as exc:  # the slots still expire at their requests' deadlines
        sys.exit(f"sluice: could not free the slots of dead workers: {exc}")
    finally:
        db.dispose()


def free(limiter: Limiter, workers: list[str]) -> None:
    for worker in workers:
        freed = limiter.free_worker(worker)
        if freed:
            print(f"sluice: freed {freed} in-flight slot(s) of worker {worker}", file=sys.stderr)


def free_instance(limiter: Limiter) -> None:
    """Free every slot of this instance's workers, whatever their pids (StorageError if the store
    fails). Only while none of them runs: before gunicorn's master forks its first worker."""
    free(limiter, sorted(limiter.workers(instance_prefix())))


if __name__ == "__main__":
    main()
