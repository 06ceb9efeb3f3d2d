"""Which account a scan is about, when the credentials cannot say."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from backend.core.discovery import Discoverer
from backend.providers.aws.session import AccountTarget


class _Clients:
    def caller_account(self) -> str:
        answer: Any = {"Error": {"Code": "ExpiredToken", "Message": "The token has expired"}}
        raise ClientError(answer, "GetCallerIdentity")


def test_credentials_that_cannot_say_their_account_are_named_as_such() -> None:
    failures: dict[str, str] = {}
    resolved = Discoverer(_Clients()).resolve_accounts(  # type: ignore[arg-type]
        [AccountTarget(account_id=None, role_arn=None)], failures
    )
    assert resolved == []
    ((label, why),) = failures.items()
    assert label == "the default credentials' account/*/*"
    assert why.startswith("cannot tell which account the credentials are for (STS ")
    assert "ExpiredToken" in why
