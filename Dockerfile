# floodwarn: one image for every role (serve, dispatch, db upgrade, backup).
#   docker build -t floodwarn .
#   docker run --rm floodwarn --help
# The site (config, DEM, zones, data folders) is mounted at /site; what floodwarn writes
# (terrain cache, published notices, a SQLite database if no server is named) goes where
# the site's config puts site.output_dir, e.g. /var/lib/floodwarn (a volume).
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    # one JSON object per log line, for the container's log collector
    FLOODWARN_LOG_FORMAT=json \
    # Numba caches compiled kernels beside the code; keep them in a writable place
    NUMBA_CACHE_DIR=/var/cache/floodwarn/numba

WORKDIR /opt/floodwarn
COPY pyproject.toml README.md ./
COPY warning ./warning
COPY models ./models
COPY alerts ./alerts
RUN pip install . \
    && useradd --system --home-dir /var/lib/floodwarn --shell /usr/sbin/nologin floodwarn \
    && mkdir -p /var/lib/floodwarn /var/cache/floodwarn/numba /site \
    && chown -R floodwarn:floodwarn /var/lib/floodwarn /var/cache/floodwarn

USER floodwarn
VOLUME ["/var/lib/floodwarn"]
EXPOSE 8080
# liveness: the process answers and its scheduler runs (readiness is /health/ready)
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request,sys; sys.exit(urllib.request.urlopen('http://127.0.0.1:8080/health/live', timeout=4).status != 200)"]
ENTRYPOINT ["floodwarn"]
CMD ["serve", "--config", "/site/site.toml", "--host", "0.0.0.0", "--port", "8080"]
