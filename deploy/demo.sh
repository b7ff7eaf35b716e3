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

# The dashboard: a demo password and a secret key (signs its sessions, encrypts added tokens).
demo_secret() {  # file bytes -> a random value kept in the file (created once, readable by you only)
    if [ ! -s "$1" ]; then
        (umask 077 && python -c "import secrets; print(secrets.token_urlsafe($2))" >"$1")
    fi
    chmod 600 "$1"
    cat "$1"
}
if [ -z "${SLUICE_SECRET_KEY:-}" ]; then
    SLUICE_SECRET_KEY="$(demo_secret "$data_dir/demo-secret-key" 32)"
    export SLUICE_SECRET_KEY
fi
password_note="(set by you)"
if [ -z "${SLUICE_ADMIN_PASSWORD:-}" ] && [ -z "${SLUICE_ADMIN_PASSWORD_HASH:-}" ]; then
    SLUICE_ADMIN_PASSWORD="$(demo_secret "$data_dir/demo-password" 18)"
    export SLUICE_ADMIN_PASSWORD
    password_note="$SLUICE_ADMIN_PASSWORD   (kept in $data_dir/demo-password)"
fi

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

  The dashboard: http://$bind/dashboard
  Password: $password_note

MSG
SLUICE_BIND="$bind" gunicorn -c gunicorn.conf.py wsgi:app
