# Slim, non-root image:  docker build -t sluice . && docker run -p 8000:8000 -e SLUICE_MASTER_KEY=... sluice
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    SLUICE_BIND=0.0.0.0:8000 \
    SLUICE_DATA_DIR=/data

WORKDIR /srv/sluice
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

COPY app ./app
COPY wsgi.py gunicorn.conf.py ./
COPY deploy/entrypoint.sh ./deploy/entrypoint.sh

RUN useradd --system --uid 10001 --home-dir /data sluice \
    && mkdir -p /data && chown sluice:sluice /data
USER sluice
VOLUME ["/data"]
EXPOSE 8000

HEALTHCHECK --interval=15s --timeout=3s --start-period=10s --retries=3 \
    CMD python -c "import os, urllib.request; port = os.environ['SLUICE_BIND'].rsplit(':', 1)[1]; urllib.request.urlopen(f'http://127.0.0.1:{port}/healthz', timeout=2)"

ENTRYPOINT ["./deploy/entrypoint.sh"]
