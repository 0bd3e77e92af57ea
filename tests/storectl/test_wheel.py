"""The package works wherever it is installed (docs/packaging.md).

A wheel is built from the repository's files (what a clone has, with this
checkout's changes), installed into a fresh virtual environment in a
temporary directory, and its ``eventstore`` command deploys the schema into a
new database from a directory that has nothing of the repository in it.

The wheel is installed with ``--no-deps --no-index``: its dependencies
(psycopg, msgspec, stamina) come from this test run's environment, through a
``.pth`` line that adds its site-packages *after* the fresh one, so the test
needs no package index. The package itself can only come from the wheel:
the run's own install of the project is an editable one, whose finder that
line does not load, and the test checks where every module was loaded from.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from tests.support.database import _require_postgres, admin_dsn, dsn_for

REPO = Path(__file__).resolve().parents[2]


def _repository_files() -> list[str]:
    """The files a clone of this checkout would have (tracked, or new and
    not ignored), relative to the repository root."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        check=True,
    )
    names = [n for n in listed.stdout.decode().split("\0") if n]
    return [n for n in names if (REPO / n).is_file()]  # not files deleted in the work tree


def _run(
    argv: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=180, check=False, cwd=cwd, env=env
    )
    assert proc.returncode == 0, f"{argv} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from a copy of the repository's files (the build
    leaves its build/ and egg-info in the copy, not in the checkout)."""
    source = tmp_path_factory.mktemp("source")
    for name in _repository_files():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, source / name)
    dist = tmp_path_factory.mktemp("dist")
    _run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("-w", str(dist), str(source)),
        ]
    )
    (built,) = dist.glob("utcp_eventstore-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel installed."""
    root = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--without-pip", str(root)])
    python = root / "bin" / "python"
    _run(
        [
            *(sys.executable, "-m", "pip", "--python", str(python), "install", "-q"),
            *("--no-deps", "--no-index", str(wheel)),
        ]
    )
    purelib = _run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    ).stdout.strip()
    deps = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "zz_test_dependencies.pth").write_text("\n".join(sorted(deps)) + "\n")
    return root


@pytest.fixture
def elsewhere(tmp_path: Path) -> Path:
    """A working directory with nothing of the repository in it."""
    path = tmp_path / "elsewhere"
    path.mkdir()
    return path


def _env() -> dict[str, str]:
    """This environment, without anything that would point the installed
    package at the repository."""
    env = dict(os.environ)
    for name in ("EVENTSTORE_SQITCH_DIR", "PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV"):
        env.pop(name, None)
    return env


@pytest.fixture
def new_database() -> Iterator[str]:
    """The DSN of a database that does not exist yet (``db deploy`` creates
    it); dropped at the end."""
    _require_postgres()
    name = f"utcp_wheel_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    try:
        yield dsn_for(name)
    finally:
        with psycopg.connect(admin_dsn(), autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_the_wheel_carries_the_schema_and_the_library_not_the_demo(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    plan = (REPO / "sqitch.plan").read_text()
    changes = [
        line.split()[0]
        for line in plan.splitlines()
        if line.strip() and not line.startswith(("%", "#", "@"))
    ]
    assert changes, "no changes in sqitch.plan"
    assert {"eventstore/_sqitch/sqitch.plan", "eventstore/_sqitch/sqitch.conf"} <= names
    for change in changes:
        for kind in ("deploy", "revert", "verify"):
            assert f"eventstore/_sqitch/sqitch/{kind}/{change}.sql" in names
    for package in ("eventstore", "trading", "projections", "storectl"):
        assert f"{package}/__init__.py" in names
        assert f"{package}/py.typed" in names
    assert "storectl/__main__.py" in names
    assert "storectl/demo.py" not in names
    assert "storectl/drill.py" not in names
    assert not any(n.startswith(("tests/", "bench/", "docs/", "scripts/")) for n in names)


def test_the_installed_command_deploys_from_any_directory(
    venv: Path, elsewhere: Path, new_database: str
) -> None:
    eventstore = venv / "bin" / "eventstore"
    deployed = _run(
        [str(eventstore), "db", "deploy", "--dsn", new_database], cwd=elsewhere, env=_env()
    )
    assert "stored_events" in deployed.stdout + deployed.stderr
    with psycopg.connect(new_database) as conn:
        row = conn.execute("SELECT to_regclass('utcp.stored_events') IS NOT NULL").fetchone()
        assert row == (True,)
    status = _run(
        [str(eventstore), "db", "status", "--dsn", new_database], cwd=elsewhere, env=_env()
    )
    assert "Nothing to deploy" in status.stdout + status.stderr

    usage = _run([str(eventstore), "--help"], cwd=elsewhere, env=_env())
    assert usage.stdout.startswith("usage: eventstore")
    for command in ("db", "append", "read", "tail", "verify", "anchor", "project"):
        assert command in usage.stdout


def test_the_installed_package_is_the_wheels_own(venv: Path, elsewhere: Path) -> None:
    probe = """
import importlib.util, json, pathlib
import eventstore, eventstore.sqitch, projections, storectl, trading
print(json.dumps({
    "modules": [m.__file__ for m in (eventstore, trading, projections, storectl)],
    "project_dir": str(eventstore.sqitch.Sqitch(environ={}).project_dir),
    "typed": [str(pathlib.Path(m.__file__).with_name("py.typed").is_file())
              for m in (eventstore, trading, projections, storectl)],
    "version": eventstore.__version__,
    "demo": importlib.util.find_spec("storectl.demo") is not None,
}))
"""
    out = _run([str(venv / "bin" / "python"), "-c", probe], cwd=elsewhere, env=_env()).stdout
    found = json.loads(out)
    root = venv.resolve()
    for path in [*found["modules"], found["project_dir"]]:
        assert Path(path).resolve().is_relative_to(root), path
    assert Path(found["project_dir"]).name == "_sqitch"
    assert found["typed"] == ["True"] * 4
    assert found["version"] == _project_version()
    assert found["demo"] is False


def _project_version() -> str:
    with open(REPO / "pyproject.toml", "rb") as f:
        version: str = tomllib.load(f)["project"]["version"]
    return version
