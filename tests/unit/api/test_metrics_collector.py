"""The collector's labels, and that it never raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from backend.api.context import ApiContext
from backend.api.metrics_audit import reason_of, rules_of
from backend.api.metrics_collector import FinOpsCollector
from backend.config import load_settings


def test_failure_reasons_are_bounded_labels() -> None:
    assert reason_of("AccessDenied: User is not authorized") == "AccessDenied"
    assert reason_of("ChangeUnverifiedError: size still 100") == "ChangeUnverifiedError"
    assert reason_of("interrupted by the emergency stop after 1 change(s)") == "emergency-stop"
    assert reason_of("the volume vol-1 is attached to i-2: cannot delete") == "other"
    assert reason_of(None) == "unknown"


def test_rules_come_from_the_rule_field_or_the_summary() -> None:
    assert rules_of({"rule": "blast-radius", "summary": "x"}) == ["blast-radius"]
    summary = "protected-tag: env=prod; change-freeze: until 3 Jan"
    assert sorted(rules_of({"summary": summary})) == ["change-freeze", "protected-tag"]
    assert rules_of({"summary": "something new"}) == ["other"]


@dataclass
class Key:
    label: str


@dataclass
class Breaker:
    key: Key
    state: str
    failures: int


def scrape(collector: FinOpsCollector) -> dict[str, float]:
    registry = CollectorRegistry()
    registry.register(collector)
    text = generate_latest(registry).decode()
    return {
        s.name + str(sorted(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def dead_context(tmp_path: Path) -> ApiContext:
    return ApiContext(load_settings(database_url="postgresql://x@127.0.0.1:1/x", data_dir=tmp_path))


def test_a_dead_database_and_broken_breakers_are_readings_not_crashes(tmp_path: Path) -> None:
    def broken() -> list[Breaker]:
        raise ConnectionError("redis is down")

    samples = scrape(FinOpsCollector(dead_context(tmp_path), breakers=broken))
    assert samples["finops_automation_engine_status[]"] == 0.0
    assert samples["finops_metrics_scrape_errors[('part', 'database')]"] == 1.0
    assert samples["finops_metrics_scrape_errors[('part', 'breakers')]"] == 1.0


def test_open_breakers_are_reported_with_their_failures(tmp_path: Path) -> None:
    states = [
        Breaker(Key("111/us-east-1/ec2"), "open", 12),
        Breaker(Key("111/us-east-1/rds"), "closed", 0),
    ]
    samples = scrape(FinOpsCollector(dead_context(tmp_path), breakers=lambda: states))
    ec2 = "[('breaker', '111/us-east-1/ec2'), ('state', 'open')]"
    rds = "[('breaker', '111/us-east-1/rds'), ('state', 'closed')]"
    assert samples["finops_circuit_breaker_open" + ec2] == 1.0
    assert samples["finops_circuit_breaker_open" + rds] == 0.0
    assert samples["finops_aws_api_window_failures[('breaker', '111/us-east-1/ec2')]"] == 12.0
    assert samples["finops_metrics_scrape_errors[('part', 'breakers')]"] == 0.0
