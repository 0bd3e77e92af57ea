"""The embedded default (scripts/local-pg.sh): with no DSN set and nothing
answering at the default address, `make bootstrap` starts a project-local
PostgreSQL cluster (or reuses it) and `make stop` stops it; with a server at
the default address nothing changes.

The default address is pointed at an unused port (EVENTSTORE_DEFAULT_PORT),
the cluster at a free port and a temporary directory, so the test never
touches the server on 5432 nor the project's own .pgdata/.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

ROOT = Path(__file__).resolve().parents[2]
LOCAL_PG = ROOT / "scripts" / "local-pg.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def make(target: str, env: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "-C", str(ROOT), *extra, target],
        env=env,
        text=True,
        capture_output=True,
        timeout=90,
        check=False,
    )


def answers(port: int) -> bool:
    try:
        with psycopg.connect(
            f"postgresql://root@127.0.0.1:{port}/postgres", connect_timeout=5
        ) as conn:
            return conn.execute("SELECT 1").fetchone() == (1,)
    except psycopg.OperationalError:
        return False


@pytest.fixture
def local_env() -> Iterator[dict[str, str]]:
    """No DSN set, an unused default port, a private data directory."""
    tmp = Path(tempfile.mkdtemp(prefix="utcp-local-pg-"))
    tmp.chmod(0o755)  # the postgres OS user (when run as root) enters it
    env = {
        k: v
        for k, v in os.environ.items()
        if k
        not in (
            "EVENTSTORE_DSN",
            "EVENTSTORE_TEST_DSN",
            "EVENTSTORE_LOCAL_PG",
            "MAKEFLAGS",
            "MAKELEVEL",
        )
    }
    env.update(
        EVENTSTORE_DEFAULT_PORT=str(free_port()),
        EVENTSTORE_LOCAL_PORT=str(free_port()),
        EVENTSTORE_LOCAL_PGDATA=str(tmp / ".pgdata"),
    )
    try:
        yield env
    finally:
        subprocess.run(
            [str(LOCAL_PG), "stop"], env=env, capture_output=True, timeout=90, check=False
        )
        shutil.rmtree(tmp, ignore_errors=True)


def make_variables(env: dict[str, str]) -> dict[str, str]:
    """The Makefile's variables as it sets them (`make -p`, nothing run)."""
    out = make("help", env, "-p", "-n").stdout
    values: dict[str, str] = {}
    for line in out.splitlines():
        for op in (" := ", " = "):
            name, sep, value = line.partition(op)
            if sep and name in ("PG_PORT", "EVENTSTORE_LOCAL_PG", "EVENTSTORE_DSN"):
                values.setdefault(name, value)
    return values


def test_without_a_server_bootstrap_starts_a_local_cluster_and_make_stop_stops_it(
    local_env: dict[str, str],
) -> None:
    port = int(local_env["EVENTSTORE_LOCAL_PORT"])
    assert make_variables(local_env).get("EVENTSTORE_LOCAL_PG") == "1"

    first = make("bootstrap", local_env)
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"starting the project's PostgreSQL on 127.0.0.1:{port}" in first.stdout
    assert answers(port)
    assert (Path(local_env["EVENTSTORE_LOCAL_PGDATA"]) / "data" / "PG_VERSION").exists()

    again = make("bootstrap", local_env)  # reused, not started twice
    assert again.returncode == 0, again.stdout + again.stderr
    assert "is running on" in again.stdout

    stopped = make("stop", local_env)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "stopped the project's PostgreSQL" in stopped.stdout
    assert not answers(port)

    nothing = make("stop", local_env)  # nothing to stop is fine
    assert nothing.returncode == 0, nothing.stdout + nothing.stderr
    assert "not running" in nothing.stdout


def test_a_server_at_the_default_address_or_set_dsns_change_nothing(
    local_env: dict[str, str],
) -> None:
    with socket.socket() as listener:  # "a server" answering at the default port
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        default = listener.getsockname()[1]
        env = {**local_env, "EVENTSTORE_DEFAULT_PORT": str(default)}
        values = make_variables(env)
        # An outer make's choice (make test runs this test) is not inherited.
        inherited = make_variables({**env, "EVENTSTORE_LOCAL_PG": "1"})
    assert values.get("PG_PORT") == str(default)
    assert not values.get("EVENTSTORE_LOCAL_PG")
    assert not inherited.get("EVENTSTORE_LOCAL_PG")

    both = {
        **local_env,
        "EVENTSTORE_DSN": "postgresql://x@h/d",
        "EVENTSTORE_TEST_DSN": "postgresql://x@h/p",
    }
    values = make_variables(both)
    assert not values.get("EVENTSTORE_LOCAL_PG")
    assert not values.get("PG_PORT")

    stop = make("stop", local_env)  # never initialised: nothing to stop
    assert stop.returncode == 0, stop.stdout + stop.stderr
    assert "no project-local PostgreSQL" in stop.stdout
