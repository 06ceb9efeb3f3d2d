"""The distributed runtime: Celery workers and beat on a Redis broker, PostgreSQL the record.

Nothing here runs in the embedded mode (no REDIS_URL): there, AutoRemediationEngine runs the
same services in-process.
"""
