"""The Kubernetes deployment: valid, safe, and what the runbook uses.

- every manifest under deploy/kubernetes validates against the Kubernetes JSON schemas
  (kubernetes-validate, offline, strict: an unknown field is an error), and so does what
  kustomize builds from the base and the production overlay (when a kustomize is installed);
- the names, namespace, probes, paths and commands the on-call runbook uses exist and mean
  what it assumes (parsed from its kubectl lines);
- the runbooks' links and alert anchors resolve.
The container image is checked in test_dockerfile.py; the readers in tests/support/manifests.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from backend.core.notification_settings import NotificationSettings
from tests.integration.test_runbook_commands import SPEC, shell_commands
from tests.support.manifests import (
    APP,
    BASE,
    DIGEST,
    DOCS_RUNBOOK,
    KUBE,
    KUBERNETES_VERSIONS,
    NAMESPACE,
    PRODUCTION,
    ROLE_ARN,
    ROOT,
    Doc,
    base_config,
    base_docs,
    containers,
    env_of,
    find,
    load,
    manifest_files,
    pod_labels,
    pod_spec,
    referenced_deployments,
    rendered,
    runbook_kubectl,
    workloads,
)

# --- schema validation -------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("path", manifest_files(), ids=lambda p: str(p.relative_to(KUBE)))
def test_each_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    docs = load(path)
    assert docs, f"{path} has no resource"
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("overlay", [BASE, PRODUCTION], ids=["base", "production"])
def test_each_overlay_builds_into_valid_kubernetes(overlay: Path, version: str) -> None:
    docs = rendered(overlay)
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)
        assert doc["metadata"].get("namespace", NAMESPACE) == NAMESPACE or doc["kind"] in (
            "Namespace",
        )
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert ("Namespace", NAMESPACE) in names
    for deployment in ("finops-api", "finops-worker", "finops-scheduler"):
        assert ("Deployment", deployment) in names


def test_a_broken_manifest_is_refused() -> None:
    """The validation has teeth: a typo in a field name and a wrong type both fail."""
    deployment = find(base_docs(), "Deployment", "finops-api")
    typo = {**deployment, "spec": {**deployment["spec"], "replica": 2}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(typo, KUBERNETES_VERSIONS[0], strict=True)
    wrong = {**deployment, "spec": {**deployment["spec"], "replicas": "two"}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(wrong, KUBERNETES_VERSIONS[0], strict=True)


# --- what the runbook uses -------------------------------------------------------------------


def test_the_runbook_namespace_and_deployments_exist() -> None:
    lines = runbook_kubectl()
    namespaces = {m[1] for line in lines for m in re.finditer(r"-n ([\w-]+)", line)}
    assert namespaces == {NAMESPACE}
    docs = base_docs()
    assert find(docs, "Namespace", NAMESPACE)
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    assert kustomization["namespace"] == NAMESPACE
    deployments = {d["metadata"]["name"] for d in docs if d["kind"] == "Deployment"}
    wanted = referenced_deployments(lines)
    assert wanted == {"finops-api", "finops-worker", "finops-scheduler", "postgres", "redis"}
    assert wanted <= deployments


def test_kubectl_exec_lands_in_the_main_container() -> None:
    """`kubectl exec deployment/X` picks the default container: never an init container."""
    for doc in workloads(base_docs()):
        if doc["kind"] != "Deployment" or not pod_spec(doc).get("initContainers"):
            continue
        default = doc["spec"]["template"]["metadata"]["annotations"][
            "kubectl.kubernetes.io/default-container"
        ]
        assert default == pod_spec(doc)["containers"][0]["name"], doc["metadata"]["name"]


def test_the_runbook_python_and_scripts_run_in_the_api_image() -> None:
    lines = runbook_kubectl()
    in_api = [line for line in lines if "deployment/finops-api" in line and " exec " in line]
    assert any("python scripts/health-check.py" in line for line in in_api)
    assert any("aws sts get-caller-identity" in line for line in in_api)
    api = find(base_docs(), "Deployment", "finops-api")
    (main,) = pod_spec(api)["containers"]
    assert main["image"].startswith("finops-automation:")
    # the image holds `aws` for the runbook's Step 5 (installed from the lock file)
    lock = (ROOT / "requirements.lock").read_text(encoding="utf-8").lower().splitlines()
    assert any(line.startswith("awscli==") for line in lock)
    assert "COPY scripts ./scripts" in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_the_runbook_psql_line_matches_the_postgres_deployment() -> None:
    (line,) = [x for x in runbook_kubectl() if "psql" in x]
    user = re.search(r"-U (\w+)", line)
    database = re.search(r"-d (\w+)", line)
    assert user and database
    postgres = find(base_docs(), "Deployment", "postgres")
    (container,) = pod_spec(postgres)["containers"]
    env = env_of(container)
    assert env["POSTGRES_USER"]["value"] == user[1] == "finops"
    assert env["POSTGRES_DB"]["value"] == database[1] == "finops_db"
    assert "secretKeyRef" in env["POSTGRES_PASSWORD"]["valueFrom"]
    # the application's URL names the same user and database, on the postgres Service
    api = find(base_docs(), "Deployment", "finops-api")
    url = env_of(pod_spec(api)["containers"][0])["DATABASE_URL"]["value"]
    assert url == "postgresql+psycopg://finops:$(POSTGRES_PASSWORD)@postgres:5432/finops_db"
    assert find(base_docs(), "Service", "postgres")["spec"]["ports"][0]["port"] == 5432


def test_the_runbook_flushdb_clears_the_database_the_application_uses() -> None:
    (line,) = [x for x in runbook_kubectl() if "redis-cli" in x]
    assert line.endswith("redis-cli FLUSHDB")  # no -n: database 0
    redis = find(base_docs(), "Deployment", "redis")
    assert pod_spec(redis)["containers"][0]["image"].startswith("redis:")
    for doc in workloads(base_docs()):
        if pod_labels(doc).get("app.kubernetes.io/name") != APP:
            continue
        for container in containers(doc, init=False):
            assert env_of(container)["REDIS_URL"]["value"] == "redis://redis:6379/0"


def test_the_runbook_beat_schedule_path_is_the_scheduler_s_and_writable() -> None:
    (line,) = [x for x in runbook_kubectl() if "celerybeat-schedule" in x]
    path = re.search(r"rm -f (\S+)", line)
    assert path and "deployment/finops-scheduler" in line
    assert base_config()["FINOPS_BEAT_SCHEDULE_PATH"] == path[1] == "/tmp/celerybeat-schedule"
    from backend.config import Settings

    assert str(Settings.model_fields["beat_schedule_path"].default) == path[1]
    scheduler = find(base_docs(), "Deployment", "finops-scheduler")
    (main,) = pod_spec(scheduler)["containers"]
    assert main["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"]: m["name"] for m in main["volumeMounts"]}
    volumes = {v["name"]: v for v in pod_spec(scheduler)["volumes"]}
    assert "emptyDir" in volumes[mounts[str(Path(path[1]).parent)]]


def test_the_scheduler_runs_once() -> None:
    scheduler = find(base_docs(), "Deployment", "finops-scheduler")
    assert scheduler["spec"]["replicas"] == 1
    assert scheduler["spec"]["strategy"] == {"type": "Recreate"}
    assert not [p for p in base_docs() if p["kind"] == "HorizontalPodAutoscaler"], (
        "nothing may scale the scheduler"
    )


def test_the_api_probes_are_the_application_s_health_endpoints() -> None:
    from backend.api.routers.health import router

    routes = {getattr(r, "path", None) for r in router.routes}
    api = find(base_docs(), "Deployment", "finops-api")
    (main,) = pod_spec(api)["containers"]
    port = {p["name"]: p["containerPort"] for p in main["ports"]}
    assert main["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert main["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert {"/health/ready", "/health/live"} <= routes
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert port[main[probe]["httpGet"]["port"]] == 8000
    assert main["command"] == ["finops", "serve", "--host", "0.0.0.0", "--port", "8000"]
    service = find(base_docs(), "Service", "finops-api")
    assert service["spec"]["selector"].items() <= pod_labels(api).items()


def test_the_runbook_api_url_is_the_production_ingress() -> None:
    """`curl -f https://api.finops.example.com/health/ready` reaches the API's Service."""
    (line,) = [c for _, c in shell_commands(SPEC.read_text(encoding="utf-8")) if "/health/" in c]
    host = re.search(r"https://([\w.-]+)/health/ready", line)
    assert host
    ingress = find(rendered(PRODUCTION), "Ingress", "finops-api")
    rule = ingress["spec"]["rules"][0]
    assert rule["host"] == host[1] == "api.finops.example.com"
    assert rule["http"]["paths"][0]["backend"]["service"]["name"] == "finops-api"


def test_each_process_runs_a_real_finops_command() -> None:
    from backend.runtime.celery_app import QUEUES

    commands = {
        c["name"]: c["command"]
        for doc in workloads(base_docs())
        if pod_labels(doc).get("app.kubernetes.io/name") == APP
        for c in containers(doc)
    }
    worker = commands["worker"]
    assert worker[:2] == ["finops", "worker"]
    assert worker[worker.index("--queues") + 1].split(",") == list(QUEUES)
    assert worker[worker.index("--pool") + 1] == "prefork"
    assert commands["scheduler"] == ["finops", "scheduler"]
    assert commands["migrate"] == ["finops", "db", "upgrade"]
    assert commands["rollback-watch"] == ["finops", "rollback-watch", "--once"]
    for argv in [c for c in commands.values() if c[0] == "finops"]:
        # every subcommand exists: `finops SUB --help` answers
        words = [a for a in argv[1:] if not a.startswith("-")][:2]
        if argv[1] != "db":
            words = words[:1]
        done = subprocess.run(
            [str(Path(sys.executable).with_name("finops")), *words, "--help"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (argv, done.stderr)
    assert "ensure_schema()" in " ".join(commands["wait-for-schema"])


def test_every_pod_is_locked_down_and_sized() -> None:
    for doc in workloads(base_docs()):
        name = doc["metadata"]["name"]
        spec = pod_spec(doc)
        assert spec["securityContext"]["runAsNonRoot"] is True, name
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        assert spec.get("enableServiceLinks") is False, name
        for container in containers(doc):
            where = f"{name}/{container['name']}"
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False, where
            assert security["readOnlyRootFilesystem"] is True, where
            assert security["capabilities"]["drop"] == ["ALL"], where
            for bound in ("requests", "limits"):
                assert {"cpu", "memory"} <= container["resources"][bound].keys(), where
            image = container["image"]
            assert not image.endswith(":latest") and ":" in image, where
            if not image.startswith("finops-automation:"):
                assert DIGEST.search(image), f"{where}: third-party image not pinned by digest"


def test_secrets_are_referenced_never_written() -> None:
    for path in manifest_files():
        for doc in load(path):
            assert doc["kind"] != "Secret", f"{path}: a Secret with values in the repository"
    secret_like = re.compile(r"PASSWORD|SECRET|TOKEN|WEBHOOK")
    for doc in workloads(base_docs()):
        for container in containers(doc):
            for name, entry in env_of(container).items():
                if secret_like.search(name):
                    assert "secretKeyRef" in entry.get("valueFrom", {}), f"{name} not by reference"
                value = entry.get("value", "")
                assert "://" not in value or "@" not in value or "$(" in value, (
                    f"{name}: a URL with a literal credential"
                )
    api = find(base_docs(), "Deployment", "finops-api")
    secret_key = env_of(pod_spec(api)["containers"][0])["FINOPS_SECRET_KEY"]
    assert secret_key["valueFrom"]["secretKeyRef"] == {
        "name": "finops-secrets",
        "key": "secret-key",
    }


def test_the_configuration_names_real_settings() -> None:
    from backend.config import Settings
    from backend.core.notification_settings import NotificationSettings

    known = {f"FINOPS_{f.upper()}" for f in Settings.model_fields}
    known |= {"DATABASE_URL", "REDIS_URL", "COST_OPTIMIZATION_ROLE_ARN"}
    known |= {f"FINOPS_NOTIFY_{f.upper()}" for f in NotificationSettings.model_fields}
    known |= {"FINOPS_LOG_LEVEL", "FINOPS_LOG_FORMAT", "POSTGRES_PASSWORD"}
    config = base_config()
    names = set(config)
    for doc in workloads(base_docs()):
        if pod_labels(doc).get("app.kubernetes.io/name") == APP:
            names |= {n for c in containers(doc) for n in env_of(c)}
    unknown = {n for n in names if not n.startswith("AWS_")} - known
    assert not unknown, f"not read by the application: {sorted(unknown)}"
    assert config["FINOPS_ENVIRONMENT"] == "production"
    assert config["FINOPS_DRY_RUN"] == "true"  # going live is an explicit decision


def test_the_service_account_carries_an_iam_role() -> None:
    docs = base_docs()
    account = find(docs, "ServiceAccount", "finops-automation")
    assert ROLE_ARN.match(account["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    production = find(rendered(PRODUCTION), "ServiceAccount", "finops-automation")
    assert ROLE_ARN.match(production["metadata"]["annotations"]["eks.amazonaws.com/role-arn"])
    users = {d["metadata"]["name"]: pod_spec(d).get("serviceAccountName") for d in workloads(docs)}
    for name in ("finops-api", "finops-worker", "finops-rollback-watch"):
        assert users[name] == "finops-automation"
    # beat and the migration call no AWS API: no IAM role for them
    assert users["finops-scheduler"] == "finops-scheduler"
    assert "annotations" not in find(docs, "ServiceAccount", "finops-scheduler")["metadata"]


def test_disruption_budgets_cover_the_api_and_the_workers() -> None:
    docs = base_docs()
    for name in ("finops-api", "finops-worker"):
        budget = find(docs, "PodDisruptionBudget", name)
        deployment = find(docs, "Deployment", name)
        selector = budget["spec"]["selector"]["matchLabels"]
        assert selector.items() <= pod_labels(deployment).items()
        # a budget that allows no disruption at the deployment's size would block node drains
        allowed = budget["spec"].get("maxUnavailable") or (
            deployment["spec"]["replicas"] - budget["spec"]["minAvailable"]
        )
        assert allowed >= 1, name


def _allowed(policies: list[Doc], labels: dict[str, str], direction: str) -> list[tuple[Doc, Doc]]:
    """(peer rule, port) pairs of the policies that select pods with these labels."""
    field = "egress" if direction == "Egress" else "ingress"
    pairs = []
    for policy in policies:
        selector = policy["spec"]["podSelector"].get("matchLabels", {})
        if direction in policy["spec"]["policyTypes"] and selector.items() <= labels.items():
            for rule in policy["spec"].get(field, []):
                pairs += [(rule, port) for port in rule.get("ports", [])]
    return pairs


def _ports(pairs: list[tuple[Doc, Doc]]) -> set[int]:
    return {int(port["port"]) for _, port in pairs}


@pytest.mark.parametrize("overlay", ["base", "production"])
def test_network_policies_deny_by_default_and_allow_what_the_system_needs(overlay: str) -> None:
    docs: list[Doc] | tuple[Doc, ...] = base_docs() if overlay == "base" else rendered(PRODUCTION)
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    deny = find(policies, "NetworkPolicy", "default-deny-all")
    assert deny["spec"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}
    app = {"app.kubernetes.io/name": APP}
    api = {**app, "app.kubernetes.io/component": "api"}
    worker = {**app, "app.kubernetes.io/component": "worker"}
    assert _ports(_allowed(policies, api, "Ingress")) == {8000}
    assert _ports(_allowed(policies, worker, "Ingress")) == set()  # nothing calls a worker
    egress = _allowed(policies, worker, "Egress")
    assert _ports(egress) == {25, 53, 443, 465, 587, 5432, 6379}
    # Email notifications (the P0 "Notify Stakeholders" alert): every SMTP port the app may
    # be configured with, its default included, from the API, the workers and the cronjob.
    smtp_default = NotificationSettings.model_fields["smtp_port"].default
    for component in ("api", "worker", "rollback-watch"):
        pod = {**app, "app.kubernetes.io/component": component}
        smtp = {int(p["port"]) for r, p in _allowed(policies, pod, "Egress") if p["port"] != 53}
        assert {25, 465, 587, smtp_default} <= smtp, component
    dns = [p for _, p in egress if p["port"] == 53]
    assert {p["protocol"] for p in dns} == {"UDP", "TCP"}
    if overlay == "base":
        for name, port in (("postgres", 5432), ("redis", 6379)):
            inbound = _allowed(policies, {"app.kubernetes.io/name": name}, "Ingress")
            assert _ports(inbound) == {port}
            (rule, _) = inbound[0]
            assert rule["from"] == [{"podSelector": {"matchLabels": app}}]
    else:  # the managed services are outside the cluster: reached by address
        for rule, port in egress:
            if port["port"] in (5432, 6379):
                assert "ipBlock" in rule["to"][0]


def test_migrations_run_once_before_the_processes_that_need_them() -> None:
    docs = base_docs()
    scheduler = find(docs, "Deployment", "finops-scheduler")
    (migrate,) = pod_spec(scheduler)["initContainers"]
    assert migrate["command"] == ["finops", "db", "upgrade"]
    for name in ("finops-api", "finops-worker"):
        (wait,) = pod_spec(find(docs, "Deployment", name))["initContainers"]
        assert wait["name"] == "wait-for-schema"


def test_production_uses_managed_services_by_secret_reference() -> None:
    docs = rendered(PRODUCTION)
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    for kind, name in (
        ("Deployment", "postgres"),
        ("Deployment", "redis"),
        ("Service", "postgres"),
        ("Service", "redis"),
        ("PersistentVolumeClaim", "postgres-data"),
        ("NetworkPolicy", "postgres-ingress"),
        ("NetworkPolicy", "redis-ingress"),
    ):
        assert (kind, name) not in names
    for doc in workloads(docs):
        for container in containers(doc):
            env = env_of(container)
            where = f"{doc['metadata']['name']}/{container['name']}"
            assert "POSTGRES_PASSWORD" not in env, where
            reference = env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": "finops-managed-services", "key": "database-url"}, where
            if container in pod_spec(doc)["containers"]:
                reference = env["REDIS_URL"]["valueFrom"]["secretKeyRef"]
                assert reference == {"name": "finops-managed-services", "key": "redis-url"}


def _docs_iter() -> Iterator[Path]:
    yield from sorted((ROOT / "docs" / "runbooks").glob("*.md"))


def test_the_runbook_links_and_alert_anchors_resolve() -> None:
    """The four runbooks the on-call runbook links to exist; the anchors the alert rules
    point at are headings of the adapted runbook."""
    if not SPEC.exists():
        pytest.skip(f"the spec runbook is not at {SPEC}")
    links = re.findall(r"\]\(\./([\w-]+\.md)\)", SPEC.read_text(encoding="utf-8"))
    assert len(links) == 4
    present = {p.name for p in _docs_iter()}
    assert set(links) <= present
    text = DOCS_RUNBOOK.read_text(encoding="utf-8")
    anchors = {_anchor(h) for h in re.findall(r"^#+ (.+)$", text, re.MULTILINE)}
    alerts = ROOT / "deploy" / "prometheus" / "finops-alerts.yml"
    if alerts.exists():
        used = re.findall(r"automation-failure-response\.md#([\w-]+)", alerts.read_text())
        assert set(used) <= anchors, set(used) - anchors
    for path in _docs_iter():  # every relative link between the runbooks resolves
        for target in re.findall(r"\]\(\./([\w.-]+)\)", path.read_text(encoding="utf-8")):
            assert (path.parent / target).exists(), f"{path.name} -> {target}"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_adapted_runbook_keeps_every_command_or_says_why() -> None:
    """Each command of the spec is in the adapted copy as written, or is one of the
    adaptations its note at the top lists."""
    if not SPEC.exists():
        pytest.skip(f"the spec runbook is not at {SPEC}")
    adapted = {
        'kubectl logs deployment/finops-api -n finops-automation | grep -E "(ERROR|CRITICAL|'
        'EXCEPTION)" | tail -20': "grep -iE",
        "kubectl exec -it deployment/finops-api -n finops-automation -- aws sts assume-role "
        '--role-arn "$COST_OPTIMIZATION_ROLE_ARN" --role-session-name "test-session"': "sh -c",
        "curl -s https://monitoring.finops.example.com/api/v1/query?query="
        "finops_automation_engine_status": "quoted",
    }
    ours = {c for _, c in shell_commands(DOCS_RUNBOOK.read_text(encoding="utf-8"))}
    note = DOCS_RUNBOOK.read_text(encoding="utf-8").split("## Overview")[0]
    for _, command in shell_commands(SPEC.read_text(encoding="utf-8")):
        if command in ours:
            continue
        assert command in adapted, f"dropped from the adapted runbook: {command}"
        assert adapted[command] in note, f"the note does not explain: {command}"
