# The store's service (`eventstore serve`) and its tools (`eventstore db
# deploy`, `eventstore keys`): one image, used by docker-compose.yml for the
# one-shot schema deploy and for the service.
FROM python:3.11-slim

# Sqitch with its PostgreSQL driver, and psql (Sqitch drives it).
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        sqitch libdbd-pg-perl postgresql-client \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md sqitch.conf sqitch.plan ./
COPY sqitch ./sqitch
COPY eventstore ./eventstore
COPY trading ./trading
COPY projections ./projections
COPY storectl ./storectl
RUN pip install --no-cache-dir '.[service]'

# `eventstore db deploy` runs Sqitch here, where sqitch.plan lives.
ENV EVENTSTORE_SQITCH_DIR=/app \
    PYTHONUNBUFFERED=1
COPY docker/create-service-role.sh /usr/local/bin/create-service-role

RUN useradd --system --uid 10001 --home-dir /app eventstore
USER eventstore

EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=10 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
ENTRYPOINT ["eventstore"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8080"]
