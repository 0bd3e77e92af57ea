"""docker-compose.yml and the Dockerfile, checked without a Docker engine:
the YAML parses into the services the docs name, with health checks and a
start order that holds; every file the Dockerfile copies exists; every
command they run is a real ``eventstore`` command line."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from storectl.cli import build_parser

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def instructions() -> list[tuple[str, str]]:
    """The Dockerfile's instructions (continuation lines joined)."""
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    out = []
    for raw in text.splitlines():
        line = raw.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def test_compose_services_health_checks_and_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "deploy", "service-role", "service"}
    assert services["postgres"]["image"] == "postgres:15"
    for name in ("postgres", "service"):
        assert services[name]["healthcheck"]["test"], name
    for name, service in services.items():
        for needed in service.get("depends_on", {}):
            assert needed in services, f"{name} depends on unknown {needed}"
    assert services["deploy"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (
        services["service"]["depends_on"]["service-role"]["condition"]
        == "service_completed_successfully"
    )
    # the service binds every interface inside its container (keys required:
    # no --no-auth), published on the host's loopback only
    assert "--no-auth" not in services["service"]["command"]
    assert services["service"]["ports"] == ["127.0.0.1:8080:8080"]
    assert "eventstore_service@" in services["service"]["environment"]["EVENTSTORE_DSN"]


def test_compose_commands_are_real_command_lines(compose: dict[str, Any]) -> None:
    parser = build_parser()
    services = compose["services"]
    for name in ("deploy", "service"):
        args = parser.parse_args([*services[name]["command"], "--dsn", "postgresql://x"])
        assert args.handler is not None, name
    parser.parse_args(["keys", "add", "assistant", "--role", "writer"])  # as the header says
    script = ROOT / "docker" / "create-service-role.sh"
    assert services["service-role"]["entrypoint"] == ["create-service-role"]
    subprocess.run(["sh", "-n", str(script)], check=True)
    assert script.stat().st_mode & 0o111


def test_dockerfile_copies_files_that_exist_and_runs_the_cli() -> None:
    steps = instructions()
    assert steps[0] == ("FROM", "python:3.11-slim")
    copied = []
    for word, rest in steps:
        if word == "COPY":
            *sources, _target = shlex.split(rest)
            copied += sources
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), source
    assert {"sqitch.plan", "sqitch", "eventstore", "storectl", "pyproject.toml"} <= set(copied)
    run = " ".join(rest for word, rest in steps if word == "RUN")
    assert "sqitch" in run and "libdbd-pg-perl" in run and "'.[service]'" in run
    env = " ".join(rest for word, rest in steps if word == "ENV")
    assert "EVENTSTORE_SQITCH_DIR=/app" in env
    entry = next(rest for word, rest in steps if word == "ENTRYPOINT")
    cmd = next(rest for word, rest in steps if word == "CMD")
    assert yaml.safe_load(entry) == ["eventstore"]
    assert build_parser().parse_args([*yaml.safe_load(cmd), "--dsn", "postgresql://x"]).port == 8080
    assert any(word == "HEALTHCHECK" and "/healthz" in rest for word, rest in steps)
    assert any(word == "USER" for word, _ in steps)
