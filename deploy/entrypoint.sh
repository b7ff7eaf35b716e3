#!/usr/bin/env sh
# Container entrypoint (also run directly by the tests): starts gunicorn with
# gunicorn.conf.py. With no config file (neither SLUICE_CONFIG nor ./sluice.toml)
# the gateway uses its built-in demo config, so the bundled mock upstream is
# started next to it and `docker run` shows a working stream with no account.
set -eu
cd "$(dirname "$0")/.."

if [ -z "${SLUICE_CONFIG:-}" ] && [ ! -f sluice.toml ]; then
    echo "sluice: no config file given; starting the bundled mock upstream for the demo config" >&2
    python -m app.mock_upstream --host 127.0.0.1 --port "${SLUICE_DEMO_MOCK_PORT:-9100}" &
fi
exec gunicorn -c gunicorn.conf.py wsgi:app
