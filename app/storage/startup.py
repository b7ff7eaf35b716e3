"""What gunicorn's master runs once before forking, in a child process (so the master itself
never imports the database or Redis drivers before the gevent workers monkey-patch them):

    python -m app.storage.startup

1. migrate the schema (app/storage/migrate.py), under its lock;
2. read (or make) this instance's id (app/storage/limits.py: SLUICE_INSTANCE_ID, else
   `<SLUICE_DATA_DIR>/instance-id`), which the workers then find as it is; a start-up that
   cannot keep it stops here, rather than workers that fail their first max_parallel request;
3. free every max_parallel slot of this instance: none of its workers runs yet, so any slot
   named after it was left by an earlier run killed whole (no master saw its workers go, so no
   `child_exit` freed them; app/storage/reaper.py).
A failure of step 3 is reported and start-up goes on: those slots expire on their own.

Only this step frees a whole instance: apps built by the Flask CLI or by tests never do.
"""

from __future__ import annotations

import sys

from app.storage.db import StorageError
from app.storage.limits import InstanceIdError, this_instance


def main() -> None:
    from app.config import settings_or_exit
    from app.storage.migrate import upgrade
    from app.storage.reaper import free_instance, limiter_for

    settings = settings_or_exit()
    limiter, db = limiter_for(settings.database_url, settings.redis_url)
    try:
        upgrade(db)
        try:
            this_instance()
        except InstanceIdError as exc:
            sys.exit(f"sluice: configuration error: {exc}")
        try:
            free_instance(limiter)
        except StorageError as exc:
            print(
                f"sluice: could not free this instance's old slots (they expire on their own): {exc}", file=sys.stderr
            )
    finally:
        db.dispose()


if __name__ == "__main__":
    main()
