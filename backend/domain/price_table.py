"""The price table: list prices by region, plus a customer's negotiated discounts.

The shipped table lives in `backend/data/prices.json`. Every leaf of a region's sections is
a price in USD (per hour, per GB-month, per IOPS-month ...); `null` means "not offered in
this region". A region may name a `base` region and a `multiplier` (one number, or one per
section): a price it does not list is then the base price times the section's multiplier.
A region that is not in the table has no prices at all: lookups fail, they never return 0.

`recommend_instance_type` lives here because it only ever suggests types the table prices.
"""

from __future__ import annotations

import functools
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from backend.domain.resources import ResourceKind


class PriceTableError(ValueError):
    """The table or an override file is malformed; the message starts with the bad key."""


class PriceNotFound(LookupError):  # noqa: N818 - reads as a lookup outcome, not a crash
    """No price for this item in this region; the message says which and why."""


# --- schema ------------------------------------------------------------------------------

_PRICE: Final = "price"


@dataclass(frozen=True, slots=True)
class _OpenMap:
    """A mapping whose keys are data (instance types, engines), each valued by `child`."""

    child: _Schema


_Schema: TypeAlias = "str | Mapping[str, _Schema] | _OpenMap"  # a leaf is the string _PRICE

_VOLUME_FIELDS: Final[Mapping[str, _Schema]] = {
    "gb_month": _PRICE,
    "iops_month": _PRICE,  # io1/io2 per provisioned IOPS; gp3 only above the free 3000
    "iops_month_32k_64k": _PRICE,  # io2 tier 2
    "iops_month_over_64k": _PRICE,  # io2 tier 3
    "mbps_month": _PRICE,  # gp3 only above the free 125 MB/s
}
_RDS_STORAGE_FIELDS: Final[Mapping[str, _Schema]] = {
    "gb_month": _PRICE,
    "iops_month": _PRICE,
    "mbps_month": _PRICE,
}
SECTIONS: Final[Mapping[str, _Schema]] = {
    "ec2_hourly": _OpenMap(_PRICE),  # instance type -> USD/hour
    "ebs": _OpenMap(_VOLUME_FIELDS),  # volume type -> fields
    "snapshot_gb_month": _OpenMap(_PRICE),  # storage tier (standard, archive) -> USD/GB-month
    "public_ipv4_hourly": _PRICE,
    "elb_hourly": _OpenMap(_PRICE),  # elbv2 Type -> USD/hour
    "rds_hourly": _OpenMap(_OpenMap(_PRICE)),  # engine -> class -> USD/hour, single-AZ
    "rds_storage": _OpenMap(_RDS_STORAGE_FIELDS),  # storage type -> fields, single-AZ
    "rds_backup_gb_month": _PRICE,
}
# Human names for messages: "no price for instance type x9.huge in us-east-1".
_LABELS: Final[Mapping[str, str]] = {
    "ec2_hourly": "instance type",
    "ebs": "EBS volume type",
    "snapshot_gb_month": "snapshot storage tier",
    "public_ipv4_hourly": "public IPv4 address",
    "elb_hourly": "load balancer type",
    "rds_hourly": "RDS engine and class",
    "rds_storage": "RDS storage type",
    "rds_backup_gb_month": "RDS backup storage",
}
_TOP_KEYS: Final = frozenset({"source", "as_of", "currency", "notes", "hours_per_month", "regions"})
_REGION_META: Final = frozenset({"base", "multiplier", "note"})
_ALL_KINDS: Final = "*"
_ABSENT: Final = object()  # a section the region does not list (null means "not offered")


# --- the table ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Region:
    sections: Mapping[str, Any]
    base: str | None
    multiplier: Mapping[str, float]


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Validated list prices by region, and discounts by resource kind (or `*`)."""

    hours_per_month: float
    source: str
    as_of: str
    regions: Mapping[str, _Region] = field(repr=False)
    discounts: Mapping[str, float] = field(default_factory=lambda: MappingProxyType({}))
    _raw: Mapping[str, Any] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PriceTable:
        if not isinstance(data, Mapping):
            raise PriceTableError(f"table: expected a mapping, got {type(data).__name__}")
        raw = _plain(data)  # a private copy: the caller's later edits must not reach us
        for key in raw:
            if key not in _TOP_KEYS:
                raise PriceTableError(f"{key}: unknown key; expected one of {sorted(_TOP_KEYS)}")
        if raw.get("currency", "USD") != "USD":
            raise PriceTableError(f"currency: only USD is supported, got {raw['currency']!r}")
        hours = _number(raw.get("hours_per_month"), "hours_per_month", allow_none=False)
        if hours is None or hours <= 0:
            raise PriceTableError("hours_per_month: must be a positive number")
        regions_data = raw.get("regions")
        if not isinstance(regions_data, Mapping) or not regions_data:
            raise PriceTableError("regions: expected a non-empty mapping of region -> prices")
        regions = {
            name: _parse_region(name, body, regions_data) for name, body in regions_data.items()
        }
        return cls(
            hours_per_month=hours,
            source=str(raw.get("source", "")),
            as_of=str(raw.get("as_of", "")),
            regions=MappingProxyType(regions),
            _raw=MappingProxyType(raw),
        )

    @classmethod
    def shipped(cls) -> PriceTable:
        """The table shipped in backend/data/prices.json (loaded once, on first use)."""
        return _shipped()

    def with_overrides(self, data: Mapping[str, Any]) -> PriceTable:
        """Apply a negotiated-price file: `{"discounts": {...}, "prices": {...}}`.

        `discounts` maps a resource kind (`ec2`, `ebs`, `ebs-snapshot`, `elastic-ip`, `elb`,
        `rds`, or a Custodian alias) or `*` to a fraction off list price; a kind's own entry
        wins over `*`. `prices` has the table's shape and replaces or adds any part of it.
        """
        if not isinstance(data, Mapping):
            raise PriceTableError(f"overrides: expected a mapping, got {type(data).__name__}")
        for key in data:
            if key not in ("discounts", "prices"):
                raise PriceTableError(f"{key}: unknown override key; expected discounts, prices")
        table = self
        if "prices" in data:
            prices = data["prices"]
            if not isinstance(prices, Mapping):
                raise PriceTableError("prices: expected a mapping shaped like the price table")
            try:
                table = PriceTable.from_mapping(_deep_merge(self._raw, prices))
            except PriceTableError as exc:  # the base table was valid, so the override is bad
                raise PriceTableError(f"prices.{exc}") from None
        discounts = dict(self.discounts)
        discounts.update(_parse_discounts(data.get("discounts", {})))
        return PriceTable(
            hours_per_month=table.hours_per_month,
            source=table.source,
            as_of=table.as_of,
            regions=table.regions,
            discounts=MappingProxyType(discounts),
            _raw=table._raw,
        )

    def discount(self, kind: ResourceKind) -> float:
        """The fraction off list price for this kind (0.0 when none applies)."""
        return self.discounts.get(kind.value, self.discounts.get(_ALL_KINDS, 0.0))

    def price(self, region: str, section: str, *keys: str) -> float:
        """The list price (before discounts) at `section/keys` in `region`.

        Raises PriceNotFound, with a reason, when the region, item or price is missing.
        """
        what = " ".join((_LABELS.get(section, section), *keys))
        entry = self.regions.get(region)
        if entry is None:
            known = ", ".join(sorted(self.regions))
            raise PriceNotFound(f"region {region or '(none)'} is not in the price table ({known})")
        found, value = _walk(entry.sections.get(section, _ABSENT), keys)
        factor = 1.0
        if not found and entry.base is not None and section in entry.multiplier:
            found, value = _walk(self.regions[entry.base].sections.get(section, _ABSENT), keys)
            factor = entry.multiplier[section]
        if not found:
            raise PriceNotFound(f"no price for {what} in {region}")
        if value is None:
            raise PriceNotFound(f"{what} is not offered in {region}")
        return float(value) * factor

    def names(self, region: str, section: str) -> frozenset[str]:
        """The priced (offered) first-level keys of a section, e.g. instance types."""
        entry = self.regions.get(region)
        if entry is None:
            return frozenset()
        layers = [entry.sections.get(section)]
        if entry.base is not None and section in entry.multiplier:
            layers.insert(0, self.regions[entry.base].sections.get(section))
        merged: dict[str, Any] = {}
        for layer in layers:  # the region's own entries win over its base's
            merged.update(layer if isinstance(layer, Mapping) else {})
        return frozenset(k for k, v in merged.items() if v is not None)


@functools.cache
def _shipped() -> PriceTable:
    # Beside the package, in editable and wheel installs alike.
    text = (Path(__file__).resolve().parents[1] / "data" / "prices.json").read_text("utf-8")
    return PriceTable.from_mapping(json.loads(text))


# --- validation --------------------------------------------------------------------------


def _parse_region(name: str, body: Any, regions: Mapping[str, Any]) -> _Region:
    where = f"regions.{name}"
    if not isinstance(body, Mapping):
        raise PriceTableError(f"{where}: expected a mapping")
    sections: dict[str, Any] = {}
    for key, value in body.items():
        if key in SECTIONS:
            sections[key] = _check(value, SECTIONS[key], f"{where}.{key}")
        elif key not in _REGION_META:
            raise PriceTableError(
                f"{where}.{key}: unknown section; expected one of "
                f"{sorted(SECTIONS)} or base, multiplier, note"
            )
    base = body.get("base")
    if base is not None:
        base_body = regions.get(base) if isinstance(base, str) else None
        if not isinstance(base_body, Mapping) or base == name or "base" in base_body:
            raise PriceTableError(f"{where}.base: must name another region that has no base")
    multiplier = _parse_multiplier(body.get("multiplier"), f"{where}.multiplier")
    if multiplier and base is None:
        raise PriceTableError(f"{where}.multiplier: needs a base region to multiply")
    return _Region(MappingProxyType(sections), base, MappingProxyType(multiplier))


def _parse_multiplier(value: Any, where: str) -> dict[str, float]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        factor = _number(value, where, allow_none=False)
        if not factor:
            raise PriceTableError(f"{where}: must be a positive number")
        return dict.fromkeys(SECTIONS, factor)
    out: dict[str, float] = {}
    for section, raw in value.items():
        if section not in SECTIONS:
            raise PriceTableError(f"{where}.{section}: unknown section")
        factor = _number(raw, f"{where}.{section}", allow_none=False)
        if not factor:
            raise PriceTableError(f"{where}.{section}: must be a positive number")
        out[section] = factor
    return out


def _check(value: Any, schema: _Schema, where: str) -> Any:
    """Validate `value` against `schema`; return a read-only copy."""
    if isinstance(schema, str):
        return _number(value, where, allow_none=True)
    if not isinstance(value, Mapping):
        raise PriceTableError(f"{where}: expected a mapping, got {type(value).__name__}")
    out: dict[str, Any] = {}
    for key, item in value.items():
        if isinstance(schema, _OpenMap):
            out[str(key)] = _check(item, schema.child, f"{where}.{key}")
        elif key in schema:
            out[key] = _check(item, schema[key], f"{where}.{key}")
        else:
            raise PriceTableError(f"{where}.{key}: unknown field; expected one of {sorted(schema)}")
    return MappingProxyType(out)


def _number(value: Any, where: str, *, allow_none: bool) -> float | None:
    if value is None and allow_none:
        return None  # null: not offered in this region
    # bool is an int subclass; True is never a price
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise PriceTableError(f"{where}: expected a number, got {value!r}")
    if value < 0:
        raise PriceTableError(f"{where}: must not be negative, got {value!r}")
    return float(value)


def _parse_discounts(data: Any) -> dict[str, float]:
    if not isinstance(data, Mapping):
        raise PriceTableError("discounts: expected a mapping of resource kind -> fraction")
    out: dict[str, float] = {}
    for key, value in data.items():
        where = f"discounts.{key}"
        if key == _ALL_KINDS:
            kind = _ALL_KINDS
        else:
            try:
                kind = ResourceKind.parse(str(key)).value
            except ValueError as exc:
                raise PriceTableError(f"{where}: {exc}") from None
        fraction = _number(value, where, allow_none=False)
        if fraction is None or fraction >= 1:
            raise PriceTableError(f"{where}: must be a fraction in [0, 1), e.g. 0.28 for 28%")
        out[kind] = fraction
    return out


def _deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = dict(base)
    for key, value in override.items():
        current = out.get(key)
        if isinstance(value, Mapping) and isinstance(current, Mapping):
            out[key] = _deep_merge(current, value)
        else:
            out[key] = value
    return out


def _plain(value: Any) -> Any:
    """A deep copy with every mapping as a dict and every list as a list."""
    if isinstance(value, Mapping):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    return value


def _walk(node: Any, keys: tuple[str, ...]) -> tuple[bool, float | None]:
    if node is _ABSENT:
        return False, None
    for key in keys:
        if not isinstance(node, Mapping) or key not in node:
            return False, None
        node = node[key]
    if isinstance(node, Mapping):  # stopped short of a price: the caller asked for a subtree
        return False, None
    return True, node


# --- recommendations -----------------------------------------------------------------------

# Previous generation -> current families to try, in order, at the same size. m1/m3 have
# sizes (small, medium) that m5 lacks; t3 is the current general-purpose type there.
# fmt: off
_SUCCESSORS: Final[Mapping[str, tuple[str, ...]]] = {
    "t1": ("t3",), "t2": ("t3",), "m1": ("m5", "t3"), "m3": ("m5", "t3"), "m4": ("m5",),
    "c1": ("c5",), "c3": ("c5",), "c4": ("c5",), "m2": ("r5",), "r3": ("r5",), "r4": ("r5",),
}
# fmt: on
_SMALL_SIZES: Final = ("nano", "micro", "small", "medium", "large", "xlarge")
_LOW_CPU_PERCENT: Final = 20.0


def _size_rank(size: str) -> int | None:
    if size in _SMALL_SIZES:
        return _SMALL_SIZES.index(size)
    match = re.fullmatch(r"(\d+)xlarge", size)
    return len(_SMALL_SIZES) + int(match.group(1)) if match else None


def recommend_instance_type(
    current: str,
    cpu_average: float | None = None,
    *,
    table: PriceTable | None = None,
    region: str = "us-east-1",
) -> str | None:
    """A cheaper EC2 type for `current`, or None when there is nothing to recommend.

    A previous generation moves to its current equivalent at the same size (t2 -> t3,
    m4 -> m5 ...). With `cpu_average` (percent) under 20, the result also goes one size
    down in its family, never below the family's smallest size in the table. Only types
    the table prices in `region` are recommended, so the saving can be computed.
    """
    table = table or PriceTable.shipped()
    offered = table.names(region, "ec2_hourly")
    family, _, size = current.partition(".")
    candidate = current
    for successor in _SUCCESSORS.get(family, ()):
        if f"{successor}.{size}" in offered:
            candidate = f"{successor}.{size}"
            break
    if cpu_average is not None and cpu_average < _LOW_CPU_PERCENT and candidate in offered:
        family, _, size = candidate.partition(".")
        rank = _size_rank(size)
        smaller = [
            (r, name)
            for name in offered
            if name.partition(".")[0] == family
            and (r := _size_rank(name.partition(".")[2])) is not None
            and rank is not None
            and r < rank
        ]
        if smaller:
            candidate = max(smaller)[1]  # the next size down, not the smallest
    return candidate if candidate != current else None
