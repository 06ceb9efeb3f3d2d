"""The container image, checked without a Docker engine: a pinned base, a non-root user, a
health check, every copied path present, and the image's file layout migrating and answering
the runbook's scripts."""

from __future__ import annotations

import fnmatch
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from tests.support.manifests import (
    DIGEST,
    ROOT,
    base_docs,
    find,
    pod_spec,
)

# --- the Dockerfile ------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order: comments dropped, continuation lines joined."""
    lines: list[tuple[str, str]] = []
    pending = ""
    for raw in (ROOT / "Dockerfile").read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending = f"{pending} {line.removesuffix(chr(92)).strip()}".strip()
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            lines.append((word.upper(), rest.strip()))
            pending = ""
    return lines


def stages() -> list[list[tuple[str, str]]]:
    found: list[list[tuple[str, str]]] = []
    for instruction in dockerfile():
        if instruction[0] == "FROM":
            found.append([])
        if found:
            found[-1].append(instruction)
    return found


def dockerignore() -> list[str]:
    text = (ROOT / ".dockerignore").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]


def ignored(path: str) -> bool:
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    return any(fnmatch.fnmatch(p, pattern) for pattern in dockerignore() for p in prefixes)


def test_the_dockerfile_base_is_pinned_by_digest() -> None:
    args = dict(a.split("=", 1) for word, a in dockerfile() if word == "ARG" and "=" in a)
    bases = [a.split()[0] for word, a in dockerfile() if word == "FROM"]
    assert len(bases) == 2 and all(b == "${PYTHON_IMAGE}" for b in bases)
    image = args["PYTHON_IMAGE"]
    assert image.startswith("python:3.11") and "-slim" in image
    assert DIGEST.search(image), image
    assert ":latest" not in (ROOT / "Dockerfile").read_text(encoding="utf-8")


def test_the_dockerfile_runs_as_a_non_root_user_with_a_health_check() -> None:
    final = stages()[-1]
    users = [a for word, a in final if word == "USER"]
    assert users, "no USER in the final stage"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    assert any(word == "HEALTHCHECK" for word, _ in final)
    # the uid the Kubernetes pods run as
    api = find(base_docs(), "Deployment", "finops-api")
    assert str(pod_spec(api)["securityContext"]["runAsUser"]) == user


def test_the_dockerfile_installs_the_lock_then_the_package() -> None:
    runs = [a for word, a in stages()[0] if word == "RUN"]
    assert any("pip install -r requirements.lock" in r for r in runs)
    assert any("pip install --no-deps ." in r for r in runs)


def test_the_image_lock_holds_the_runtime_only_and_the_dev_lock_adds_to_it() -> None:
    def pins(name: str) -> dict[str, str]:
        lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
        found = [ln.split("==") for ln in lines if "==" in ln and not ln.startswith("#")]
        return {package.lower().replace("_", "-"): version for package, version in found}

    runtime, dev = pins("requirements.lock"), pins("requirements-dev.lock")
    tools = {"pytest", "hypothesis", "mypy", "ruff", "playwright", "schemathesis"}
    assert not tools & set(runtime)  # none of them in the image
    assert tools <= set(dev)
    assert not set(runtime) & set(dev)  # each pin in one place
    assert "-r requirements.lock" in (ROOT / "requirements-dev.lock").read_text().splitlines()
    assert "awscli" in runtime  # the runbook's `aws sts ...` runs in the API container
    assert "requirements-dev.lock" in (ROOT / "Makefile").read_text()


def test_every_copied_path_exists_and_reaches_the_build_context() -> None:
    sources = []
    for word, args in dockerfile():
        if word in ("COPY", "ADD") and "--from=" not in args:
            sources += [s for s in args.split()[:-1] if not s.startswith("--")]
    assert sources
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert not ignored(source), f"COPY {source}: excluded by .dockerignore"
    for heavy in (".venv", ".git", "tests", "deploy"):
        assert ignored(heavy), f"{heavy} should stay out of the build context"


def image_layout(tmp: Path) -> tuple[Path, Path, dict[str, str]]:
    """The final stage as files: /app from its COPY lines, the package as site-packages, and
    its ENV (paths moved under tmp)."""
    app, site = tmp / "app", tmp / "site"
    final = stages()[-1]
    workdir = "/"
    env: dict[str, str] = {}
    for word, args in final:
        if word == "WORKDIR":
            workdir = args
        elif word == "ENV":
            for item in re.findall(r"(\w+)=(\S+)", args):
                env[item[0]] = item[1]
        elif word == "COPY" and "--from=" not in args:
            *sources, target = args.split()
            destination = Path(target if target.startswith("/") else f"{workdir}/{target}")
            assert destination.is_relative_to("/app"), args
            where = app / destination.relative_to("/app")
            for source in sources:
                if (ROOT / source).is_dir():
                    shutil.copytree(ROOT / source, where)
                else:  # a file into a directory (the target ends with a slash)
                    assert target.endswith("/"), args
                    where.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(ROOT / source, where / Path(source).name)
    assert workdir == "/app"
    shutil.copytree(
        ROOT / "backend", site / "backend", ignore=shutil.ignore_patterns("__pycache__")
    )
    roots = {"/app": app, "/tmp": tmp / "tmp"}
    moved = {}
    for name, value in env.items():
        if name != "PATH":
            root = next((r for r in roots if value == r or value.startswith(f"{r}/")), None)
            moved[name] = str(roots[root]) + value[len(root) :] if root else value
    return app, site, moved


def test_the_image_layout_migrates_and_answers_the_runbook(tmp_path: Path) -> None:
    """Without the checkout: the package from site-packages, migrations and policies from
    /app, where FINOPS_MIGRATIONS_DIR and FINOPS_POLICY_PATHS point."""
    app, site, image_env = image_layout(tmp_path)
    assert {"scripts", "migrations", "policies", "alembic.ini"} <= {p.name for p in app.iterdir()}
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("FINOPS_", "DATABASE"))},
        **image_env,
        "PYTHONPATH": str(site),
        "DATABASE_URL": f"sqlite:///{tmp_path / 'image.sqlite'}",
        "AWS_EC2_METADATA_DISABLED": "true",
    }

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, *argv], cwd=app, env=env, capture_output=True, text=True, timeout=120
        )

    where = run("-c", "import backend; print(backend.__file__)")
    assert where.stdout.strip() == str(site / "backend" / "__init__.py"), where.stderr
    upgraded = run("-c", "from backend.cli import main; main()", "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stdout + upgraded.stderr
    health = run("scripts/health-check.py")
    assert "ok   schema:" in health.stdout, health.stdout + health.stderr
    policies = run(
        "-c",
        "from backend.core.policy_manager import PolicyManager; "
        "PolicyManager().validate_all_policies()",
    )
    assert "policy pack OK" in policies.stdout, policies.stdout + policies.stderr
    assert str(app / "policies") in policies.stdout
    # the default schedule path the runbook deletes is the one the image sets
    assert image_env["FINOPS_BEAT_SCHEDULE_PATH"] == str(tmp_path / "tmp" / "celerybeat-schedule")
