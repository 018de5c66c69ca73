# The API as a container image: `uvicorn main:app` on port 8000, SQLite in the /data volume.
# Build: docker build -t fastapi-reference .   (or podman build --format docker, which keeps the HEALTHCHECK)
# Run:   docker run -d -p 127.0.0.1:8000:8000 -v app-data:/data -e SECRET_KEY=... fastapi-reference
# docs/deployment.md has the settings, compose.yaml the PostgreSQL setup, .ci/container.sh the checks.

# Any Debian-like image with Python >= 3.11 and its venv module; CI builds on a local Debian base.
ARG BASE=python:3.13-slim
FROM ${BASE}

# No .pyc written at run time (the code is read-only to the app user), logs unbuffered, and the
# venv's python, pip and uvicorn first on PATH.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/venv/bin:$PATH

# Dependencies in their own layer, before the code, so a code change reuses it. A venv, because a
# distribution's own Python refuses `pip install` (PEP 668). requirements-postgres.txt is
# requirements.txt plus the PostgreSQL driver: one image serves both databases.
COPY requirements.txt requirements-postgres.txt /tmp/
RUN python3 -m venv /opt/venv \
    && pip install -r /tmp/requirements-postgres.txt \
    && rm /tmp/requirements.txt /tmp/requirements-postgres.txt

# A fixed, unprivileged uid (so a host directory or a backup can be chowned to it) owning only /data.
RUN useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin app \
    && mkdir /data \
    && chown app:app /data

# Only what the app needs: its modules and migrations (.dockerignore keeps out the tests, .env,
# databases, .git, venvs and caches). Owned by root: the app cannot rewrite its own code.
WORKDIR /app
COPY alembic.ini *.py ./
COPY alembic/ alembic/

# Production unless told otherwise: without a SECRET_KEY of 32+ characters the app refuses to
# start, with one line. The SQLite file lives in the volume, so it outlives the container.
ENV ENVIRONMENT=production \
    DATABASE_URL=sqlite:////data/app.db
VOLUME /data
USER app
EXPOSE 8000

# /health answers 200 when the database does. Python, because slim images have no curl.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=3)"]

# Migrations run at start-up (main.py's lifespan), as outside a container. Exec form: uvicorn is
# PID 1 and gets the SIGTERM of `docker stop`; it then finishes requests in flight for up to 8 s,
# within the 10 s that docker and podman wait before SIGKILL.
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--timeout-graceful-shutdown", "8"]
