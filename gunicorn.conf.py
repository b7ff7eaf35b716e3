"""gunicorn settings for Sluice: gevent workers for many concurrent long-lived streams.

Every value comes from a SLUICE_* variable (see app/config.py and the README).
"""

import os
import sys

from app.config import ConfigError, load_config, load_settings

try:
    _settings = load_settings()
except ConfigError as _exc:
    sys.exit(f"sluice: configuration error: {_exc}")

bind = _settings.bind
workers = _settings.workers
worker_class = "gevent"
# Each open stream holds one client connection (and one upstream connection).
worker_connections = int(os.environ.get("SLUICE_WORKER_CONNECTIONS", "1000"))
# gevent workers heartbeat from their own loop, so `timeout` only kills a worker whose
# loop is blocked, never a long but healthy stream.
timeout = 30
graceful_timeout = int(os.environ.get("SLUICE_GRACE_SECONDS", "30"))
keepalive = 75  # longer than nginx's upstream keepalive_timeout (60 s) avoids races
accesslog = None  # the app logs one line per request itself
errorlog = "-"
loglevel = "info"
# gunicorn 27 opens a control socket in ~/.gunicorn by default; parallel instances
# (tests, several gateways on one host) would fight over it.
control_socket_disable = True
# X-Forwarded-* is trusted by the app itself, per SLUICE_TRUSTED_PROXIES hops (werkzeug's
# ProxyFix); gunicorn trusts it from nobody, so the two cannot disagree.
forwarded_allow_ips = ""


def on_starting(server):
    """Validate the config file in the master, so a bad file stops start-up with one clear line."""
    try:
        load_config(_settings.config_path)
    except ConfigError as exc:
        sys.exit(f"sluice: configuration error: {exc}")
