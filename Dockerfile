# One image for the three processes of FinOps Automation (deploy/kubernetes runs each):
#   API        finops serve --host 0.0.0.0 --port 8000   (the default command)
#   worker     finops worker --queues scans,actions,notifications --concurrency 2 --pool prefork
#   scheduler  finops scheduler                          (Celery beat; exactly one replica)
# Migrations: finops db upgrade (the scheduler's init container runs it).
#
# The on-call runbook runs commands in these containers from the working directory /app:
#   python -c "from backend.core... import ...", python scripts/health-check.py, aws sts ...
# so /app holds scripts/, and `python` and `aws` are the virtualenv's (on PATH).
#
# The base is pinned by digest (python 3.11.16, Debian slim; the tag is for readers, the
# digest is what is pulled). Override with --build-arg PYTHON_IMAGE=... to move it.
ARG PYTHON_IMAGE=python:3.11.16-slim@sha256:9c900dea9e8fb7e16277c179b555cc72d29a352dbc33cff48ad5a0412fd5bfc7

FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# The pinned runtime tree first (its layer is cached while only the code changes); the test
# tools' pins are in requirements-dev.lock and stay out of the image. Every pin has a
# binary wheel for CPython 3.11 on Linux x86_64, so no compiler is needed.
COPY requirements.lock ./
RUN pip install -r requirements.lock
COPY pyproject.toml README.md ./
COPY backend ./backend
RUN pip install --no-deps . \
    && finops --help > /dev/null

FROM ${PYTHON_IMAGE}
# The installed package has no migrations or policy pack of its own: they live in /app.
# /tmp is the only writable place (Kubernetes mounts an emptyDir there, the root is read-only):
# the beat schedule file the runbook deletes is /tmp/celerybeat-schedule.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FINOPS_MIGRATIONS_DIR=/app/migrations \
    FINOPS_POLICY_PATHS=/app/policies \
    FINOPS_DATA_DIR=/tmp/finops \
    FINOPS_BEAT_SCHEDULE_PATH=/tmp/celerybeat-schedule \
    HOME=/tmp
RUN groupadd --system --gid 10001 finops \
    && useradd --system --uid 10001 --gid finops --no-create-home \
       --home-dir /tmp --shell /usr/sbin/nologin finops
COPY --from=build /opt/venv /opt/venv
WORKDIR /app
COPY alembic.ini ./
COPY migrations ./migrations
COPY policies ./policies
COPY scripts ./scripts
USER 10001:10001
EXPOSE 8000
# For `docker run`; Kubernetes uses its own probes. The API answers /health/live; the worker
# and the scheduler have no port, so for them the check only says the process is there.
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; cmd = open('/proc/1/cmdline', 'rb').read(); sys.exit(0) if b'serve' not in cmd else urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=4).close()"]
CMD ["finops", "serve", "--host", "0.0.0.0", "--port", "8000"]
