"""Reading the Kubernetes manifests and the runbook's kubectl lines, for the deployment and
image tests."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.test_runbook_commands import SPEC, shell_commands

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
BASE, PRODUCTION = KUBE / "base", KUBE / "overlays" / "production"
DOCS_RUNBOOK = ROOT / "docs" / "runbooks" / "automation-failure-response.md"
NAMESPACE = "finops-automation"
KUBERNETES_VERSIONS = ("1.30", "1.34")
APP = "finops-automation"  # app.kubernetes.io/name of the API, workers, scheduler, CronJob
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")
ROLE_ARN = re.compile(r"^arn:aws:iam::\d{12}:role/[\w+=,.@/-]+$")
Doc = dict[str, Any]


# --- reading the manifests ---------------------------------------------------------------


def manifest_files() -> list[Path]:
    """Every file of whole resources: the kustomizations and the overlay's patches are not."""
    return sorted(
        p
        for p in KUBE.rglob("*.yaml")
        if p.name != "kustomization.yaml" and "patches" not in p.relative_to(KUBE).parts
    )


def load(path: Path) -> list[Doc]:
    return [d for d in yaml.safe_load_all(path.read_text(encoding="utf-8")) if d]


def kustomize_command() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


@cache
def rendered(directory: Path) -> tuple[Doc, ...]:
    command = kustomize_command()
    if command is None:
        pytest.skip("neither kustomize nor kubectl is installed: the overlays are not built")
    done = subprocess.run([*command, str(directory)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return tuple(d for d in yaml.safe_load_all(done.stdout) if d)


def base_docs() -> list[Doc]:
    """The small install as written (no kustomize needed): every base file."""
    paths = [p for p in sorted(BASE.glob("*.yaml")) if p.name != "kustomization.yaml"]
    return [doc for path in paths for doc in load(path)]


def find(docs: list[Doc] | tuple[Doc, ...], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_spec(doc: Doc) -> Doc:
    if doc["kind"] == "CronJob":
        return dict(doc["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    return dict(doc["spec"]["template"]["spec"])


def pod_labels(doc: Doc) -> dict[str, str]:
    template = (
        doc["spec"]["jobTemplate"]["spec"]["template"]
        if doc["kind"] == "CronJob"
        else doc["spec"]["template"]
    )
    return dict(template["metadata"]["labels"])


def workloads(docs: list[Doc] | tuple[Doc, ...]) -> list[Doc]:
    return [d for d in docs if d["kind"] in ("Deployment", "CronJob")]


def containers(doc: Doc, *, init: bool = True) -> list[Doc]:
    spec = pod_spec(doc)
    return list(spec.get("initContainers", []) if init else []) + list(spec["containers"])


def env_of(container: Doc) -> dict[str, Doc]:
    return {e["name"]: e for e in container.get("env", [])}


def config_map(docs: list[Doc] | tuple[Doc, ...]) -> dict[str, str]:
    (found,) = [d for d in docs if d["kind"] == "ConfigMap"]
    return dict(found["data"])


def base_config() -> dict[str, str]:
    """The literals of the base's configMapGenerator."""
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text(encoding="utf-8"))
    (generator,) = kustomization["configMapGenerator"]
    return dict(item.split("=", 1) for item in generator["literals"])


# --- the runbook's kubectl lines -------------------------------------------------------------


def runbook_kubectl() -> list[str]:
    if not SPEC.exists():
        pytest.skip(f"the spec runbook is not at {SPEC}")
    commands = [c for _, c in shell_commands(SPEC.read_text(encoding="utf-8"))]
    return [c for c in commands if c.startswith("kubectl ")]


def referenced_deployments(lines: list[str]) -> set[str]:
    return {m[1] for line in lines for m in re.finditer(r"deployment[/ ]([a-z][\w-]*)", line)}
