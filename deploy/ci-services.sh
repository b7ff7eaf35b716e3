#!/usr/bin/env bash
# Start the local PostgreSQL and Redis that the test suite uses (CI and developers).
# Prints the environment variables the tests read; `eval "$(deploy/ci-services.sh)"`.
set -euo pipefail

pg_version=$(ls /usr/lib/postgresql | sort -n | tail -1)
if ! pg_lsclusters -h | grep -q online; then
    pg_ctlcluster "$pg_version" main start >&2 || {
        pg_createcluster "$pg_version" main >&2 && pg_ctlcluster "$pg_version" main start >&2
    }
fi
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_roles WHERE rolname='sluice'\" | grep -q 1 || psql -q -c \"CREATE ROLE sluice LOGIN PASSWORD 'sluice' CREATEDB\"" >&2
su postgres -c "psql -q -tc \"SELECT 1 FROM pg_database WHERE datname='sluice_test'\" | grep -q 1 || createdb -O sluice sluice_test" >&2

if ! redis-cli -p 6379 ping >/dev/null 2>&1; then
    redis-server --port 6379 --bind 127.0.0.1 --save '' --appendonly no --daemonize yes >&2
    for _ in $(seq 50); do redis-cli -p 6379 ping >/dev/null 2>&1 && break; sleep 0.1; done
fi

echo "export SLUICE_TEST_DATABASE_URL=postgresql+psycopg://sluice:sluice@127.0.0.1:5432/sluice_test"
echo "export SLUICE_TEST_REDIS_URL=redis://127.0.0.1:6379/15"
