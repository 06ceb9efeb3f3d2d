from __future__ import annotations

import pytest

from backend.config import SettingsError, get_settings, load_settings, reset_settings_cache


def test_defaults_are_embedded_and_dry_run() -> None:
    settings = load_settings()
    assert settings.dry_run is True
    assert settings.effective_database_url.startswith("sqlite:///")
    assert settings.effective_database_url.endswith("/data/finops.db")
    assert settings.redis_url is None
    assert settings.protected_tag_values == ["prod", "production"]
    assert settings.opt_out_tag == "finops:opt-out"


def test_lists_are_read_comma_separated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_REGIONS", "us-east-1, eu-west-1")
    monkeypatch.setenv("FINOPS_ACCOUNTS", "111111111111,222222222222")
    settings = load_settings()
    assert settings.regions == ["us-east-1", "eu-west-1"]
    assert settings.accounts == ["111111111111", "222222222222"]


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("FINOPS_REGIONS", "us-east-1,moon-1", "FINOPS_REGIONS"),
        ("FINOPS_ACCOUNTS", "12345", "FINOPS_ACCOUNTS"),
        ("DATABASE_URL", "mysql://db/x", "DATABASE_URL"),
        ("REDIS_URL", "http://redis", "REDIS_URL"),
        ("COST_OPTIMIZATION_ROLE_ARN", "finops-role", "COST_OPTIMIZATION_ROLE_ARN"),
        ("FINOPS_DRY_RUN", "perhaps", "FINOPS_DRY_RUN"),
        ("FINOPS_METRICS_WINDOW_DAYS", "0", "FINOPS_METRICS_WINDOW_DAYS"),
    ],
)
def test_a_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert named in str(caught.value)
    assert value in str(caught.value)


def test_settings_are_read_when_asked_not_at_import(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_REGIONS", "eu-central-1")
    reset_settings_cache()
    assert get_settings().regions == ["eu-central-1"]
    monkeypatch.setenv("FINOPS_REGIONS", "us-west-2")
    assert get_settings().regions == ["eu-central-1"]  # cached until reset
    reset_settings_cache()
    assert get_settings().regions == ["us-west-2"]


def test_role_name_for_accounts_comes_from_the_role_arn(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COST_OPTIMIZATION_ROLE_ARN", "arn:aws:iam::123456789012:role/finops")
    assert load_settings().role_name_for_accounts == "finops"


def test_postgres_urls_use_psycopg3(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://finops@db/finops_db")
    assert load_settings().effective_database_url == "postgresql+psycopg://finops@db/finops_db"


def test_default_secret_refused_outside_development(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FINOPS_ENVIRONMENT", "production")
    with pytest.raises(SettingsError, match="FINOPS_SECRET_KEY"):
        load_settings().require_safe_secret()
    monkeypatch.setenv("FINOPS_SECRET_KEY", "x" * 40)
    load_settings().require_safe_secret()


def test_forgetting_the_settings_forgets_the_notification_settings_too(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A route read from an environment that is gone must not route an owner's notice: a
    test (or the demo) that changed FINOPS_NOTIFY_* once left a team routed for the next."""
    from backend.core.notification_settings import get_notification_settings

    monkeypatch.setenv("FINOPS_NOTIFY_SLACK_WEBHOOK_URL", "https://hooks.slack.com/services/T/B/x")
    monkeypatch.setenv("FINOPS_NOTIFY_OWNER_ROUTES", '{"team-a": "slack"}')
    assert get_notification_settings().owner_route("team-a").target is not None
    monkeypatch.delenv("FINOPS_NOTIFY_OWNER_ROUTES")
    reset_settings_cache()
    assert get_notification_settings().owner_route("team-a").target is None


def test_the_rules_know_the_tag_rollbacks_put_on_what_they_restore() -> None:
    from backend.domain.safety import SafetyConfig
    from backend.providers.aws.operations_base import RESTORED_FROM_TAG

    assert SafetyConfig().restored_tag == RESTORED_FROM_TAG
