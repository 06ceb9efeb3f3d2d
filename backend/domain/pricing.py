"""What a resource costs per month, and what an action on it would save.

Prices come from a `PriceTable` (list prices, less any negotiated discount). Anything the
table cannot price comes back with `unknown` set to the reason and no amount: an unknown is
never reported as $0. Amounts are USD per month of `table.hours_per_month` hours.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from backend.domain.price_table import (
    PriceNotFound,
    PriceTable,
    PriceTableError,
    recommend_instance_type,
)
from backend.domain.resources import Resource, ResourceKind

# fmt: off
__all__ = ["Cost", "PriceNotFound", "PriceTable", "PriceTableError", "Savings",
           "estimate_savings", "monthly_cost", "recommend_instance_type"]
# fmt: on


@dataclass(frozen=True, slots=True)
class Cost:
    """A monthly cost, or the reason there is none. Exactly one of the two is set."""

    monthly_usd: float | None
    unknown: str | None = None

    def __post_init__(self) -> None:
        if (self.monthly_usd is None) == (self.unknown is None):
            raise ValueError("a Cost has either monthly_usd or unknown, not both or neither")


@dataclass(frozen=True, slots=True)
class Savings:
    """Monthly savings of one action (negative when the action costs more), or why unknown."""

    monthly_usd: float | None
    explanation: str
    unknown: str | None = None


_EC2_BILLED: Final = frozenset({"pending", "running"})
_EC2_NOT_BILLED: Final = frozenset({"stopping", "stopped", "shutting-down", "terminated"})
_RDS_STOPPED: Final = frozenset({"stopping", "stopped"})
_GP3_FREE_IOPS: Final = 3000
_GP3_FREE_MBPS: Final = 125


def gp2_baseline_on_gp3(size_gib: Any) -> tuple[int, int]:
    """The gp3 IOPS and MB/s that keep a gp2 volume's baseline: gp2 gives 3 IOPS per GiB
    (up to 16,000), and 250 MB/s sustained from 334 GiB (between 170 and 334 only while
    burst credits last); gp3 includes 3,000 and 125."""
    size = size_gib if isinstance(size_gib, int | float) else 0
    iops = max(_GP3_FREE_IOPS, min(16000, 3 * int(size)))
    return iops, (250 if size >= 334 else _GP3_FREE_MBPS)


# Provisioned IOPS: (tier ceiling, price field); io2 gets cheaper per tier.
_IOPS_TIERS: Final[Mapping[str, tuple[tuple[int | None, str], ...]]] = {
    "io1": ((None, "iops_month"),),
    "io2": ((32_000, "iops_month"), (64_000, "iops_month_32k_64k"), (None, "iops_month_over_64k")),
}
_DECIMALS: Final = 4  # hundredths of a cent: hides float noise, keeps sums exact enough
_NO_PARAMS: Final[Mapping[str, Any]] = MappingProxyType({})


# Everything a price reads besides kind, region and state: dotted attribute paths. Pricing
# many resources at once prices each distinct combination of these once (tests hold the
# price model to this list).
PRICING_FIELDS: dict[ResourceKind, tuple[str, ...]] = {
    ResourceKind.EC2_INSTANCE: (
        "InstanceType",
        "Platform",
        "PlatformDetails",
        "InstanceLifecycle",
        "Placement.Tenancy",
    ),
    ResourceKind.EBS_VOLUME: ("VolumeType", "Size", "Iops", "Throughput"),
    ResourceKind.EBS_SNAPSHOT: ("VolumeSize", "StorageTier"),
    ResourceKind.AMI: (),
    ResourceKind.ELASTIC_IP: (),
    ResourceKind.LOAD_BALANCER: ("Type",),
    ResourceKind.RDS_INSTANCE: (
        "DBInstanceClass",
        "Engine",
        "MultiAZ",
        "AllocatedStorage",
        "StorageType",
        "Iops",
        "StorageThroughput",
    ),
}

BOOLEAN_FIELDS = frozenset({"MultiAZ"})


def pricing_stub(kind: ResourceKind, region: str, state: str, values: Sequence[Any]) -> Resource:
    """A resource holding only the pricing fields (`values` in PRICING_FIELDS order)."""
    attributes: dict[str, Any] = {}
    for path, value in zip(PRICING_FIELDS[kind], values, strict=True):
        if value is None:
            continue
        *parents, leaf = path.split(".")
        if path in BOOLEAN_FIELDS and isinstance(value, int):
            value = bool(value)  # SQLite's json_extract reads JSON true as 1
        node = attributes
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return Resource(
        kind=kind,
        resource_id="pricing-stub",
        account_id="",
        region=region,
        state=state,
        attributes=attributes,
    )


def _money(value: float) -> str:
    return f"${value:,.2f}"


def _attr(resource: Resource, name: str, kind: type[Any] = str) -> Any:
    value = resource.attributes.get(name)
    if isinstance(value, bool) or not isinstance(value, kind):
        raise PriceNotFound(f"{resource.kind.value} {resource.resource_id} has no usable {name}")
    return value


def _off(table: PriceTable, kind: ResourceKind, amount: float) -> float:
    return amount * (1.0 - table.discount(kind))


# --- monthly cost, by kind -----------------------------------------------------------------


def _ec2_hourly(r: Resource, table: PriceTable, instance_type: str) -> float:
    # The table is Linux, shared tenancy, on-demand; anything else would be mispriced.
    platform = str(r.attributes.get("PlatformDetails") or "Linux/UNIX")
    if str(r.attributes.get("Platform", "")).lower() == "windows":
        platform = "Windows"
    if platform != "Linux/UNIX":
        raise PriceNotFound(f"no price for {platform} instances (the table is Linux/UNIX)")
    if r.attributes.get("InstanceLifecycle") == "spot":
        raise PriceNotFound("spot instance: the on-demand table does not apply")
    placement = r.attributes.get("Placement")
    tenancy = placement.get("Tenancy", "default") if isinstance(placement, Mapping) else "default"
    if tenancy != "default":
        raise PriceNotFound(f"no price for {tenancy} tenancy (table is shared tenancy)")
    return table.price(r.region, "ec2_hourly", instance_type)


def _ec2_billed(r: Resource) -> bool:
    if r.state in _EC2_BILLED:
        return True
    if r.state in _EC2_NOT_BILLED:
        return False
    raise PriceNotFound(f"unknown EC2 state {r.state!r} for {r.resource_id}")


def _ec2_monthly(r: Resource, table: PriceTable) -> float:
    """Compute only: a stopped instance costs nothing here; its volumes are priced as volumes."""
    if not _ec2_billed(r):
        return 0.0
    hourly = _ec2_hourly(r, table, _attr(r, "InstanceType"))
    return _off(table, r.kind, hourly * table.hours_per_month)


def _volume_monthly(
    r: Resource,
    table: PriceTable,
    volume_type: str | None = None,
    iops: int | None = None,
    throughput: int | None = None,
) -> float:
    """Provisioned size, plus provisioned IOPS and throughput where AWS charges for them."""
    vtype = volume_type or _attr(r, "VolumeType")
    size = _attr(r, "Size", int)
    total = size * table.price(r.region, "ebs", vtype, "gb_month")
    if vtype == "gp3":
        iops = iops if iops is not None else r.attributes.get("Iops") or _GP3_FREE_IOPS
        mbps = throughput if throughput is not None else r.attributes.get("Throughput") or 0
        if iops > _GP3_FREE_IOPS:
            total += (iops - _GP3_FREE_IOPS) * table.price(r.region, "ebs", "gp3", "iops_month")
        if mbps > _GP3_FREE_MBPS:
            total += (mbps - _GP3_FREE_MBPS) * table.price(r.region, "ebs", "gp3", "mbps_month")
    elif vtype in _IOPS_TIERS:
        iops = iops if iops is not None else _attr(r, "Iops", int)
        floor = 0
        for ceiling, name in _IOPS_TIERS[vtype]:
            in_tier = iops - floor if ceiling is None else min(iops, ceiling) - floor
            if in_tier > 0:
                total += in_tier * table.price(r.region, "ebs", vtype, name)
            floor = ceiling or floor
    return _off(table, r.kind, total)


def _snapshot_monthly(r: Resource, table: PriceTable, size: int | None = None) -> float:
    """VolumeSize x the snapshot price: an UPPER BOUND.

    AWS bills a standard-tier snapshot for the blocks it stores, incrementally, so a snapshot
    of a mostly empty volume, or one sharing blocks with older snapshots, costs less.
    """
    gb = size if size is not None else _attr(r, "VolumeSize", int)
    tier = str(r.attributes.get("StorageTier") or "standard").lower()
    kind_off = ResourceKind.EBS_SNAPSHOT
    return _off(table, kind_off, gb * table.price(r.region, "snapshot_gb_month", tier))


def _address_monthly(r: Resource, table: PriceTable) -> float:
    # Every public IPv4 address is charged since Feb 2024, associated or not.
    return _off(table, r.kind, table.price(r.region, "public_ipv4_hourly") * table.hours_per_month)


def _lb_monthly(r: Resource, table: PriceTable) -> float:
    """The fixed hourly charge only; LCU/NLCU usage charges are not included."""
    lb_type = _attr(r, "Type").lower()
    return _off(table, r.kind, table.price(r.region, "elb_hourly", lb_type) * table.hours_per_month)


def _rds_az_factor(r: Resource) -> int:
    return 2 if r.attributes.get("MultiAZ") is True else 1  # Multi-AZ runs and stores twice


def _rds_compute(r: Resource, table: PriceTable, db_class: str | None = None) -> float:
    if r.state in _RDS_STOPPED:
        return 0.0
    engine = _attr(r, "Engine").lower()
    hourly = table.price(r.region, "rds_hourly", engine, db_class or _attr(r, "DBInstanceClass"))
    return _off(table, r.kind, hourly * table.hours_per_month * _rds_az_factor(r))


def _rds_storage(r: Resource, table: PriceTable) -> float:
    """Billed even while stopped; Multi-AZ storage is billed twice."""
    stype = _attr(r, "StorageType").lower()
    gb = _attr(r, "AllocatedStorage", int)
    total = gb * table.price(r.region, "rds_storage", stype, "gb_month")
    iops = r.attributes.get("Iops") or 0
    mbps = r.attributes.get("StorageThroughput") or 0
    if stype in ("io1", "io2"):
        total += iops * table.price(r.region, "rds_storage", stype, "iops_month")
    elif stype == "gp3":
        # RDS gp3 includes 3000 IOPS / 125 MB/s, or 12000 / 500 from 400 GB up
        free_iops, free_mbps = (12_000, 500) if gb >= 400 else (3000, 125)
        if iops > free_iops:
            total += (iops - free_iops) * table.price(r.region, "rds_storage", "gp3", "iops_month")
        if mbps > free_mbps:
            total += (mbps - free_mbps) * table.price(r.region, "rds_storage", "gp3", "mbps_month")
    return _off(table, r.kind, total * _rds_az_factor(r))


_MONTHLY: Final[Mapping[ResourceKind, Callable[[Resource, PriceTable], float]]] = {
    ResourceKind.EC2_INSTANCE: _ec2_monthly,
    ResourceKind.EBS_VOLUME: _volume_monthly,
    ResourceKind.EBS_SNAPSHOT: _snapshot_monthly,
    ResourceKind.AMI: lambda r, t: 0.0,  # its snapshots are inventoried and priced as snapshots
    ResourceKind.ELASTIC_IP: _address_monthly,
    ResourceKind.LOAD_BALANCER: _lb_monthly,
    ResourceKind.RDS_INSTANCE: lambda r, t: _rds_compute(r, t) + _rds_storage(r, t),
}


def monthly_cost(resource: Resource, table: PriceTable) -> Cost:
    """What AWS bills for this resource per month, at list price less discounts.

    EC2 is compute only (0 when stopped); EBS volume is size plus provisioned IOPS and
    throughput; a snapshot is VolumeSize x price, an upper bound (AWS bills incremental
    stored blocks); an AMI is 0 (its snapshots are priced as snapshots); an Elastic IP is
    the public IPv4 charge; a load balancer is its fixed hourly part (no LCUs); RDS is
    instance hours (x2 Multi-AZ, 0 when stopped) plus storage.
    """
    try:
        return Cost(round(_MONTHLY[resource.kind](resource, table), _DECIMALS))
    except PriceNotFound as exc:
        return Cost(None, str(exc))


# --- savings -------------------------------------------------------------------------------

_NO_CHANGE: Final = frozenset(
    {"notify", "report", "mark", "mark-for-op", "unmark", "tag", "untag", "remove-tag"}
)


def estimate_savings(
    action: str,
    resource: Resource,
    table: PriceTable,
    params: Mapping[str, Any] = _NO_PARAMS,
) -> Savings:
    """Monthly savings of doing `action` to `resource` (negative: it would cost more).

    stop (ec2, rds), terminate (ec2), delete (ebs, ebs-snapshot, elb, ami, rds, elastic-ip),
    release (elastic-ip), modify-volume (ebs), resize/rightsize (ec2, rds); notify, report,
    mark, tag and the like save 0. Params: `backup` (delete; default True: the snapshot kept
    is netted off), `volume-type`, `iops`, `throughput` (modify-volume), `instance-type`
    (resize; default: `recommend_instance_type`, given `cpu-average`), `instance-class` (rds).
    """
    name = action.strip().lower().replace("_", "-")
    if name in _NO_CHANGE:
        return Savings(0.0, f"{name} does not change what AWS bills")
    handler = _SAVINGS.get((name, resource.kind))
    if handler is None:
        reason = f"no savings estimate for {name!r} on {resource.kind.value}"
        return Savings(None, reason, reason)
    try:
        amount, why = handler(resource, table, params)
    except PriceNotFound as exc:
        return Savings(None, f"could not price {name} of {resource.resource_id}: {exc}", str(exc))
    return Savings(round(amount, _DECIMALS), why)


_Handler = Callable[[Resource, PriceTable, Mapping[str, Any]], tuple[float, str]]


def _stop_ec2(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    cost = _ec2_monthly(r, t)
    if not cost:
        return 0.0, f"{r.resource_id} is {r.state}: no compute is billed now"
    return cost, (
        f"{_attr(r, 'InstanceType')} compute, {_money(cost)}/month; "
        "its EBS volumes stay billed (priced as volumes)"
    )


def _terminate_ec2(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    cost = _ec2_monthly(r, t)
    why = f"{_attr(r, 'InstanceType')} compute, {_money(cost)}/month" if cost else "no compute"
    # A backup AMI's snapshot sizes are not in describe_instances; once taken, they are
    # inventoried and priced as snapshots, so they are not netted off here.
    return cost, (
        f"{why}; volumes deleted with it are priced and saved as volumes; a backup AMI's "
        "snapshots add cost that is not subtracted here"
    )


def _stop_rds(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    cost = _rds_compute(r, t)
    if not cost:
        return 0.0, f"{r.resource_id} is {r.state}: no instance hours are billed now"
    return cost, (
        f"instance hours, {_money(cost)}/month; storage stays billed, and AWS "
        "restarts a stopped DB instance after 7 days"
    )


def _delete_volume(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    cost = _volume_monthly(r, t)
    if not p.get("backup", True):
        return cost, f"the volume's {_money(cost)}/month, no snapshot kept"
    snap = _snapshot_monthly(r, t, size=_attr(r, "Size", int))
    return cost - snap, (
        f"the volume's {_money(cost)}/month less its backup snapshot, "
        f"at most {_money(snap)}/month (incremental storage may be less)"
    )


def _whole(label: str) -> _Handler:
    def handler(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
        cost = _MONTHLY[r.kind](r, t)
        return cost, f"{label}: {_money(cost)}/month"

    return handler


def _delete_rds(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    cost = _rds_compute(r, t) + _rds_storage(r, t)
    if not p.get("backup", True):
        return cost, f"instance and storage, {_money(cost)}/month, no final snapshot"
    gb = _attr(r, "AllocatedStorage", int)
    snap = _off(t, r.kind, gb * t.price(r.region, "rds_backup_gb_month"))
    return cost - snap, (
        f"instance and storage, {_money(cost)}/month, less the final "
        f"snapshot, at most {_money(snap)}/month"
    )


def _modify_volume(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    target = p.get("volume_type")
    if not isinstance(target, str) or not target:
        raise PriceNotFound("modify-volume needs the parameter volume-type (e.g. gp3)")
    iops, mbps = p.get("iops"), p.get("throughput")
    current_type = _attr(r, "VolumeType")
    if target == "gp3" and current_type == "gp2":
        # what the change provisions: the gp2 volume's own baseline (more than gp3's free
        # 3,000 IOPS above 1,000 GiB, more MB/s above 170 GiB), priced as such
        keep_iops, keep_mbps = gp2_baseline_on_gp3(r.attributes.get("Size"))
        iops, mbps = iops or keep_iops, mbps or keep_mbps
    elif target == "gp3" and current_type != "gp3":
        iops, mbps = iops or _GP3_FREE_IOPS, mbps or _GP3_FREE_MBPS
    now = _volume_monthly(r, t)
    then = _volume_monthly(r, t, target, iops, mbps)
    return now - then, (
        f"{current_type} {_money(now)}/month -> {target} {_money(then)}/month "
        f"at the same size"
        + (f", {iops} IOPS" if iops else "")
        + (f", {mbps} MB/s" if mbps else "")
    )


def _resize_ec2(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    current = _attr(r, "InstanceType")
    cpu = p.get("cpu_average")
    target = p.get("instance_type") or recommend_instance_type(
        current, cpu if isinstance(cpu, int | float) else None, table=t, region=r.region
    )
    if not target or target == current:
        return 0.0, f"no cheaper instance type recommended for {current}"
    if not _ec2_billed(r):
        return 0.0, f"{r.resource_id} is {r.state}: no compute is billed now"
    hours = t.hours_per_month
    now = _off(t, r.kind, _ec2_hourly(r, t, current) * hours)
    then = _off(t, r.kind, _ec2_hourly(r, t, str(target)) * hours)
    return now - then, f"{current} {_money(now)}/month -> {target} {_money(then)}/month"


def _resize_rds(r: Resource, t: PriceTable, p: Mapping[str, Any]) -> tuple[float, str]:
    current = _attr(r, "DBInstanceClass")
    target = p.get("instance_class") or p.get("instance_type")
    if not target or target == current:
        return 0.0, f"no target instance class given for {current}"
    now, then = _rds_compute(r, t), _rds_compute(r, t, str(target))
    return now - then, f"{current} {_money(now)}/month -> {target} {_money(then)}/month"


_SAVINGS: Final[Mapping[tuple[str, ResourceKind], _Handler]] = {
    ("stop", ResourceKind.EC2_INSTANCE): _stop_ec2,
    ("stop", ResourceKind.RDS_INSTANCE): _stop_rds,
    ("terminate", ResourceKind.EC2_INSTANCE): _terminate_ec2,
    ("delete", ResourceKind.EBS_VOLUME): _delete_volume,
    ("delete", ResourceKind.EBS_SNAPSHOT): _whole("the snapshot, an upper bound"),
    ("delete", ResourceKind.LOAD_BALANCER): _whole("the fixed hourly charge (LCUs not included)"),
    ("delete", ResourceKind.AMI): lambda r, t, p: (
        0.0,
        "an AMI itself is free; its snapshots are priced as snapshots",
    ),
    ("delete", ResourceKind.RDS_INSTANCE): _delete_rds,
    ("delete", ResourceKind.ELASTIC_IP): _whole("the public IPv4 charge"),
    ("release", ResourceKind.ELASTIC_IP): _whole("the public IPv4 charge"),
    ("modify-volume", ResourceKind.EBS_VOLUME): _modify_volume,
    ("resize", ResourceKind.EC2_INSTANCE): _resize_ec2,
    ("rightsize", ResourceKind.EC2_INSTANCE): _resize_ec2,
    ("resize", ResourceKind.RDS_INSTANCE): _resize_rds,
    ("rightsize", ResourceKind.RDS_INSTANCE): _resize_rds,
}
