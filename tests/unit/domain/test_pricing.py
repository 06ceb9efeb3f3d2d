"""Pricing: monthly cost per resource, savings per action, overrides, recommendations."""

from __future__ import annotations

from typing import Any

import pytest

from backend.domain.pricing import (
    PriceTable,
    PriceTableError,
    estimate_savings,
    monthly_cost,
    recommend_instance_type,
)
from backend.domain.resources import Resource, ResourceKind

HOURS = 730
TABLE = PriceTable.shipped()


def res(kind: ResourceKind, state: str, region: str = "us-east-1", **attrs: Any) -> Resource:
    return Resource(kind, "r-1", "123456789012", region, state, attributes=attrs)


def ec2(instance_type: str = "m5.large", state: str = "running", **kw: Any) -> Resource:
    region = kw.pop("region", "us-east-1")
    return res(ResourceKind.EC2_INSTANCE, state, region, InstanceType=instance_type, **kw)


def volume(volume_type: str = "gp2", size: int = 100, **kw: Any) -> Resource:
    region = kw.pop("region", "us-east-1")
    return res(
        ResourceKind.EBS_VOLUME, "available", region, VolumeType=volume_type, Size=size, **kw
    )


def rds(state: str = "available", **kw: Any) -> Resource:
    attrs: dict[str, Any] = {
        "DBInstanceClass": "db.m5.large",
        "Engine": "mysql",
        "MultiAZ": False,
        "AllocatedStorage": 100,
        "StorageType": "gp2",
    } | kw
    return res(ResourceKind.RDS_INSTANCE, state, **attrs)


# --- the shipped table -------------------------------------------------------------------


def test_shipped_table_records_source_date_and_hours() -> None:
    assert TABLE.hours_per_month == HOURS
    assert TABLE.source.startswith("AWS public on-demand price list")
    assert TABLE.as_of == "2025-01"
    assert set(TABLE.regions) == {
        "us-east-1",
        "us-east-2",
        "us-west-2",
        "eu-west-1",
        "eu-central-1",
    }


@pytest.mark.parametrize(
    "region", ["us-east-1", "us-east-2", "us-west-2", "eu-west-1", "eu-central-1"]
)
def test_every_region_prices_the_covered_catalogue(region: str) -> None:
    types = TABLE.names(region, "ec2_hourly")
    for family in ("t2", "t3", "t3a"):
        for size in ("nano", "micro", "small", "medium", "large", "xlarge", "2xlarge"):
            assert f"{family}.{size}" in types
    for family in ("m4", "m5", "m6i", "c4", "c5", "c6i", "r4", "r5", "r6i"):
        for size in ("large", "xlarge", "2xlarge", "4xlarge"):
            assert TABLE.price(region, "ec2_hourly", f"{family}.{size}") > 0
    for vtype in ("gp2", "gp3", "io1", "io2", "st1", "sc1", "standard"):
        assert TABLE.price(region, "ebs", vtype, "gb_month") > 0
    for engine in ("mysql", "postgres", "mariadb"):
        for db_class in ("db.t3.micro", "db.t4g.medium", "db.m5.2xlarge", "db.r5.xlarge"):
            assert TABLE.price(region, "rds_hourly", engine, db_class) > 0
    assert TABLE.price(region, "public_ipv4_hourly") == 0.005


def test_newer_generations_are_not_dearer_than_older() -> None:
    for old, new in (("t2", "t3"), ("m4", "m5"), ("c4", "c5"), ("r4", "r5")):
        for size in ("large", "xlarge"):
            assert TABLE.price("us-east-1", "ec2_hourly", f"{new}.{size}") < TABLE.price(
                "us-east-1", "ec2_hourly", f"{old}.{size}"
            )


# --- monthly cost --------------------------------------------------------------------------


def test_running_m5_large_in_us_east_1() -> None:
    cost = monthly_cost(ec2("m5.large"), TABLE)
    assert cost.monthly_usd == pytest.approx(0.096 * HOURS)
    assert cost.unknown is None


def test_listed_regional_price_and_multiplied_region() -> None:
    assert monthly_cost(ec2("t3.micro", region="eu-west-1"), TABLE).monthly_usd == (
        pytest.approx(0.0114 * HOURS)
    )
    # us-west-2 lists nothing itself: us-east-1 x 1.0
    assert monthly_cost(ec2("m5.large", region="us-west-2"), TABLE).monthly_usd == (
        pytest.approx(0.096 * HOURS)
    )


def test_moto_default_types_are_priced() -> None:
    assert monthly_cost(ec2("m1.small"), TABLE).monthly_usd == pytest.approx(0.044 * HOURS)
    assert monthly_cost(ec2("m3.medium"), TABLE).monthly_usd == pytest.approx(0.067 * HOURS)


@pytest.mark.parametrize("state", ["stopped", "stopping", "terminated"])
def test_stopped_instance_costs_no_compute(state: str) -> None:
    assert monthly_cost(ec2("m5.large", state), TABLE).monthly_usd == 0.0


@pytest.mark.parametrize(
    ("resource", "words"),
    [
        (ec2("x9.huge"), ["x9.huge", "us-east-1"]),
        (ec2("m5.large", region="ap-south-1"), ["ap-south-1"]),
        (ec2("m1.small", region="us-east-2"), ["m1.small", "not offered", "us-east-2"]),
        (ec2("m5.large", Platform="windows"), ["Windows"]),
        (ec2("m5.large", InstanceLifecycle="spot"), ["spot"]),
        (ec2("m5.large", Placement={"Tenancy": "dedicated"}), ["dedicated"]),
        (ec2("m5.large", state="rebooting-ish"), ["state"]),
        (volume("gp9"), ["gp9"]),
        (res(ResourceKind.EBS_VOLUME, "available", VolumeType="gp2"), ["Size"]),
        (res(ResourceKind.LOAD_BALANCER, "active", Type="gateway"), ["gateway"]),
        (rds(Engine="aurora-mysql"), ["aurora-mysql"]),
        (rds(DBInstanceClass="db.x9.huge"), ["db.x9.huge"]),
    ],
)
def test_unknown_is_reported_with_a_reason_never_zero(resource: Resource, words: list[str]) -> None:
    cost = monthly_cost(resource, TABLE)
    assert cost.monthly_usd is None
    assert cost.unknown is not None
    for word in words:
        assert word in cost.unknown


def test_volume_costs() -> None:
    assert monthly_cost(volume("gp2", 100), TABLE).monthly_usd == pytest.approx(10.0)
    assert monthly_cost(volume("sc1", 500), TABLE).monthly_usd == pytest.approx(500 * 0.015)
    # gp3: 3000 IOPS and 125 MB/s are free; only the excess is charged
    gp3 = volume("gp3", 100, Iops=4000, Throughput=250)
    assert monthly_cost(gp3, TABLE).monthly_usd == pytest.approx(8.0 + 1000 * 0.005 + 125 * 0.04)
    assert monthly_cost(volume("gp3", 100, Iops=3000, Throughput=125), TABLE).monthly_usd == 8.0
    io1 = volume("io1", 100, Iops=1000)
    assert monthly_cost(io1, TABLE).monthly_usd == pytest.approx(12.5 + 1000 * 0.065)
    io2 = volume("io2", 100, Iops=70_000)  # three tiers
    expected = 12.5 + 32_000 * 0.065 + 32_000 * 0.0455 + 6_000 * 0.032
    assert monthly_cost(io2, TABLE).monthly_usd == pytest.approx(expected)


def test_snapshot_ami_address_and_load_balancers() -> None:
    snap = res(ResourceKind.EBS_SNAPSHOT, "completed", VolumeSize=50, VolumeId="vol-1")
    assert monthly_cost(snap, TABLE).monthly_usd == pytest.approx(50 * 0.05)
    assert monthly_cost(res(ResourceKind.AMI, "available"), TABLE).monthly_usd == 0.0
    for state, attrs in (("associated", {"AssociationId": "eipassoc-1"}), ("available", {})):
        eip = res(ResourceKind.ELASTIC_IP, state, AllocationId="eipalloc-1", **attrs)
        assert monthly_cost(eip, TABLE).monthly_usd == pytest.approx(0.005 * HOURS)
    for lb_type in ("application", "network"):
        lb = res(ResourceKind.LOAD_BALANCER, "active", Type=lb_type)
        assert monthly_cost(lb, TABLE).monthly_usd == pytest.approx(0.0225 * HOURS)


def test_rds_single_az_multi_az_and_stopped() -> None:
    single = monthly_cost(rds(), TABLE).monthly_usd
    assert single is not None
    assert single == pytest.approx(0.171 * HOURS + 100 * 0.115)
    assert monthly_cost(rds(MultiAZ=True), TABLE).monthly_usd == pytest.approx(2 * single)
    # stopped: instance hours stop, storage is still billed
    assert monthly_cost(rds("stopped"), TABLE).monthly_usd == pytest.approx(100 * 0.115)
    postgres = monthly_cost(rds(Engine="postgres", DBInstanceClass="db.t3.micro"), TABLE)
    assert postgres.monthly_usd == pytest.approx(0.018 * HOURS + 100 * 0.115)


# --- savings -------------------------------------------------------------------------------


def test_gp2_to_gp3_saves_the_price_difference_times_size() -> None:
    savings = estimate_savings("modify-volume", volume("gp2", 300), TABLE, {"volume_type": "gp3"})
    assert savings.monthly_usd == pytest.approx((0.10 - 0.08) * 300)
    assert savings.monthly_usd is not None
    assert savings.monthly_usd > 0
    assert "gp3" in savings.explanation


def test_gp2_to_gp3_keeps_a_big_volume_s_baseline_and_prices_it() -> None:
    """From 334 GiB gp2 sustains 250 MB/s, and from 1,000 GiB more than 3,000 IOPS: the
    change provisions them on gp3 (see the executor), so the estimate pays for them."""
    at_500 = estimate_savings("modify-volume", volume("gp2", 500), TABLE, {"volume_type": "gp3"})
    throughput = (250 - 125) * TABLE.price("us-east-1", "ebs", "gp3", "mbps_month")
    assert at_500.monthly_usd == pytest.approx((0.10 - 0.08) * 500 - throughput)
    at_2000 = estimate_savings("modify-volume", volume("gp2", 2000), TABLE, {"volume_type": "gp3"})
    iops = (6000 - 3000) * TABLE.price("us-east-1", "ebs", "gp3", "iops_month")
    assert at_2000.monthly_usd == pytest.approx((0.10 - 0.08) * 2000 - throughput - iops)
    assert "6000 IOPS" in at_2000.explanation


def test_delete_volume_nets_off_the_backup_snapshot() -> None:
    vol = volume("gp2", 100)
    kept = estimate_savings("delete", vol, TABLE, {})
    assert kept.monthly_usd == pytest.approx(100 * 0.10 - 100 * 0.05)
    gone = estimate_savings("delete", vol, TABLE, {"backup": False})
    assert gone.monthly_usd == pytest.approx(100 * 0.10)
    # a snapshot of cold HDD costs more than the volume: say so, negative
    assert estimate_savings("delete", volume("sc1", 100), TABLE, {}).monthly_usd == (
        pytest.approx(100 * 0.015 - 100 * 0.05)
    )


def test_stop_terminate_release_and_delete() -> None:
    assert estimate_savings("stop", ec2("m5.large"), TABLE, {}).monthly_usd == pytest.approx(
        0.096 * HOURS
    )
    assert estimate_savings("stop", ec2("m5.large", "stopped"), TABLE, {}).monthly_usd == 0.0
    terminate = estimate_savings("terminate", ec2("m5.large"), TABLE, {})
    assert terminate.monthly_usd == pytest.approx(0.096 * HOURS)
    assert "AMI" in terminate.explanation
    # RDS stop saves instance hours only; storage stays
    assert estimate_savings("stop", rds(), TABLE, {}).monthly_usd == pytest.approx(0.171 * HOURS)
    eip = res(ResourceKind.ELASTIC_IP, "available", AllocationId="eipalloc-1")
    assert estimate_savings("release", eip, TABLE, {}).monthly_usd == pytest.approx(3.65)
    snap = res(ResourceKind.EBS_SNAPSHOT, "completed", VolumeSize=8)
    assert estimate_savings("delete", snap, TABLE, {}).monthly_usd == pytest.approx(0.4)
    lb = res(ResourceKind.LOAD_BALANCER, "active", Type="network")
    assert estimate_savings("delete", lb, TABLE, {}).monthly_usd == pytest.approx(0.0225 * HOURS)
    assert (
        estimate_savings("delete", res(ResourceKind.AMI, "available"), TABLE, {}).monthly_usd == 0
    )


def test_resize_explicit_and_recommended() -> None:
    explicit = estimate_savings("resize", ec2("m5.xlarge"), TABLE, {"instance_type": "m5.large"})
    assert explicit.monthly_usd == pytest.approx((0.192 - 0.096) * HOURS)
    recommended = estimate_savings("rightsize", ec2("t2.medium"), TABLE, {})
    assert recommended.monthly_usd == pytest.approx((0.0464 - 0.0416) * HOURS)
    assert "t3.medium" in recommended.explanation
    nothing = estimate_savings("rightsize", ec2("m5.large"), TABLE, {"cpu_average": 3.0})
    assert nothing.monthly_usd == 0.0


@pytest.mark.parametrize("action", ["notify", "report", "mark", "tag"])
def test_bookkeeping_actions_save_nothing(action: str) -> None:
    assert estimate_savings(action, ec2(), TABLE, {}).monthly_usd == 0.0


@pytest.mark.parametrize(
    ("action", "resource", "params"),
    [
        ("stop", volume(), {}),
        ("explode", ec2(), {}),
        ("modify-volume", volume(), {}),
        ("stop", ec2("x9.huge"), {}),
        ("resize", ec2("m5.xlarge"), {"instance_type": "x9.huge"}),
        ("delete", volume("gp2", region="ap-south-1"), {}),
    ],
)
def test_unpriceable_savings_are_unknown_not_zero(
    action: str, resource: Resource, params: dict[str, Any]
) -> None:
    savings = estimate_savings(action, resource, TABLE, params)
    assert savings.monthly_usd is None
    assert savings.unknown


# --- overrides -----------------------------------------------------------------------------


def test_override_file_applies_a_28_percent_ec2_discount() -> None:
    table = TABLE.with_overrides({"discounts": {"ec2": 0.28, "*": 0.05}})
    assert monthly_cost(ec2("m5.large"), table).monthly_usd == pytest.approx(0.096 * HOURS * 0.72)
    # "*" covers the other kinds; the kind's own entry wins over it
    assert monthly_cost(volume("gp2", 100), table).monthly_usd == pytest.approx(10.0 * 0.95)
    assert estimate_savings("stop", ec2("m5.large"), table, {}).monthly_usd == pytest.approx(
        0.096 * HOURS * 0.72
    )
    assert TABLE.discounts == {}  # the original is untouched


def test_override_prices_replace_and_add() -> None:
    table = TABLE.with_overrides(
        {
            "prices": {
                "regions": {"us-east-1": {"ec2_hourly": {"m5.large": 0.09, "m7i.large": 0.1008}}}
            }
        }
    )
    assert monthly_cost(ec2("m5.large"), table).monthly_usd == pytest.approx(0.09 * HOURS)
    assert monthly_cost(ec2("m7i.large"), table).monthly_usd == pytest.approx(0.1008 * HOURS)
    assert monthly_cost(ec2("m5.xlarge"), table).monthly_usd == pytest.approx(0.192 * HOURS)
    assert monthly_cost(ec2("m5.large"), TABLE).monthly_usd == pytest.approx(0.096 * HOURS)


@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        ({"discounts": {"ec3": 0.1}}, "discounts.ec3"),
        ({"discounts": {"ec2": 28}}, "discounts.ec2"),
        ({"discounts": {"rds": "10%"}}, "discounts.rds"),
        ({"discount": {"ec2": 0.1}}, "discount"),
        ({"prices": [1, 2]}, "prices"),
        (
            {"prices": {"regions": {"us-east-1": {"ec2_hourly": {"m5.large": "cheap"}}}}},
            "prices.regions.us-east-1.ec2_hourly.m5.large",
        ),
        (
            {"prices": {"regions": {"us-east-1": {"ebs": {"gp3": {"gb_mnth": 0.07}}}}}},
            "prices.regions.us-east-1.ebs.gp3.gb_mnth",
        ),
        ({"prices": {"regions": {"eu-west-1": {"ec2": {}}}}}, "prices.regions.eu-west-1.ec2"),
        ({"prices": {"hours_per_month": -1}}, "prices.hours_per_month"),
    ],
)
def test_bad_override_names_the_key(overrides: dict[str, Any], key: str) -> None:
    with pytest.raises(PriceTableError) as info:
        TABLE.with_overrides(overrides)
    assert str(info.value).startswith(f"{key}:")


@pytest.mark.parametrize(
    "data",
    [
        {"hours_per_month": 730},
        {"hours_per_month": 0, "regions": {"r": {}}},
        {"hours_per_month": 730, "regions": {"r": {"base": "nowhere"}}},
        {"hours_per_month": 730, "regions": {"r": {"multiplier": 1.1}}},
    ],
)
def test_malformed_tables_are_rejected(data: dict[str, Any]) -> None:
    with pytest.raises(PriceTableError):
        PriceTable.from_mapping(data)


def test_region_without_a_section_is_unknown_not_zero() -> None:
    table = PriceTable.from_mapping(
        {"hours_per_month": 730, "regions": {"us-east-1": {"ec2_hourly": {"m5.large": 0.1}}}}
    )
    eip = res(ResourceKind.ELASTIC_IP, "available")
    assert monthly_cost(eip, table).unknown == "no price for public IPv4 address in us-east-1"


# --- recommendations -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("current", "cpu", "expected"),
    [
        ("t2.medium", None, "t3.medium"),
        ("m4.large", None, "m5.large"),
        ("c4.xlarge", None, "c5.xlarge"),
        ("r4.2xlarge", None, "r5.2xlarge"),
        ("m3.large", None, "m5.large"),
        ("m1.small", None, "t3.small"),  # m5 has no small size
        ("m5.xlarge", 3.0, "m5.large"),
        ("m5.4xlarge", 3.0, "m5.2xlarge"),  # one size down, not to the smallest
        ("t2.medium", 3.0, "t3.small"),
        ("t2.nano", 3.0, "t3.nano"),
        ("m5.large", 3.0, None),  # already the smallest m5
        ("t3.nano", 1.0, None),
        ("m5.xlarge", 45.0, None),
        ("m5.xlarge", None, None),
        ("x9.huge", 1.0, None),
    ],
)
def test_recommend_instance_type(current: str, cpu: float | None, expected: str | None) -> None:
    assert recommend_instance_type(current, cpu) == expected


def test_prices_read_only_the_declared_pricing_fields() -> None:
    """The stored evaluator prices one stub per distinct PRICING_FIELDS combination."""
    from backend.domain.policy.values import lookup
    from backend.domain.pricing import PRICING_FIELDS, pricing_stub

    noisy = {
        "Tags": [{"Key": "x"}],
        "LaunchTime": "2024-01-01",
        "SubnetId": "subnet-1",
        "Placement": {"AvailabilityZone": "us-east-1a", "Tenancy": "default"},
    }
    samples = [
        (
            ec2("m5.xlarge"),
            [
                ("stop", {}),
                ("resize", {"instance_type": "m5.large"}),
                ("rightsize", {"cpu_average": 3.0}),
                ("terminate", {}),
            ],
        ),
        (
            volume("gp2", 500),
            [
                ("delete", {"backup": True}),
                ("delete", {"backup": False}),
                ("modify-volume", {"volume_type": "gp3"}),
            ],
        ),
    ]
    for resource, actions in samples:
        full = Resource(
            kind=resource.kind,
            resource_id="x",
            account_id="1",
            region=resource.region,
            state=resource.state,
            attributes={**noisy, **resource.attributes},
        )
        stub = pricing_stub(
            full.kind,
            full.region,
            full.state,
            [lookup(full, path) for path in PRICING_FIELDS[full.kind]],
        )
        assert monthly_cost(full, TABLE) == monthly_cost(stub, TABLE)
        for action, params in actions:
            assert estimate_savings(action, full, TABLE, params) == estimate_savings(
                action, stub, TABLE, params
            ), action


def test_a_multi_az_read_back_by_sqlite_as_1_still_costs_twice() -> None:
    from backend.domain.pricing import pricing_stub

    values = ["db.t3.medium", "mysql", True, 20, "gp2", None, None]
    as_json = pricing_stub(ResourceKind.RDS_INSTANCE, "us-east-1", "available", values)
    values[2] = 1  # SQLite's json_extract of JSON true
    as_sqlite = pricing_stub(ResourceKind.RDS_INSTANCE, "us-east-1", "available", values)
    assert monthly_cost(as_sqlite, TABLE) == monthly_cost(as_json, TABLE)
    single = pricing_stub(
        ResourceKind.RDS_INSTANCE, "us-east-1", "available", [*values[:2], 0, *values[3:]]
    )
    assert monthly_cost(as_sqlite, TABLE).monthly_usd == 2 * monthly_cost(single, TABLE).monthly_usd
