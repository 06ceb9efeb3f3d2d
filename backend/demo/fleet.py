"""Seed a simulated AWS account for `finops demo`: a realistic fleet with known waste and traps.

The caller opens moto's `mock_aws()` and passes a client factory; this module only calls boto3.
`waste` follows the reference pack (bench/README.md) and is read back from the account where
moto adds resources of its own (root volumes, snapshots behind AMIs). `traps` are resources a
careless tool would act on; some match a waste rule on purpose (an idle ASG member), and only
safety rules can spare those.
"""

from __future__ import annotations

import datetime as dt
import random
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ClientFactory = Callable[[str, str], Any]  # (service_name, region) -> boto3 client

OPT_OUT_TAG = "finops:opt-out"
IDLE_CPU_BELOW = 5.0  # percent, 14-day average
IDLE_ALB_REQUESTS_BELOW = 100  # requests summed over 7 days
PREVIOUS_GENERATION = frozenset({"t2", "m4", "c4", "r4"})

KINDS = ("ec2", "ebs", "ebs-snapshot", "ami", "elastic-ip", "elb", "rds")
WASTE: tuple[str, ...] = ("idle-nonprod-ec2", "previous-generation-ec2", "unattached-ebs")
WASTE += ("gp2-volumes", "orphan-snapshots", "unassociated-eip", "idle-alb", "idle-rds")
TRAPS: tuple[str, ...] = ("prod-idle", "opted-out", "attached-volume", "ami-snapshot")
TRAPS += ("asg-member", "termination-protected")

TEAMS = ("payments", "checkout", "search", "data", "platform", "identity", "growth", "ml")
ROLES = ("api", "web", "worker", "etl", "cache", "batch", "cron")
ENVS = ("prod", "prod", "prod", "staging", "staging", "dev", "dev", "dev", "test")
CURRENT_TYPES = ("t3.small", "t3.medium", "t3.large", "m5.large", "m5.xlarge", "c5.large")
PREVIOUS_TYPES = ("t2.medium", "t2.large", "m4.large", "c4.large", "c4.xlarge")
SPECIAL_INSTANCES = 6  # per region: the hand-made traps, the ASG member included
MIN_INSTANCES_PER_REGION = SPECIAL_INSTANCES + 4
DAY = dt.timedelta(days=1)
DB_SETTINGS = {"AllocatedStorage": 20, "MasterUsername": "demo", "MasterUserPassword": "demo-1234"}


@dataclass(frozen=True)
class DemoFleet:
    regions: tuple[str, ...]
    counts: Mapping[str, int]  # resources the account holds per kind, after seeding
    traps: Mapping[str, tuple[str, ...]]  # named trap -> resource ids
    waste: Mapping[str, tuple[str, ...]]  # named waste category -> resource ids

    @property
    def total(self) -> int:
        return sum(self.counts.values())


def seed_demo_fleet(
    client: ClientFactory,
    regions: Sequence[str] = ("us-east-1", "eu-west-1"),
    *,
    seed: int = 42,
    instances_per_region: int = 120,
) -> DemoFleet:
    """Create the fleet. A seed fixes its shape; the ids are moto's own, so they vary."""
    if instances_per_region < MIN_INSTANCES_PER_REGION:
        raise ValueError(f"instances_per_region must be at least {MIN_INSTANCES_PER_REGION}")
    run = _Run(random.Random(seed), dt.datetime.now(dt.UTC).replace(microsecond=0))
    for region in regions:
        _RegionSeeder(client, region, run).seed(instances_per_region)
    return DemoFleet(
        regions=tuple(regions),
        counts={k: run.counts[k] for k in KINDS},
        traps={k: tuple(sorted(run.traps[k])) for k in TRAPS},
        waste={k: tuple(sorted(run.waste[k])) for k in WASTE},
    )


class _Run:
    """What the regions share: the random stream, the clock, and the answer so far."""

    def __init__(self, rnd: random.Random, now: dt.datetime) -> None:
        self.rnd, self.now = rnd, now
        self.counts: Counter[str] = Counter()
        self.waste: defaultdict[str, set[str]] = defaultdict(set)
        self.traps: defaultdict[str, set[str]] = defaultdict(set)

    def sort(self, rid: str, tags: Mapping[str, str], *rules: tuple[str, bool]) -> None:
        """File a resource under each waste rule it matches, or as a trap if it opted out."""
        for rule, matches in rules:
            if matches:
                (self.traps["opted-out"] if OPT_OUT_TAG in tags else self.waste[rule]).add(rid)


def _tag_list(tags: Mapping[str, str]) -> list[dict[str, str]]:
    return [{"Key": k, "Value": v} for k, v in tags.items()]


def _tag_map(tags: Iterable[Mapping[str, str]] | None) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in tags or ()}


def _specs(tags: Mapping[str, str], *types: str) -> list[dict[str, Any]]:
    return [{"ResourceType": t, "Tags": _tag_list(tags)} for t in types]


def _pages(client: Any, operation: str, key: str, **kw: Any) -> list[dict[str, Any]]:
    return [item for page in client.get_paginator(operation).paginate(**kw) for item in page[key]]


class _RegionSeeder:
    def __init__(self, client: ClientFactory, region: str, run: _Run) -> None:
        self.region, self.run, self.rnd = region, run, run.rnd
        self.ec2, self.cw = client("ec2", region), client("cloudwatch", region)
        self.elbv2, self.rds = client("elbv2", region), client("rds", region)
        self.autoscaling = client("autoscaling", region)
        self.azs = (f"{region}a", f"{region}b")
        self.image: dict[str, Any] = {}  # an Amazon Linux AMI, found by seed()
        self.instances: dict[str, tuple[str, dict[str, str]]] = {}  # id -> (type, tags)
        self.az: dict[str, str] = {}
        self.pool: list[str] = []  # ordinary instances, in launch order
        self.stopped: set[str] = set()
        self.cpu_avg: dict[str, float] = {}
        self.requests: dict[str, list[float]] = {}  # ALB arn -> daily RequestCount ([]: no data)
        self.connections: dict[str, list[float]] = {}  # DB id -> daily DatabaseConnections
        self.data_volumes: list[str] = []
        self.snapshots: list[str] = []
        self.devices: Counter[str] = Counter()
        self.metrics: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    def seed(self, instances: int) -> None:
        amzn2 = [{"Name": "name", "Values": ["amzn2-ami-hvm-*"]}]
        images = self.ec2.describe_images(Owners=["amazon"], Filters=amzn2)["Images"]
        self.image = (images or self.ec2.describe_images(Owners=["amazon"])["Images"])[0]
        self._instances(instances - SPECIAL_INSTANCES)
        self._special_instances()
        self._volumes(max(4, instances // 4))
        self._snapshots_and_images(max(2, instances // 8))
        self._addresses(max(2, instances // 12))
        self._load_balancers(max(3, instances // 30))
        self._databases(max(3, instances // 30))
        for namespace, data in self.metrics.items():
            for i in range(0, len(data), 500):  # moto slows down on larger batches
                self.cw.put_metric_data(Namespace=namespace, MetricData=data[i : i + 500])
        self._tally()

    def _tags(self, team: str, env: str, name: str, *, opt_out: bool = False) -> dict[str, str]:
        tags = {"Name": name, "env": env, "cost-center": f"cc-{1000 + 10 * TEAMS.index(team)}"}
        if self.rnd.random() > 0.12:  # some resources have lost their owner
            tags["owner"] = f"{team}-team@example.com"
        if opt_out:
            tags[OPT_OUT_TAG] = "true"
        return tags

    def _series(self, ns: str, metric: str, dim: tuple[str, str], values: Sequence[float]) -> None:
        # one point a day, the newest 12 h ago: all inside any 7- or 14-day window
        dims, newest = [{"Name": dim[0], "Value": dim[1]}], self.run.now - DAY / 2
        self.metrics[ns] += [
            {"MetricName": metric, "Dimensions": dims, "Value": v, "Timestamp": newest - d * DAY}
            for d, v in enumerate(values)
        ]

    def _launch(self, count: int, itype: str, tags: dict[str, str], profile: str = "") -> list[str]:
        az, root = self.rnd.choice(self.azs), []
        if itype.split(".")[0] not in PREVIOUS_GENERATION:  # newer launches get gp3 roots
            ebs = {"VolumeType": "gp3", "VolumeSize": 30, "DeleteOnTermination": True}
            root = [{"DeviceName": self.image["RootDeviceName"], "Ebs": ebs}]
        reply = self.ec2.run_instances(
            ImageId=self.image["ImageId"],
            MinCount=count,
            MaxCount=count,
            InstanceType=itype,
            Placement={"AvailabilityZone": az},
            BlockDeviceMappings=root,
            TagSpecifications=_specs(tags, "instance", "volume"),  # root volumes get them too
        )
        ids = [i["InstanceId"] for i in reply["Instances"]]
        for iid in ids:
            self.instances[iid], self.az[iid] = (itype, tags), az
            mixed = self.rnd.choices(("idle", "busy", "spiky"), (35, 55, 10))[0]
            self._cpu(iid, profile or mixed)
        return ids

    def _cpu(self, iid: str, profile: str) -> None:
        u = self.rnd.uniform
        if profile == "idle":
            cpu = [round(u(0.2, 3.5), 2) for _ in range(14)]
        elif profile == "spiky":  # a batch job twice a fortnight: low most days, average above 5
            cpu = [round(u(55, 80) if d in (3, 8) else u(0.5, 3.0), 2) for d in range(14)]
        else:
            cpu = [round(u(12, 85), 2) for _ in range(14)]
        self.cpu_avg[iid] = sum(cpu) / len(cpu)
        self._series("AWS/EC2", "CPUUtilization", ("InstanceId", iid), cpu)
        low, high = (1e4, 5e5) if profile == "idle" else (5e7, 5e9)  # bytes a day
        for metric in ("NetworkIn", "NetworkOut"):  # a week of it: moto is slow to fill
            net = [round(u(low, high)) for _ in range(7)]
            self._series("AWS/EC2", metric, ("InstanceId", iid), net)

    def _instances(self, n: int) -> None:
        rnd = self.rnd
        while len(self.pool) < n:  # services of 2-10 identical instances: one call each
            team, role, env = rnd.choice(TEAMS), rnd.choice(ROLES), rnd.choice(ENVS)
            itype = rnd.choice(PREVIOUS_TYPES if rnd.random() < 0.3 else CURRENT_TYPES)
            tags = self._tags(team, env, f"{team}-{role}-{env}", opt_out=rnd.random() < 0.06)
            self.pool += self._launch(min(n - len(self.pool), rnd.randint(2, 10)), itype, tags)
        self.stopped = {iid for iid in self.pool if rnd.random() < 0.1}
        if self.stopped:
            self.ec2.stop_instances(InstanceIds=sorted(self.stopped))

    def _special_instances(self) -> None:
        t, traps, modify = self._tags, self.run.traps, self.ec2.modify_instance_attribute
        self._launch(1, "m5.large", t("payments", "prod", "payments-ledger-prod"), "idle")
        self._launch(1, "t2.medium", t("search", "dev", "search-indexer-dev", opt_out=True), "idle")
        (no_term,) = self._launch(1, "t3.medium", t("identity", "dev", "identity-ldap-dev"), "idle")
        modify(InstanceId=no_term, DisableApiTermination={"Value": True})
        (no_stop,) = self._launch(1, "t3.medium", t("platform", "staging", "vault-stg"), "idle")
        modify(InstanceId=no_stop, DisableApiStop={"Value": True})
        traps["termination-protected"].update((no_term, no_stop))
        # parked: stopped, previous generation, and its root volume is its only volume
        (parked,) = self._launch(1, "m4.large", t("growth", "test", "growth-abtest-test"), "idle")
        self.ec2.stop_instances(InstanceIds=[parked])
        self.stopped.add(parked)

        name, tags = f"data-spark-{self.region}", t("data", "staging", "data-spark-worker")
        template = {"ImageId": self.image["ImageId"], "InstanceType": "t3.large"}
        self.ec2.create_launch_template(LaunchTemplateName=name, LaunchTemplateData=template)
        zone = [{"Name": "availability-zone", "Values": [self.azs[0]]}]
        subnet = self.ec2.describe_subnets(Filters=zone)["Subnets"][0]["SubnetId"]
        self.autoscaling.create_auto_scaling_group(
            AutoScalingGroupName=name,
            LaunchTemplate={"LaunchTemplateName": name, "Version": "$Latest"},
            MinSize=1,
            MaxSize=4,
            DesiredCapacity=1,
            VPCZoneIdentifier=subnet,
            Tags=[{"Key": k, "Value": v, "PropagateAtLaunch": True} for k, v in tags.items()],
        )
        group = self.autoscaling.describe_auto_scaling_groups(AutoScalingGroupNames=[name])
        for member in group["AutoScalingGroups"][0]["Instances"]:
            self.instances[member["InstanceId"]] = (member["InstanceType"], tags)
            self._cpu(member["InstanceId"], "idle")  # scaled in to one, which now idles
            traps["asg-member"].add(member["InstanceId"])

    def _volumes(self, n: int) -> None:
        rnd = self.rnd
        for k in range(n + 1):  # the first and the last: unattached gp2, plain and opted out
            team, env = rnd.choice(TEAMS), rnd.choice(ENVS)
            vtype = "gp2" if k in (0, n) else rnd.choice(("gp2", "gp2", "gp3", "gp3", "io1", "st1"))
            target = rnd.choice(self.pool) if 0 < k < n and rnd.random() < 0.4 else None
            opt_out = k == n or (k > 0 and rnd.random() < 0.08)
            tags = self._tags(team, env, f"{team}-data-{env}", opt_out=opt_out)
            vid = self.ec2.create_volume(
                AvailabilityZone=self.az[target] if target else rnd.choice(self.azs),
                Size=500 if vtype == "st1" else rnd.choice((20, 50, 100, 200)),
                VolumeType=vtype,
                TagSpecifications=_specs(tags, "volume"),
                **({"Iops": 3000} if vtype == "io1" else {}),
            )["VolumeId"]
            self.data_volumes.append(vid)
            if target:
                self.devices[target] += 1
                device = f"/dev/sd{chr(ord('f') + self.devices[target])}"
                self.ec2.attach_volume(VolumeId=vid, InstanceId=target, Device=device)
                self.run.traps["attached-volume"].add(vid)
            if rnd.random() < 0.5:
                low, high = (50, 5000) if target else (0, 0)
                for metric in ("VolumeReadOps", "VolumeWriteOps"):
                    ops = [float(rnd.randint(low, high)) for _ in range(14)]
                    self._series("AWS/EBS", metric, ("VolumeId", vid), ops)

    def _snapshots_and_images(self, n: int) -> None:
        for k in range(n):
            team = self.rnd.choice(TEAMS)
            if k % 2 == 0:  # a backup of a volume deleted since: an orphan
                vid = self.ec2.create_volume(AvailabilityZone=self.azs[0], Size=20)["VolumeId"]
            else:
                vid = self.rnd.choice(self.data_volumes)
            spec = _specs(self._tags(team, "prod", f"{team}-backup-{k}"), "snapshot")
            snap = self.ec2.create_snapshot(VolumeId=vid, TagSpecifications=spec)["SnapshotId"]
            self.snapshots.append(snap)
            if k % 2 == 0:
                self.ec2.delete_volume(VolumeId=vid)
        # moto backs each AMI with a snapshot of a volume it deletes at once: the snapshot
        # looks orphaned, the very trap orphan-snapshots must step around
        tags = self._tags("platform", "prod", "platform-golden-image")
        running = [iid for iid in self.pool if iid not in self.stopped] or self.pool
        name, spec = f"golden-{self.region}", _specs(tags, "image")
        self.ec2.create_image(InstanceId=running[0], Name=name, TagSpecifications=spec)
        # moto ignores the mapping; on AWS the AMI would stand on our live-volume snapshot
        mapping = [{"DeviceName": "/dev/xvda", "Ebs": {"SnapshotId": self.snapshots[1]}}]
        name = f"legacy-base-{self.region}"
        image = self.ec2.register_image(
            Name=name, RootDeviceName="/dev/xvda", BlockDeviceMappings=mapping
        )
        self.ec2.create_tags(Resources=[image["ImageId"]], Tags=_tag_list(tags))

    def _addresses(self, n: int) -> None:
        running = [iid for iid in self.pool if iid not in self.stopped]
        targets = iter(self.rnd.sample(running, k=min(n, len(running))))
        for k in range(n):
            team = self.rnd.choice(TEAMS)
            tags = _specs(self._tags(team, "prod", f"{team}-eip-{k}"), "elastic-ip")
            alloc = self.ec2.allocate_address(Domain="vpc", TagSpecifications=tags)["AllocationId"]
            target = next(targets, None) if k % 2 else None  # every other one left dangling
            if target:
                self.ec2.associate_address(AllocationId=alloc, InstanceId=target)

    def _load_balancers(self, n: int) -> None:
        zones = [{"Name": "availability-zone", "Values": list(self.azs)}]
        subnets = [s["SubnetId"] for s in self.ec2.describe_subnets(Filters=zones)["Subnets"]]
        for k in range(n + 1):  # n application load balancers, then one network one
            team, kind = self.rnd.choice(TEAMS), "network" if k == n else "application"
            name = f"{team}-{kind[:3]}-{k}"
            tags = _tag_list(self._tags(team, "prod" if k % 2 else "staging", name))
            lb = self.elbv2.create_load_balancer(Name=name, Subnets=subnets, Type=kind, Tags=tags)
            arn = lb["LoadBalancers"][0]["LoadBalancerArn"]
            dim = ("LoadBalancer", arn.split(":loadbalancer/")[1])
            if kind == "network":
                processed = [float(self.rnd.randint(10**6, 10**9)) for _ in range(7)]
                self._series("AWS/NetworkELB", "ProcessedBytes", dim, processed)
                continue
            self.requests[arn] = []  # the last ALB is new and has no data, which counts as 0
            if k < n - 1:
                low, high = (0, 5) if k % 3 == 0 else (5000, 90000)
                self.requests[arn] = [float(self.rnd.randint(low, high)) for _ in range(7)]
                self._series("AWS/ApplicationELB", "RequestCount", dim, self.requests[arn])

    def _databases(self, n: int) -> None:
        rnd = self.rnd
        for k in range(n):  # the first three fixed: idle prod (trap), idle dev, busy staging
            team = rnd.choice(TEAMS)
            env = ("prod", "dev", "staging")[k] if k < 3 else rnd.choice(ENVS)
            idle = k < 2 or (k >= 3 and rnd.random() < 0.4)
            engine = ("postgres", "mysql")[k % 2]
            name = f"{team}-{engine}-{env}-{k}"
            size, tags = rnd.choice(("micro", "small", "medium")), self._tags(team, env, name)
            self.rds.create_db_instance(
                DBInstanceIdentifier=name,
                DBInstanceClass=f"db.t3.{size}",
                Engine=engine,
                Tags=_tag_list(tags),
                **DB_SETTINGS,
            )
            conns = [0.0] * 7 if idle else [float(rnd.randint(2, 60)) for _ in range(7)]
            self.connections[name] = conns
            self._series("AWS/RDS", "DatabaseConnections", ("DBInstanceIdentifier", name), conns)

    def _tally(self) -> None:
        """Work out the answer: instances from what we launched, the rest from the account."""
        run, ec2 = self.run, self.ec2
        for iid, (itype, tags) in self.instances.items():
            idle = iid not in self.stopped and self.cpu_avg[iid] < IDLE_CPU_BELOW
            prod, old = tags.get("env") == "prod", itype.split(".")[0] in PREVIOUS_GENERATION
            rules = ("idle-nonprod-ec2", idle and not prod), ("previous-generation-ec2", old)
            run.sort(iid, tags, *rules)
            if idle and prod:
                run.traps["prod-idle"].add(iid)

        volumes = _pages(ec2, "describe_volumes", "Volumes")
        for vol in volumes:
            vid, tags = vol["VolumeId"], _tag_map(vol.get("Tags"))
            unattached, gp2 = vol["State"] == "available", vol["VolumeType"] == "gp2"
            run.sort(vid, tags, ("unattached-ebs", unattached), ("gp2-volumes", gp2))
            if any(a["InstanceId"] in self.stopped for a in vol.get("Attachments", ())):
                run.traps["attached-volume"].add(vid)  # such as a stopped instance's root volume

        images = ec2.describe_images(Owners=["self"])["Images"]
        mappings = [m for i in images for m in i.get("BlockDeviceMappings", ())]
        backing = {m["Ebs"]["SnapshotId"] for m in mappings if "Ebs" in m}
        run.traps["ami-snapshot"] |= backing
        # ours and the AMIs': asking by id spares moto a scan of the public AMIs' snapshots,
        # which it lists whatever OwnerIds says (an owner-id filter would be the other way)
        mine = sorted(backing | set(self.snapshots))
        snapshots = _pages(ec2, "describe_snapshots", "Snapshots", SnapshotIds=mine)
        live = {v["VolumeId"] for v in volumes}
        for snap in snapshots:
            if snap.get("VolumeId") not in live and snap["SnapshotId"] not in backing:
                run.waste["orphan-snapshots"].add(snap["SnapshotId"])

        addresses = ec2.describe_addresses()["Addresses"]
        loose = {a["AllocationId"] for a in addresses if not a.get("AssociationId")}
        run.waste["unassociated-eip"] |= loose
        balancers = _pages(self.elbv2, "describe_load_balancers", "LoadBalancers")
        for lb in balancers:
            requests = sum(self.requests.get(lb["LoadBalancerArn"], ()))
            if lb["Type"] == "application" and requests < IDLE_ALB_REQUESTS_BELOW:
                run.waste["idle-alb"].add(lb["LoadBalancerArn"])
        databases = _pages(self.rds, "describe_db_instances", "DBInstances")
        for db in databases:
            name, tags = db["DBInstanceIdentifier"], _tag_map(db.get("TagList"))
            if max(self.connections[name]) < 1:
                prod = tags.get("env") == "prod"
                (run.traps["prod-idle"] if prod else run.waste["idle-rds"]).add(name)

        found = (self.instances, volumes, snapshots, images, addresses, balancers, databases)
        run.counts.update({kind: len(items) for kind, items in zip(KINDS, found, strict=True)})
