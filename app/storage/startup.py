"""What gunicorn's master runs once before forking, in a child process (so the master itself
never imports the database or Redis drivers before the gevent workers monkey-patch them):

    python -m app.storage.startup

1. migrate the schema (app/storage/migrate.py), under its lock;
2. free the max_parallel slots of this host's workers from an earlier run that was killed
   whole (no master saw them go, so no `child_exit` freed them; app/storage/reaper.py).
A failure of step 2 is reported and start-up goes on: those slots expire on their own.
"""

from __future__ import annotations

import sys

from app.storage.db import StorageError


def main() -> None:
    from app.config import settings_or_exit
    from app.storage.migrate import upgrade
    from app.storage.reaper import free_dead, limiter_for

    settings = settings_or_exit()
    limiter, db = limiter_for(settings.database_url, settings.redis_url)
    try:
        upgrade(db)
        try:
            free_dead(limiter)
        except StorageError as exc:
            print(
                f"sluice: could not free the slots of dead workers (they expire on their own): {exc}", file=sys.stderr
            )
    finally:
        db.dispose()


if __name__ == "__main__":
    main()
