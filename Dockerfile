# Slim, non-root image:  docker build -t sluice .
#   docker run --rm -p 8000:8000 -e SLUICE_MASTER_KEY=... -v sluice-data:/data sluice
# The base is pinned by digest, so a rebuild gets the same Python and Debian: the
# python:3.11.16-slim-bookworm index as published on 2026-09-01. BASE_IMAGE lets a machine
# without a registry build on a stand-in (deploy/podman-base.sh; the image test does this).
ARG BASE_IMAGE=python:3.11.16-slim-bookworm@sha256:c425d915a89a6dcd3183b1797ad9bd8878caff5a417f6371c8df93c8ea8b727f
FROM ${BASE_IMAGE}

# SLUICE_GRACE_SECONDS: `docker stop` kills after 10 s, so the image's grace (running streams
# end with an error event and their usage is written) fits inside it. Raise both together:
# docker run --stop-timeout N -e SLUICE_GRACE_SECONDS=N-2 (compose: stop_grace_period).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SLUICE_BIND=0.0.0.0:8000 \
    SLUICE_DATA_DIR=/data \
    SLUICE_GRACE_SECONDS=8

WORKDIR /srv/sluice
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# Fixed ids (10001:10001), so a bind-mounted /data can be prepared on the host: chown 10001:10001.
RUN groupadd --system --gid 10001 sluice \
    && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home --shell /usr/sbin/nologin sluice \
    && mkdir -p /data && chown sluice:sluice /data

COPY app ./app
COPY wsgi.py gunicorn.conf.py ./
COPY deploy/entrypoint.sh ./deploy/entrypoint.sh

USER sluice
# Without -v, every `docker run` makes a new anonymous volume here (`docker volume prune` removes them).
VOLUME ["/data"]
EXPOSE 8000
STOPSIGNAL SIGTERM

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; port = os.environ['SLUICE_BIND'].rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"

ENTRYPOINT ["./deploy/entrypoint.sh"]
