#!/usr/bin/env bash
# `make run`: the gateway on its embedded defaults, with the bundled mock upstream
# when no config file is given, and a generated demo key when SLUICE_MASTER_KEY is unset.
set -euo pipefail

data_dir="${SLUICE_DATA_DIR:-./data}"
bind="${SLUICE_BIND:-127.0.0.1:8000}"
mkdir -p "$data_dir"

if [ -z "${SLUICE_MASTER_KEY:-}" ] && [ -z "${SLUICE_MASTER_KEY_FILE:-}" ]; then
    key_file="$data_dir/demo-key"
    if [ ! -s "$key_file" ]; then
        (umask 077 && python -c 'import secrets; print("sk-sluice-demo-" + secrets.token_urlsafe(32))' >"$key_file")
    fi
    chmod 600 "$key_file"
    export SLUICE_MASTER_KEY_FILE="$key_file"
fi
key="${SLUICE_MASTER_KEY:-$(cat "${SLUICE_MASTER_KEY_FILE}")}"

mock_pid=""
cleanup() { [ -n "$mock_pid" ] && kill "$mock_pid" 2>/dev/null || true; }
trap cleanup EXIT
if [ -z "${SLUICE_CONFIG:-}" ] && [ ! -f sluice.toml ]; then
    python -m app.mock_upstream --port "${SLUICE_DEMO_MOCK_PORT:-9100}" &
    mock_pid=$!
fi

cat <<MSG

  Sluice is starting on http://$bind  (Ctrl-C stops it)
  Your demo key (kept in ${SLUICE_MASTER_KEY_FILE:-SLUICE_MASTER_KEY}):

    $key

  Try a stream:

    curl -N http://$bind/v1/chat/completions \\
      -H "Authorization: Bearer $key" -H "Content-Type: application/json" \\
      -d '{"model": "mock-gpt", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'

MSG
SLUICE_BIND="$bind" gunicorn -c gunicorn.conf.py wsgi:app
