"""The Sqitch wrapper: target URIs, environment, errors. No database, no sqitch."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from psycopg.conninfo import conninfo_to_dict

from eventstore import sqitch as sq
from eventstore.errors import EventStoreError, SqitchError
from eventstore.sqitch import (
    PSQL_INSTALL_HINT,
    SQITCH_INSTALL_HINT,
    Sqitch,
    SqitchTarget,
    build_target,
)

NO_ENV: dict[str, str] = {}
SAMPLE_PW = "s3cr:t@x"


# -- target URIs -------------------------------------------------------------


def test_url_dsn() -> None:
    t = build_target("postgresql://alice@db.example:6543/utcp", NO_ENV)
    assert (t.host, t.port, t.user, t.dbname, t.password) == (
        "db.example",
        6543,
        "alice",
        "utcp",
        None,
    )
    assert t.uri == "db:pg://alice@db.example:6543/utcp"


def test_key_value_dsn() -> None:
    t = build_target("host=10.0.0.7 port=6000 user=bob dbname=events", NO_ENV)
    assert t.uri == "db:pg://bob@10.0.0.7:6000/events"


def test_port_is_always_explicit() -> None:
    t = build_target("postgresql://root@127.0.0.1/test", NO_ENV)
    assert t.uri == "db:pg://root@127.0.0.1:5432/test"


@pytest.mark.parametrize(
    "dsn",
    [
        "postgresql://root:s3cr%3At%40x@127.0.0.1:5432/test",
        "host=127.0.0.1 port=5432 user=root dbname=test password='s3cr:t@x'",
    ],
)
def test_password_stays_out_of_uri_and_command_line(dsn: str) -> None:
    t = build_target(dsn, NO_ENV)
    assert t.password == SAMPLE_PW
    assert t.uri == "db:pg://root@127.0.0.1:5432/test"
    runner = Sqitch(environ={"PATH": "/nowhere"})
    argv = runner.command(["deploy", "--verify"], t)
    assert argv == ["sqitch", "deploy", "--verify", "db:pg://root@127.0.0.1:5432/test"]
    assert not any("s3cr" in a for a in argv)
    assert "s3cr" not in repr(t)
    env = runner.child_env(t)
    assert env["PGPASSWORD"] == SAMPLE_PW
    assert env["SQITCH_PASSWORD"] == SAMPLE_PW


def test_no_password_leaves_environment_alone() -> None:
    t = build_target("postgresql://root@127.0.0.1/test", NO_ENV)
    env = Sqitch(environ={"PATH": "/bin", "PGPASSWORD": "from-env"}).child_env(t)
    assert env["PGPASSWORD"] == "from-env"
    assert "SQITCH_PASSWORD" not in env


def test_password_in_conninfo_for_psycopg() -> None:
    t = build_target(f"postgresql://root:{quote(SAMPLE_PW, safe='')}@127.0.0.1:5432/test", NO_ENV)
    info = conninfo_to_dict(t.conninfo(dbname="postgres"))
    assert info["password"] == SAMPLE_PW
    assert info["dbname"] == "postgres"
    assert info["host"] == "127.0.0.1"
    assert info["port"] == "5432"
    assert info["user"] == "root"
    assert info["connect_timeout"] == "10"


def test_percent_encoding_url_dsn() -> None:
    t = build_target("postgresql://al%20ice%40corp@h:5432/my%2Fdb%3Aé", NO_ENV)
    assert t.user == "al ice@corp"
    assert t.dbname == "my/db:é"
    assert t.uri == "db:pg://al%20ice%40corp@h:5432/my%2Fdb%3A%C3%A9"


def test_percent_encoding_key_value_dsn() -> None:
    t = build_target("host=h user='a:b' dbname='x?y#z'", NO_ENV)
    assert t.uri == "db:pg://a%3Ab@h:5432/x%3Fy%23z"


def test_extra_parameters_become_query_parameters() -> None:
    t = build_target("postgresql://root@db:5432/test?sslmode=require&application_name=x/y", NO_ENV)
    assert t.params == {"sslmode": "require", "application_name": "x/y"}
    assert t.uri == "db:pg://root@db:5432/test?application_name=x%2Fy&sslmode=require"


def test_unix_socket_directory_goes_in_query() -> None:
    t = build_target("host=/var/run/postgresql user=root dbname=test", NO_ENV)
    assert t.uri == "db:pg://root@:5432/test?host=%2Fvar%2Frun%2Fpostgresql"


def test_ipv6_host_is_bracketed() -> None:
    t = build_target("host=::1 port=5433 user=root dbname=test", NO_ENV)
    assert t.uri == "db:pg://root@[::1]:5433/test"


def test_hostaddr_alone_is_the_host() -> None:
    t = build_target("hostaddr=192.0.2.1 user=root dbname=test", NO_ENV)
    assert t.uri == "db:pg://root@192.0.2.1:5432/test"


# -- fallbacks ---------------------------------------------------------------


def test_env_fallbacks() -> None:
    env = {"PGHOST": "envhost", "PGPORT": "7000", "PGUSER": "envuser", "PGDATABASE": "envdb"}
    t = build_target("", env)
    assert t.uri == "db:pg://envuser@envhost:7000/envdb"


def test_dsn_wins_over_env() -> None:
    env = {"PGHOST": "envhost", "PGPORT": "7000", "PGUSER": "envuser", "PGDATABASE": "envdb"}
    t = build_target("postgresql://u@h:1234/d", env)
    assert t.uri == "db:pg://u@h:1234/d"


def test_libpq_defaults_without_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("eventstore.sqitch.getpass.getuser", lambda: "osuser")
    t = build_target("", NO_ENV)
    assert t.uri == "db:pg://osuser@localhost:5432/osuser"


def test_dbname_defaults_to_the_user_name() -> None:
    assert build_target("user=carol host=h", NO_ENV).dbname == "carol"
    assert build_target("host=h", {"PGUSER": "dave"}).dbname == "dave"


def test_process_environment_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGHOST", "from-os-env")
    monkeypatch.setenv("PGUSER", "u")
    monkeypatch.delenv("PGPORT", raising=False)
    monkeypatch.delenv("PGDATABASE", raising=False)
    assert build_target("").uri == "db:pg://u@from-os-env:5432/u"


# -- bad DSNs ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "fragment"),
    [
        ("host=h port=abc", "invalid port"),
        ("host=a,b user=u", "several hosts"),
        ("service=prod", "service"),
        ("this is not a dsn", "invalid database DSN"),
    ],
)
def test_bad_dsns(dsn: str, fragment: str) -> None:
    with pytest.raises(SqitchError, match=fragment) as info:
        build_target(dsn, NO_ENV)
    assert isinstance(info.value, EventStoreError)


# -- running sqitch ----------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    (tmp_path / "sqitch.plan").write_text("%project=utcp\n")
    return tmp_path


def _no_db(*args: Any, **kwargs: Any) -> Any:
    raise AssertionError("no database connection expected")


def test_missing_sqitch_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("eventstore.sqitch.shutil.which", lambda name, path=None: None)
    monkeypatch.setattr("eventstore.sqitch.psycopg.connect", _no_db)
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    with pytest.raises(SqitchError) as info:
        runner.deploy("postgresql://root@127.0.0.1:5432/x")
    assert info.value.message == SQITCH_INSTALL_HINT
    assert "apt-get install -y sqitch libdbd-pg-perl" in str(info.value)
    assert "https://sqitch.org/download/" in str(info.value)
    assert info.value.operation == "db deploy"


def test_missing_psql_binary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    found = {"sqitch": "/usr/bin/sqitch"}
    monkeypatch.setattr("eventstore.sqitch.shutil.which", lambda name, path=None: found.get(name))
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    with pytest.raises(SqitchError) as info:
        runner.verify("postgresql://root@127.0.0.1:5432/x")
    assert info.value.message == PSQL_INSTALL_HINT
    assert "postgresql-client" in info.value.message
    assert info.value.operation == "db verify"


class FakeRun:
    def __init__(self, returncode: int, stdout: str | None = None) -> None:
        self.returncode = returncode
        self.stdout = stdout
        self.calls: list[tuple[Sequence[str], dict[str, Any]]] = []

    def __call__(self, argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        self.calls.append((list(argv), kwargs))
        out = self.stdout if kwargs.get("stdout") is subprocess.PIPE else None
        return subprocess.CompletedProcess(argv, self.returncode, out, None)


@pytest.fixture
def tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        "eventstore.sqitch.shutil.which", lambda name, path=None: f"/opt/bin/{name}"
    )


@pytest.mark.usefixtures("tools")
def test_run_uses_project_dir_target_and_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = FakeRun(0, "Verify successful\n")
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", fake)
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    out = runner.verify("postgresql://root:pw@127.0.0.1:5432/utcp", capture=True)
    assert out == "Verify successful\n"
    [(argv, kwargs)] = fake.calls
    assert argv == ["/opt/bin/sqitch", "verify", "db:pg://root@127.0.0.1:5432/utcp"]
    assert kwargs["cwd"] == tmp_path
    assert kwargs["env"]["PGPASSWORD"] == "pw"
    assert kwargs["env"]["SQITCH_FULLNAME"]
    assert "@" in kwargs["env"]["SQITCH_EMAIL"]


@pytest.mark.usefixtures("tools")
def test_output_passes_through_by_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeRun(0)
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", fake)
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    assert runner.revert("postgresql://root@h/utcp", to="roles") == ""
    [(argv, kwargs)] = fake.calls
    assert argv == ["/opt/bin/sqitch", "revert", "-y", "--to", "roles", "db:pg://root@h:5432/utcp"]
    assert kwargs["stdout"] is None
    assert kwargs["stderr"] is None


@pytest.mark.usefixtures("tools")
def test_existing_sqitch_identity_is_kept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = FakeRun(0)
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", fake)
    env = {"PATH": "/bin", "SQITCH_FULLNAME": "Ops Bot", "SQITCH_EMAIL": "ops@example.org"}
    Sqitch(_project(tmp_path), environ=env).status("postgresql://root@h/utcp")
    child_env = fake.calls[0][1]["env"]
    assert (child_env["SQITCH_FULLNAME"], child_env["SQITCH_EMAIL"]) == (
        "Ops Bot",
        "ops@example.org",
    )


@pytest.mark.usefixtures("tools")
def test_failure_names_command_exit_code_and_output(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    lines = [f"line {i}" for i in range(40)] + ['Unknown change: "nope"']
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", FakeRun(2, "\n".join(lines)))
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    with pytest.raises(SqitchError) as info:
        runner.revert("postgresql://root:pw@h/utcp", to="nope", capture=True)
    err = info.value
    assert err.operation == "db revert"
    assert err.message.startswith("sqitch revert failed with exit code 2")
    assert 'Unknown change: "nope"' in err.message
    assert "line 39" in err.message
    assert "line 0\n" not in err.message  # only the tail
    assert "pw" not in err.message


@pytest.mark.usefixtures("tools")
def test_failure_without_capture(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", FakeRun(2))
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    with pytest.raises(SqitchError, match=r"sqitch verify failed with exit code 2"):
        runner.verify("postgresql://root@h/utcp")


@pytest.mark.usefixtures("tools")
def test_status_nothing_deployed_is_not_an_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", FakeRun(1, "No changes deployed\n"))
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    assert runner.status("postgresql://root@h/utcp", capture=True) == "No changes deployed\n"
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", FakeRun(2))
    with pytest.raises(SqitchError, match="exit code 2"):
        runner.status("postgresql://root@h/utcp")


@pytest.mark.usefixtures("tools")
def test_deploy_creates_database_then_deploys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    order: list[str] = []
    fake = FakeRun(0)

    def fake_ensure(target: SqitchTarget, *, operation: str) -> bool:
        order.append(f"ensure {target.dbname} {operation}")
        return True

    def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        order.append("run")
        return fake(argv, **kwargs)

    monkeypatch.setattr(sq, "_ensure_database", fake_ensure)
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", run)
    Sqitch(_project(tmp_path), environ={"PATH": "/bin"}).deploy("postgresql://root@h/utcp")
    assert order == ["ensure utcp db deploy", "run"]
    assert fake.calls[0][0] == ["/opt/bin/sqitch", "deploy", "--verify", "db:pg://root@h:5432/utcp"]


@pytest.mark.usefixtures("tools")
def test_missing_plan_is_reported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", _no_db)
    runner = Sqitch(tmp_path, environ={"PATH": "/bin"})
    with pytest.raises(SqitchError, match=r"no sqitch\.plan in .*EVENTSTORE_SQITCH_DIR"):
        runner.verify("postgresql://root@h/utcp")


@pytest.mark.usefixtures("tools")
def test_names_sqitch_cannot_pass_are_refused_before_anything_runs(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr("eventstore.sqitch.subprocess.run", _no_db)
    monkeypatch.setattr("eventstore.sqitch.psycopg.connect", _no_db)
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    with pytest.raises(SqitchError, match="dbname='my db'"):
        runner.deploy("host=h user=root dbname='my db'")


def test_project_dir_resolution(tmp_path: Path) -> None:
    repo_root = Path(sq.__file__).resolve().parent.parent
    assert Sqitch(environ={}).project_dir == repo_root
    assert (repo_root / "sqitch.plan").is_file()
    assert Sqitch(environ={"EVENTSTORE_SQITCH_DIR": str(tmp_path)}).project_dir == tmp_path
    other = tmp_path / "other"
    assert Sqitch(other, environ={"EVENTSTORE_SQITCH_DIR": str(tmp_path)}).project_dir == other


# -- secrets: never in a URI, a repr, a message or a command line ---------------

SSL_PW = "sslS3cret"


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://root:{quote(SAMPLE_PW, safe='')}@127.0.0.1:5432/test"
        f"?sslpassword={SSL_PW}&sslmode=require",
        f"host=127.0.0.1 user=root dbname=test password='{SAMPLE_PW}' sslpassword={SSL_PW} "
        "sslmode=require",
    ],
)
def test_sslpassword_stays_out_of_uri_repr_and_command_line(dsn: str) -> None:
    t = build_target(dsn, NO_ENV)
    assert t.params == {"sslmode": "require"}
    assert t.secrets == {"sslpassword": SSL_PW}
    assert t.uri == "db:pg://root@127.0.0.1:5432/test?sslmode=require"
    for shown in (repr(t), str(t), t.uri, t.describe()):
        assert SSL_PW not in shown and "s3cr" not in shown
    argv = Sqitch(environ={"PATH": "/nowhere"}).command(["deploy"], t)
    assert not any(SSL_PW in a or "s3cr" in a for a in argv)
    # psycopg (in this process) still gets every parameter.
    assert conninfo_to_dict(t.conninfo())["sslpassword"] == SSL_PW


def test_secrets_reach_sqitch_through_a_private_service_file() -> None:
    t = build_target(f"postgresql://root:pw@h/test?sslpassword={SSL_PW}", NO_ENV)
    runner = Sqitch(environ={"PATH": "/nowhere"})
    with sq.secret_service_file(t) as path:
        assert path is not None
        assert (Path(path).stat().st_mode & 0o777) == 0o600
        assert (Path(path).parent.stat().st_mode & 0o777) == 0o700
        assert Path(path).read_text() == f"[{sq.SERVICE_NAME}]\nsslpassword={SSL_PW}\n"
        env = runner.child_env(t, path)
        assert (env["PGSERVICEFILE"], env["PGSERVICE"]) == (path, sq.SERVICE_NAME)
        assert env["PGPASSWORD"] == "pw"
    assert not Path(path).exists()
    with sq.secret_service_file(build_target("postgresql://root:pw@h/test", NO_ENV)) as none:
        assert none is None


@pytest.mark.usefixtures("tools")
def test_run_passes_secrets_in_a_file_that_is_gone_afterwards(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    seen: dict[str, str] = {}

    def run(argv: Sequence[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        seen.update(kwargs["env"])
        seen["file"] = Path(kwargs["env"]["PGSERVICEFILE"]).read_text()
        seen["argv"] = " ".join(argv)
        return subprocess.CompletedProcess(argv, 0, "", None)

    monkeypatch.setattr("eventstore.sqitch.subprocess.run", run)
    runner = Sqitch(_project(tmp_path), environ={"PATH": "/bin"})
    runner.verify(f"postgresql://root:pw@127.0.0.1/utcp?sslpassword={SSL_PW}", capture=True)
    assert f"sslpassword={SSL_PW}" in seen["file"]
    assert SSL_PW not in seen["argv"] and "pw@" not in seen["argv"]
    assert not Path(seen["PGSERVICEFILE"]).exists()


@pytest.mark.parametrize(
    "dsn",
    [
        f"postgresql://root:{SSL_PW}@[::1/test",  # unterminated IPv6 host: libpq quotes the URI
        f"postgresql://root:{SSL_PW}%zz@h/test",  # bad percent-encoding: libpq quotes the token
        f"postgresql://root@h/test?sslpassword={SSL_PW}&bad",
        f"host=h password={SSL_PW} sslpassword={SSL_PW} oops",
    ],
)
def test_malformed_dsn_errors_show_no_secret(dsn: str) -> None:
    with pytest.raises(SqitchError) as info:
        build_target(dsn, NO_ENV)
    error = info.value
    assert "invalid database DSN" in str(error)
    for shown in (str(error), repr(error), str(error.__cause__), repr(error.__cause__)):
        assert SSL_PW not in shown
    assert error.__context__ is None or SSL_PW not in str(error.__context__)


def test_a_secret_sqitch_cannot_pass_is_refused_without_showing_it() -> None:
    t = build_target(f"host=h user=u sslpassword=' {SSL_PW}'", NO_ENV)
    with pytest.raises(SqitchError, match="sslpassword") as info:
        sq._check_sqitch_safe(t, "db deploy")
    assert SSL_PW not in str(info.value)
