#!/usr/bin/env bash
# `make run`: the gateway on its embedded defaults, with the bundled mock upstream
# when no config file is given, and a generated demo key when SLUICE_MASTER_KEY is unset.
set -euo pipefail

data_dir="${SLUICE_DATA_DIR:-./data}"
bind="${SLUICE_BIND:-127.0.0.1:8000}"
mkdir -p "$data_dir"

# One line, not gunicorn's retries and traceback, when the address is taken (another `make run`?).
bind_free() {
    python - "$1" <<'PY'
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
host = host.strip("[]") or "0.0.0.0"
try:
    info = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0]
    with socket.socket(info[0], socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gunicorn binds
        probe.bind(info[4])
except (OSError, ValueError) as exc:
    sys.exit(f"make run: cannot listen on {sys.argv[1]} ({exc.strerror or exc}); set SLUICE_BIND=HOST:PORT")
PY
}
bind_free "$bind"

if [ -z "${SLUICE_MASTER_KEY:-}" ] && [ -z "${SLUICE_MASTER_KEY_FILE:-}" ]; then
    key_file="$data_dir/demo-key"
    if [ ! -s "$key_file" ]; then
        (umask 077 && python -c 'import secrets; print("sk-sluice-demo-" + secrets.token_urlsafe(32))' >"$key_file")
    fi
    chmod 600 "$key_file"
    export SLUICE_MASTER_KEY_FILE="$key_file"
fi
key="${SLUICE_MASTER_KEY:-$(cat "${SLUICE_MASTER_KEY_FILE}")}"
admin_note='curl -H "Authorization: Bearer $SLUICE_MASTER_KEY" ...  (your key)'
if [ -z "${SLUICE_MASTER_KEY:-}" ]; then
    admin_note="export SLUICE_MASTER_KEY=\"\$(cat $SLUICE_MASTER_KEY_FILE)\"   (then the README's curl lines work)"
fi

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
port_file=""
cleanup() {
    if [ -n "$mock_pid" ]; then kill "$mock_pid" 2>/dev/null || true; fi
    if [ -n "$port_file" ]; then rm -f "$port_file"; fi
}
trap cleanup EXIT

# The bundled mock on SLUICE_DEMO_MOCK_PORT, else on a free port, so a second `make run` (another
# SLUICE_BIND) gets its own mock; the gateway's built-in config reads the port from the same variable.
start_mock() {
    port_file="$(mktemp)"
    python -m app.mock_upstream --port "${SLUICE_DEMO_MOCK_PORT:-0}" --port-file "$port_file" >/dev/null &
    mock_pid=$!
    for _ in $(seq 100); do  # up to 10 s
        if [ -s "$port_file" ]; then
            SLUICE_DEMO_MOCK_PORT="$(cat "$port_file")"
            export SLUICE_DEMO_MOCK_PORT
            mock_note="http://127.0.0.1:$SLUICE_DEMO_MOCK_PORT/v1"
            return 0
        fi
        if ! kill -0 "$mock_pid" 2>/dev/null; then  # it said why (e.g. the port is taken), in one line
            mock_pid=""
            exit 1
        fi
        sleep 0.1
    done
    echo "make run: the bundled mock upstream did not start within 10 s" >&2
    exit 1
}
mock_note="not started (a config file is in use)"
if [ -z "${SLUICE_CONFIG:-}" ] && [ ! -f sluice.toml ]; then
    start_mock
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

  The CLI (uses the same data and secrets):  ./sluice keys list
  The admin API:  $admin_note
  The mock upstream: $mock_note

MSG
SLUICE_BIND="$bind" gunicorn -c gunicorn.conf.py wsgi:app
