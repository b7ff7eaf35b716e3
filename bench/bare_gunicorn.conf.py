"""gunicorn settings for the bare proxy: the server tuning of Sluice's gunicorn.conf.py
(keep-alive, open-file limit, no control socket) without Sluice's own hooks (migrations,
metrics directory, shutdown, garbage-collector freeze). Without `-c`, gunicorn would read
./gunicorn.conf.py, Sluice's, and run its start-up hooks for a proxy that has no database.
"""

import resource

control_socket_disable = True
keepalive = 75
timeout = 30
accesslog = None

_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _soft < 4096:  # two sockets per held stream, as Sluice's config raises it
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(4096, _hard) if _hard != resource.RLIM_INFINITY else 4096, _hard))
