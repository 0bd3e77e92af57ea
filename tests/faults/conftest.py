"""Fault tests: a PRIVATE PostgreSQL 15 cluster started by the test session.

initdb in a temporary directory, its own free port on 127.0.0.1, run as the
``postgres`` OS user when the tests run as root (storectl.drill.Cluster, the
drill's own), restarted, stopped and its backends killed by the tests, and
always stopped and removed at the end. The shared server on 5432 is never
touched. Missing PostgreSQL binaries or Sqitch fail the tests (never skip).

Each test's figures are printed in pytest's terminal summary ("fault
tests"), so they show in the CI log with or without ``-s``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from storectl.drill import PG_BIN, chown_postgres

from .harness import FIGURES, FaultCluster, eventstore_cli


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "soak: the bounded soak (runs in the normal suite; FAULTS_SOAK_SECONDS makes it longer)",
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if FIGURES:
        terminalreporter.section("fault tests")
        for line in FIGURES:
            terminalreporter.write_line(line)


def _require_tools() -> None:
    missing = [str(PG_BIN / t) for t in ("initdb", "pg_ctl") if not (PG_BIN / t).exists()]
    missing += [t for t in ("sqitch", "psql") if shutil.which(t) is None]
    if os.geteuid() == 0 and shutil.which("runuser") is None:
        missing.append("runuser")
    if missing:
        pytest.fail(
            f"the fault tests need {', '.join(missing)}: install postgresql-15 "
            "(set DRILL_PG_BIN for another location) and run `make bootstrap`",
            pytrace=False,
        )


@pytest.fixture(scope="package")
def fault_cluster() -> Iterator[FaultCluster]:
    """A private cluster for the fault tests, stopped and removed when they
    end (package scope: not left running through the rest of the suite)."""
    _require_tools()
    tmp = Path(tempfile.mkdtemp(prefix="utcp-faults-"))
    tmp.chmod(0o755)
    chown_postgres(tmp)
    cluster = FaultCluster("faults", tmp)
    try:
        # fsync off: the faults are restarts and kills, not power cuts.
        cluster.initdb({"fsync": "off", "max_connections": "100"})
        cluster.start()
        yield cluster
    finally:
        cluster.stop("immediate")
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture
def fault_dsn(fault_cluster: FaultCluster) -> str:
    """A fresh database on the private cluster, deployed by `eventstore db deploy`."""
    fault_cluster.wait_ready("postgres")
    dsn = fault_cluster.dsn(f"faults_{uuid.uuid4().hex[:8]}")
    deployed = eventstore_cli("db", "deploy", "--dsn", dsn)
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    return dsn
