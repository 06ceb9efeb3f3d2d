"""metric_requests and evaluate, on small cases and on a fleet shaped like the benchmark's."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from backend.domain.policy import (
    EvaluationContext,
    evaluate,
    load_pack,
    load_text,
    metric_requests,
)
from backend.domain.resources import MetricSpec, Resource

from .helpers import ACCOUNT, NOW, ctx, policy_yaml, res

REPO = Path(__file__).resolve().parents[4]
CPU_AVG = MetricSpec("AWS/EC2", "CPUUtilization", "Average", 14)
CPU_MAX = MetricSpec("AWS/EC2", "CPUUtilization", "Maximum", 14)
IDLE = {"type": "metrics", "name": "CPUUtilization", "statistic": "Average", "days": 14,
        "op": "lt", "value": 5}  # fmt: skip

TWO_POLICIES = """\
policies:
  - name: idle
    resource: ec2
    filters:
      - "State.Name": running
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, value: 5}
  - name: low
    resource: ec2
    filters:
      - {type: value, key: "tag:env", op: ne, value: prod}
      - {type: metrics, name: CPUUtilization, statistic: Average, days: 14, value: 20}
      - {type: metrics, name: CPUUtilization, statistic: Maximum, days: 14, value: 50}
  - name: disabled
    resource: ec2
    enabled: false
    filters:
      - {type: metrics, name: NetworkIn, statistic: Sum, days: 7, value: 5}
  - name: no-metrics
    resource: ebs
    filters: [{VolumeType: gp2}]
"""


def ec2(rid: str, state: str = "running", env: str = "dev") -> Resource:
    return res("ec2", rid, state, tags={"env": env}, attributes={"State": {"Name": state}})


def test_metric_requests_only_for_resources_past_the_cheap_filters() -> None:
    pack = load_text(TWO_POLICIES)
    fleet = [
        ec2("i-run-dev"),
        ec2("i-stop-dev", "stopped"),
        ec2("i-run-prod", env="prod"),
        ec2("i-stop-prod", "stopped", "prod"),
        res("ebs", "vol-1", "available"),
    ]
    requests = metric_requests(pack, fleet, ctx())
    assert requests == {
        # wanted by both `idle` and `low`: still one request per resource
        CPU_AVG: {"i-run-dev", "i-stop-dev", "i-run-prod"},
        CPU_MAX: {"i-run-dev", "i-stop-dev"},
    }


def test_metric_requests_skip_what_is_known_or_settled() -> None:
    pack = load_text(TWO_POLICIES)
    fleet = [ec2("i-1"), ec2("i-2")]
    # i-1's average is high: `idle` is FALSE and `low` is FALSE without its maximum
    known = {("i-1", CPU_AVG): 90.0}
    assert metric_requests(pack, fleet, ctx(known)) == {CPU_AVG: {"i-2"}, CPU_MAX: {"i-2"}}
    known = {("i-1", CPU_AVG): 1.0, ("i-2", CPU_AVG): 1.0}
    assert metric_requests(pack, fleet, ctx(known)) == {CPU_MAX: {"i-1", "i-2"}}
    assert metric_requests(pack, [], ctx()) == {}


def test_evaluate_selects_true_only_in_pack_order_with_evidence() -> None:
    pack = load_text(TWO_POLICIES)
    fleet = [
        ec2("i-1"),
        ec2("i-2"),
        ec2("i-3", env="prod"),
        res("ebs", "vol-1", "in-use", attributes={"VolumeType": "gp2"}),
    ]
    metrics: dict[tuple[str, MetricSpec], float | None] = {
        ("i-1", CPU_AVG): 2.0, ("i-1", CPU_MAX): 30.0,
        ("i-2", CPU_AVG): 10.0,  # i-2's maximum is not fetched: `low` stays UNKNOWN
        ("i-3", CPU_AVG): 1.0,
    }  # fmt: skip
    matches = evaluate(pack, fleet, ctx(metrics))
    assert [(m.policy.name, m.resource.resource_id) for m in matches] == [
        ("idle", "i-1"),
        ("idle", "i-3"),
        ("low", "i-1"),
        ("no-metrics", "vol-1"),
    ]
    assert matches[2].evidence == {
        "tag:env": "dev",
        "metric.CPUUtilization.Average.14d": 2.0,
        "metric.CPUUtilization.Maximum.14d": 30.0,
    }
    assert matches[3].evidence == {"VolumeType": "gp2"}


def test_unknown_never_matches() -> None:
    pack = load_text(policy_yaml([{"not": [IDLE]}]))
    assert evaluate(pack, [ec2("i-1")], ctx()) == []
    assert len(evaluate(pack, [ec2("i-1")], ctx({("i-1", CPU_AVG): 50.0}))) == 1


# --- a fleet shaped like /work/shared/bench/seed_account.py, traps included -----------------

AMAZON = "801119661308"
TYPES = ("m5.large", "t3.medium", "c5.xlarge", "t2.medium", "m4.large")
REGIONS = ("us-east-1", "us-west-2")
ENVS = ("prod", "prod", "dev", "staging", "test")
REFERENCE_NAMES = (
    "idle-nonprod-ec2-stop", "previous-generation-ec2", "unattached-ebs-delete", "gp2-to-gp3",
    "orphan-snapshots", "unassociated-eip-release", "idle-alb-delete", "idle-rds-stop",
)  # fmt: skip


Metrics = dict[tuple[str, MetricSpec], float | None]
ALB_REQUESTS = MetricSpec("AWS/ApplicationELB", "RequestCount", "Sum", 7)
RDS_CONNECTIONS = MetricSpec("AWS/RDS", "DatabaseConnections", "Maximum", 7)


class Fleet:
    """A fleet built by the seeder's rules, with the ids each reference policy must select."""

    def __init__(self, rnd: random.Random) -> None:
        self.rnd = rnd
        self.resources: list[Resource] = []
        self.metrics: Metrics = {}
        self.truth: dict[str, set[str]] = {name: set() for name in REFERENCE_NAMES}
        self.count = 0
        for region in REGIONS:
            self.region = region
            self.instances()
            self.volumes()
            self.snapshots()
            self.addresses_and_balancers()
            self.databases()

    def new_id(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}-{self.count:08x}"

    def add(self, kind: str, rid: str, state: str, tags: dict[str, str] | None = None,
            **attributes: Any) -> None:  # fmt: skip
        self.resources.append(res(kind, rid, state, tags, attributes, region=self.region))

    def instances(self) -> None:
        rnd = self.rnd
        for _ in range(60):
            iid, env, itype = self.new_id("i"), rnd.choice(ENVS), rnd.choice(TYPES)
            tags = {"env": env, "Name": f"{env}-svc"}
            if rnd.random() < 0.1:
                tags["finops:opt-out"] = "true"
            state = "stopped" if rnd.random() < 0.15 else "running"
            self.add("ec2", iid, state, tags, InstanceType=itype, State={"Name": state})
            cpu = rnd.uniform(0.2, 3.5) if rnd.random() < 0.4 else rnd.uniform(12, 85)
            # stopped instances have no datapoints; a few running ones miss them too
            no_data = state == "stopped" or rnd.random() < 0.05
            self.metrics[(iid, CPU_AVG)] = None if no_data else cpu
            free = "finops:opt-out" not in tags
            if state == "running" and env != "prod" and free and not no_data and cpu < 5:
                self.truth["idle-nonprod-ec2-stop"].add(iid)
            if itype.startswith(("t2.", "m4.", "c4.", "r4.")) and free:
                self.truth["previous-generation-ec2"].add(iid)

    def volumes(self) -> None:
        for _ in range(30):
            vid, vtype = self.new_id("vol"), self.rnd.choice(("gp2", "gp2", "gp3", "io1", "st1"))
            tags = {"finops:opt-out": "true"} if self.rnd.random() < 0.1 else {}
            attached = self.rnd.random() < 0.3
            state = "in-use" if attached else "available"
            attachments = [{"InstanceId": "i-x"}] if attached else []
            self.add("ebs", vid, state, tags, VolumeType=vtype, State=state,
                     Attachments=attachments)  # fmt: skip
            if not attached and not tags:
                self.truth["unattached-ebs-delete"].add(vid)
            if vtype == "gp2" and not tags:
                self.truth["gp2-to-gp3"].add(vid)

    def snapshots(self) -> None:
        for i in range(10):
            vid, sid = self.new_id("vol"), self.new_id("snap")
            self.add("ebs-snapshot", sid, "completed", OwnerId=ACCOUNT, VolumeId=vid)
            if i % 2 == 0:
                self.truth["orphan-snapshots"].add(sid)  # its volume was deleted
            else:
                self.add("ebs", vid, "available", VolumeType="gp3", State="available")
                self.truth["unattached-ebs-delete"].add(vid)
        # moto's trap: public AMIs whose snapshots' volumes are gone, owned by Amazon
        for _ in range(3):
            sid = self.new_id("snap")
            self.add("ebs-snapshot", sid, "completed", OwnerId=AMAZON, VolumeId="vol-gone")
            self.add("ami", self.new_id("ami"), "available", OwnerId=AMAZON,
                     BlockDeviceMappings=[{"Ebs": {"SnapshotId": sid}}])  # fmt: skip
        # our own AMI's snapshot, whose volume is gone: backs an AMI, so not an orphan
        sid = self.new_id("snap")
        self.add("ebs-snapshot", sid, "completed", OwnerId=ACCOUNT, VolumeId="vol-gone")
        mappings = [{"Ebs": {"SnapshotId": sid}}, {"VirtualName": "ephemeral0"}]
        self.add("ami", self.new_id("ami"), "available", OwnerId=ACCOUNT,
                 BlockDeviceMappings=mappings)  # fmt: skip

    def addresses_and_balancers(self) -> None:
        for i in range(6):
            aid = self.new_id("eipalloc")
            if i % 2 == 0:
                self.add("elastic-ip", aid, "associated", AssociationId=self.new_id("eipassoc"))
            else:
                self.add("elastic-ip", aid, "unassociated")
                self.truth["unassociated-eip-release"].add(aid)
        prefix = f"arn:aws:elasticloadbalancing:{self.region}:{ACCOUNT}:loadbalancer"
        for i in range(6):
            arn = f"{prefix}/app/a{i}/{self.new_id('x')}"
            self.add("elb", arn, "active", Type="application")
            busy = i % 3 != 0
            requests = None if i == 5 else float(50_000 if busy else self.rnd.randint(0, 30))
            self.metrics[(arn, ALB_REQUESTS)] = requests
            if requests is None or requests < 100:  # no data counts as 0
                self.truth["idle-alb-delete"].add(arn)
        nlb = f"{prefix}/net/n/{self.new_id('x')}"
        self.add("elb", nlb, "active", Type="network")  # idle, but not an application LB
        self.metrics[(nlb, ALB_REQUESTS)] = None

    def databases(self) -> None:
        for i in range(8):
            name, env = f"db-{self.region}-{i}", "prod" if i % 4 == 0 else "dev"
            self.add("rds", name, "available", {"env": env}, DBInstanceIdentifier=name)
            connections = 0.0 if i % 2 else float(self.rnd.randint(3, 40))
            self.metrics[(name, RDS_CONNECTIONS)] = connections
            if connections < 1 and env != "prod":
                self.truth["idle-rds-stop"].add(name)


def test_reference_pack_selects_exactly_the_truth() -> None:
    pack = load_pack([REPO / "bench" / "reference-pack.yml"])
    for seed in range(5):
        built = Fleet(random.Random(seed))
        fleet, all_metrics, truth = built.resources, built.metrics, built.truth
        base = EvaluationContext.from_resources(fleet, now=NOW)
        # fetch only what metric_requests asks for, as a run would
        requests = metric_requests(pack, fleet, base)
        fetched = {
            (rid, spec): all_metrics.get((rid, spec))
            for spec, ids in requests.items()
            for rid in ids
        }
        selected: dict[str, set[str]] = {name: set() for name in truth}
        for match in evaluate(pack, fleet, base.with_metrics(fetched)):
            selected[match.policy.name].add(match.resource.resource_id)
        assert selected == truth
        # nothing was fetched for a stopped, prod or opted-out instance
        cpu_asked = requests.get(CPU_AVG, set())
        for r in fleet:
            if r.kind.value == "ec2" and (
                r.state != "running" or r.tags["env"] == "prod" or "finops:opt-out" in r.tags
            ):
                assert r.resource_id not in cpu_asked


def test_default_pack_runs_on_the_same_fleet() -> None:
    pack = load_pack([REPO / "policies"])
    built = Fleet(random.Random(1))
    fleet, all_metrics = built.resources, built.metrics
    base = EvaluationContext.from_resources(fleet, now=NOW)
    requests = metric_requests(pack, fleet, base)
    fetched = {
        (rid, spec): all_metrics.get((rid, spec), 30.0)
        for spec, ids in requests.items()
        for rid in ids
    }
    names = {m.policy.name for m in evaluate(pack, fleet, base.with_metrics(fetched))}
    assert {
        "idle-nonprod-ec2-stop",
        "unattached-ebs-delete",
        "gp2-to-gp3",
        "orphan-snapshots",
        "unassociated-eip-release",
        "idle-alb-delete",
    } <= names
