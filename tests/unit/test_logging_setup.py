"""Logs go to stderr, with upper-case levels: the runbook greps for ERROR and CRITICAL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_levels_are_upper_case_on_stderr() -> None:
    code = (
        "from backend.logging_setup import configure_logging; import structlog; "
        "configure_logging(); structlog.get_logger('t').error('safety check failed', rule='x')"
    )
    for fmt in ("console", "json"):
        done = subprocess.run(
            [sys.executable, "-c", code],
            capture_output=True,
            text=True,
            env={"FINOPS_LOG_FORMAT": fmt, "PATH": "/usr/bin:/bin"},
            check=True,
        )
        assert done.stdout == ""
        assert "ERROR" in done.stderr and "safety check failed" in done.stderr, done.stderr


# An assumed-role scan at DEBUG on in-process moto: the AssumeRole answer and the signed
# requests after it are where botocore's wire logs would show the keys.
_SCAN_AT_DEBUG = """
import sys, boto3
from moto import mock_aws
with mock_aws():
    sts = boto3.client("sts", region_name="us-east-1")
    c = sts.assume_role(RoleArn="arn:aws:iam::222222222222:role/finops", RoleSessionName="seed")
    creds = c["Credentials"]
    boto3.client("ec2", region_name="us-east-1", aws_access_key_id=creds["AccessKeyId"],
                 aws_secret_access_key=creds["SecretAccessKey"],
                 aws_session_token=creds["SessionToken"]).create_volume(
        Size=1, AvailabilityZone="us-east-1a")
    sys.argv = ["finops", "scan", "--region", "us-east-1"]
    from backend.cli import main
    try:
        main()
    except SystemExit:
        pass
"""

_SECRETS = ("SecretAccessKey", "SessionToken", "X-Amz-Security-Token")


def _run(code: str, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "PYTHONPATH": os.environ.get("PYTHONPATH", os.getcwd()),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "DATABASE_URL": f"sqlite:///{tmp_path / 'log.sqlite'}",
        "FINOPS_DATA_DIR": str(tmp_path / "data"),
        "FINOPS_LOG_LEVEL": "DEBUG",
        **extra,
    }
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )


def test_debug_logs_never_carry_aws_credentials(tmp_path: Path) -> None:
    done = _run(_SCAN_AT_DEBUG, tmp_path, FINOPS_ACCOUNTS="222222222222", FINOPS_ROLE_NAME="finops")
    assert "222222222222" in done.stdout  # scanned through the assumed role
    assert "DEBUG alembic" in done.stderr  # other libraries' debug logs still flow
    for secret in _SECRETS:
        assert secret not in done.stderr, secret


def test_aws_wire_logs_only_on_explicit_opt_in(tmp_path: Path) -> None:
    emit = (
        "import logging; from backend.logging_setup import configure_logging; "
        "configure_logging(); logging.getLogger('botocore.endpoint').debug('wire body')"
    )
    assert "wire body" not in _run(emit, tmp_path).stderr
    assert "wire body" in _run(emit, tmp_path, FINOPS_AWS_WIRE_LOG="1").stderr


def test_a_logged_exception_has_its_traceback_and_no_local_variables(tmp_path: Path) -> None:
    """A traceback in the log, in both formats, names the frames and the error; the values
    of the frames' local variables (a token, a password, credentials) are not in it."""
    code = (
        "from backend.logging_setup import configure_logging; import structlog\n"
        "configure_logging()\n"
        "def authenticate():\n"
        "    token = 'fo_do-not-log-me'\n"
        "    raise PermissionError('unknown API token')\n"
        "try:\n"
        "    authenticate()\n"
        "except PermissionError:\n"
        "    structlog.get_logger('t').exception('request failed')\n"
    )
    for fmt in ("console", "json"):
        done = _run(code, tmp_path, FINOPS_LOG_FORMAT=fmt)
        assert "in authenticate" in done.stderr, (fmt, done.stderr)
        assert "PermissionError: unknown API token" in done.stderr, (fmt, done.stderr)
        assert "fo_do-not-log-me" not in done.stderr, (fmt, done.stderr)
