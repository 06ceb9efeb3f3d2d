"""`finops scan` through Typer on in-process moto: its exit status and per-account totals when
a whole account cannot be read (its role cannot be assumed)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from moto import mock_aws
from typer.testing import CliRunner, Result

from backend.config import reset_settings_cache
from backend.core.migrations import upgrade
from backend.providers.aws import session as session_mod

OWN, DENIED = "123456789012", "222222222222"


class _Raw:
    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


class RoleDenied:
    """AssumeRole into the accounts in `accounts` is refused, as AWS refuses it."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.accounts: set[str] = set()
        original = session_mod.AwsClients._make_client

        def make(clients: Any, session: Any, service: str, region: str, account: str) -> Any:
            made = original(clients, session, service, region, account)
            made.meta.events.register_first("before-send", self._send)
            return made

        monkeypatch.setattr(session_mod.AwsClients, "_make_client", make)

    def _send(self, request: Any, **_: Any) -> AWSResponse | None:
        body = request.body.decode() if isinstance(request.body, bytes) else str(request.body)
        if "Action=AssumeRole" in body and any(a in body for a in self.accounts):
            xml = (
                "<ErrorResponse><Error><Type>Sender</Type><Code>AccessDenied</Code><Message>"
                "not authorized to perform: sts:AssumeRole</Message></Error>"
                "<RequestId>r</RequestId></ErrorResponse>"
            )
            return AWSResponse(request.url, 403, {}, _Raw(xml.encode()))
        return None


@pytest.fixture
def denied(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[RoleDenied]:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'scan.sqlite'}")
    monkeypatch.setenv("FINOPS_ACCOUNTS", f"{OWN},{DENIED}")
    monkeypatch.setenv("FINOPS_ROLE_NAME", "finops-scanner")
    reset_settings_cache()
    with mock_aws():
        upgrade()
        boto3.client("ec2", region_name="us-east-1").create_volume(
            Size=10, AvailabilityZone="us-east-1a"
        )
        yield RoleDenied(monkeypatch)
    reset_settings_cache()


def finops_scan() -> tuple[Result, dict[str, Any]]:
    import backend.cli.scan  # noqa: F401 - registers the command
    from backend.cli.app import app

    result = CliRunner().invoke(app, ["scan", "--region", "us-east-1", "--json"])
    return result, json.loads(result.stdout[result.stdout.index("{") :])


def test_a_scan_that_misses_a_whole_account_exits_4_and_lists_the_account(
    denied: RoleDenied,
) -> None:
    denied.accounts = {DENIED}
    result, summary = finops_scan()
    assert result.exit_code == 4, result.output
    assert summary["status"] == "partial"
    assert summary["by_account"][DENIED] == {"count": 0, "monthly_cost": 0.0, "not_scanned": True}
    assert summary["by_account"][OWN]["count"] == 1
    assert "not_scanned" not in summary["by_account"][OWN]
    assert all(part.startswith(f"{DENIED}/") for part in summary["not_scanned"])


def test_a_scan_of_every_account_exits_0_and_flags_none(denied: RoleDenied) -> None:
    result, summary = finops_scan()
    assert result.exit_code == 0, result.output
    assert (summary["status"], summary["not_scanned"]) == ("complete", {})
    assert not any("not_scanned" in t or "incomplete" in t for t in summary["by_account"].values())
