"""Run Sqitch, which owns the schema, from Python.

Sqitch is a Perl program driven through a subprocess. Each command gets an
explicit target URI (``db:pg://user@host:port/dbname``) built from the libpq
DSN, so Sqitch never falls back on defaults of its own: missing parts are
filled in here the way libpq would (``PGHOST``/``PGPORT``/``PGUSER``/
``PGDATABASE``, then ``localhost``, 5432, the OS user, the user name). No secret ever goes on
a command line (where any local user sees it with ``ps``), in a message or
in a repr: the child gets the password as ``PGPASSWORD`` (and
``SQITCH_PASSWORD``, which Sqitch itself reads), and any other secret
parameter (``sslpassword``) through a private libpq service file
(``PGSERVICEFILE``, mode 0600, removed when the command ends), which both
DBD::Pg and the ``psql`` that Sqitch runs read.

Sqitch runs in the project directory, where ``sqitch.plan`` lives: the
``project_dir`` argument, else ``$EVENTSTORE_SQITCH_DIR``, else the copy of
the project an installed package carries (``eventstore/_sqitch/``, made
when the wheel is built: docs/packaging.md), else the parent of this
package's directory (the repository root in a source checkout).
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote, urlencode

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from .errors import SqitchError
from .settings import SECRET_PARAMS, redact, redact_dsn

__all__ = [
    "PSQL_INSTALL_HINT",
    "SERVICE_NAME",
    "SQITCH_INSTALL_HINT",
    "Sqitch",
    "SqitchTarget",
    "build_target",
    "deploy",
    "ensure_database",
    "revert",
    "secret_service_file",
    "status",
    "verify",
]

SQITCH_INSTALL_HINT = (
    "sqitch is not installed: run `sudo apt-get install -y sqitch libdbd-pg-perl` "
    "(Debian/Ubuntu) or see https://sqitch.org/download/"
)
PSQL_INSTALL_HINT = (
    "psql is not installed: run `sudo apt-get install -y postgresql-client` "
    "(Debian/Ubuntu) or install the PostgreSQL client tools for your system"
)

#: Environment variable naming the directory that holds sqitch.plan.
PROJECT_DIR_ENV = "EVENTSTORE_SQITCH_DIR"
#: The database ``ensure_database`` connects to in order to create another one.
MAINTENANCE_DB = "postgres"
#: Lines of captured output quoted in a SqitchError.
_TAIL_LINES = 20

# DSN keys that the target URI carries in its authority and path, or that
# must not travel in it at all (secrets go through the environment).
_URI_KEYS = frozenset({"host", "hostaddr", "port", "user", "dbname"}) | SECRET_PARAMS
#: The libpq service that carries secret parameters to Sqitch's children.
SERVICE_NAME = "eventstore_sqitch"


@dataclass(frozen=True)
class SqitchTarget:
    """A fully explicit connection, as Sqitch and psycopg are given it."""

    host: str
    port: int
    user: str
    dbname: str
    password: str | None = field(default=None, repr=False)
    #: Other libpq parameters of the DSN (sslmode, connect_timeout, …), no secret.
    params: Mapping[str, str] = field(default_factory=dict)
    #: Secret parameters other than the password (sslpassword): never in
    #: the URI, the repr, a message or a command line.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def uri(self) -> str:
        """The Sqitch target URI. It never contains a secret."""
        user = quote(self.user, safe="")
        dbname = quote(self.dbname, safe="")
        query = dict(self.params)
        if self.host.startswith("/"):
            # A Unix-socket directory cannot be a URI host: libpq gets it as a
            # parameter (Sqitch hands query parameters to both DBD::Pg and psql).
            host = ""
            query = {"host": self.host, **query}
        elif ":" in self.host:
            host = f"[{self.host}]"  # IPv6 literal
        else:
            host = self.host
        uri = f"db:pg://{user}@{host}:{self.port}/{dbname}"
        if query:
            uri += "?" + urlencode(sorted(query.items()), quote_via=quote, safe="")
        return uri

    def conninfo(self, *, dbname: str | None = None) -> str:
        """A libpq connection string with every part explicit (password included).

        ``connect_timeout`` defaults to 10 s unless the DSN sets it.
        """
        return make_conninfo(
            "",
            **{"connect_timeout": "10", **self.params, **self.secrets},
            host=self.host,
            port=str(self.port),
            user=self.user,
            dbname=self.dbname if dbname is None else dbname,
            password=self.password,
        )

    def describe(self, dbname: str | None = None) -> str:
        """``host:port/dbname as user``, for messages."""
        return f"{self.host}:{self.port}/{dbname or self.dbname} as {self.user}"


def build_target(dsn: str, environ: Mapping[str, str] | None = None) -> SqitchTarget:
    """Resolve ``dsn`` (URL or key=value) into an explicit :class:`SqitchTarget`.

    Missing parts come from ``PGHOST``/``PGPORT``/``PGUSER``/``PGDATABASE`` in
    ``environ`` (default ``os.environ``), then ``localhost``, 5432, the OS user
    and the user name, as libpq does.
    """
    env = os.environ if environ is None else environ
    malformed: SqitchError | None = None
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        # Raised outside this block, chained to a redacted copy: libpq quotes
        # the DSN, password and all, in some of these messages.
        malformed = SqitchError(
            f"invalid database DSN {redact_dsn(dsn)!r}: {redact(_one_line(exc), dsn)}",
            operation="db",
        )
        malformed.__cause__ = type(exc)(redact(str(exc), dsn))
    if malformed is not None:
        raise malformed
    values = {k: str(v) for k, v in params.items() if v is not None and str(v) != ""}
    if "service" in values:
        raise SqitchError(
            "DSNs naming a service (service=...) are not supported here: "
            "give host, port, user and dbname explicitly",
            operation="db",
        )

    host = values.get("host") or values.get("hostaddr") or env.get("PGHOST") or "localhost"
    port_text = values.get("port") or env.get("PGPORT") or "5432"
    if "," in host or "," in port_text:
        raise SqitchError(
            f"DSNs with several hosts are not supported here: host={host!r}", operation="db"
        )
    try:
        port = int(port_text)
    except ValueError:
        raise SqitchError(f"invalid port in database DSN: {port_text!r}", operation="db") from None
    user = values.get("user") or env.get("PGUSER") or _os_user()
    if not user:
        raise SqitchError(
            "cannot tell which database user to connect as: put user= in the DSN or set PGUSER",
            operation="db",
        )
    dbname = values.get("dbname") or env.get("PGDATABASE") or user
    extra = {k: v for k, v in values.items() if k not in _URI_KEYS}
    if "hostaddr" in values and "host" in values:
        extra["hostaddr"] = values["hostaddr"]
    return SqitchTarget(
        host=host,
        port=port,
        user=user,
        dbname=dbname,
        password=values.get("password"),
        params=extra,
        secrets={k: v for k, v in values.items() if k in SECRET_PARAMS and k != "password"},
    )


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry and no LOGNAME/USER
        return ""


def _one_line(exc: BaseException) -> str:
    return re.sub(r"\s+", " ", str(exc)).strip() or type(exc).__name__


#: Where a built package keeps its copy of the Sqitch project (setup.py).
PACKAGED_PROJECT_DIR = Path(__file__).resolve().parent / "_sqitch"


def _default_project_dir(environ: Mapping[str, str]) -> Path:
    configured = environ.get(PROJECT_DIR_ENV)
    if configured:
        return Path(configured)
    if (PACKAGED_PROJECT_DIR / "sqitch.plan").is_file():  # an installed wheel
        return PACKAGED_PROJECT_DIR
    return PACKAGED_PROJECT_DIR.parent.parent  # a source checkout: the repository root


class Sqitch:
    """Runs Sqitch commands against explicit targets.

    ``project_dir`` is where ``sqitch.plan`` and ``sqitch.conf`` live (see the
    module docs for the default). ``environ`` is the base environment of the
    child processes (default: ``os.environ`` at call time).
    """

    def __init__(
        self,
        project_dir: str | os.PathLike[str] | None = None,
        *,
        executable: str = "sqitch",
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self._environ = environ
        self._project_dir = Path(project_dir) if project_dir is not None else None
        self.executable = executable

    @property
    def project_dir(self) -> Path:
        if self._project_dir is not None:
            return self._project_dir
        return _default_project_dir(self._base_env())

    def _base_env(self) -> Mapping[str, str]:
        return os.environ if self._environ is None else self._environ

    # -- public commands -------------------------------------------------

    def deploy(self, dsn: str, *, to: str | None = None, capture: bool = False) -> str:
        """Create the database if needed, then ``sqitch deploy --verify``."""
        target = build_target(dsn, self._base_env())
        self._preflight(target, "db deploy")
        _ensure_database(target, operation="db deploy")
        args = ["deploy", "--verify"]
        if to is not None:
            args += ["--to", to]
        return self._run(args, target, operation="db deploy", capture=capture)

    def verify(self, dsn: str, *, capture: bool = False) -> str:
        """``sqitch verify``: run every deployed change's verify script."""
        target = build_target(dsn, self._base_env())
        return self._run(["verify"], target, operation="db verify", capture=capture)

    def revert(self, dsn: str, *, to: str | None = None, capture: bool = False) -> str:
        """``sqitch revert -y``: revert everything, or down to change ``to``."""
        target = build_target(dsn, self._base_env())
        args = ["revert", "-y"]
        if to is not None:
            args += ["--to", to]
        return self._run(args, target, operation="db revert", capture=capture)

    def status(self, dsn: str, *, capture: bool = False) -> str:
        """``sqitch status``: what is deployed and what is not.

        Sqitch exits with 1 when nothing is deployed; that is an answer, not
        a failure, so only other non-zero codes raise.
        """
        target = build_target(dsn, self._base_env())
        return self._run(
            ["status"], target, operation="db status", capture=capture, ok_codes=(0, 1)
        )

    def ensure_database(self, dsn: str) -> bool:
        """Create the DSN's database if it does not exist. True if it was created.
        Sqitch's own needs are checked first, so a machine without sqitch
        gets the install hint, not an empty database."""
        target = build_target(dsn, self._base_env())
        self._preflight(target, "db deploy")
        return _ensure_database(target, operation="db create")

    # -- plumbing --------------------------------------------------------

    def command(
        self, args: Sequence[str], target: SqitchTarget, *, executable: str | None = None
    ) -> list[str]:
        """The argument vector for ``sqitch <args> <target-uri>``."""
        return [executable or self.executable, *args, target.uri]

    def child_env(self, target: SqitchTarget, service_file: str | None = None) -> dict[str, str]:
        """The environment of the Sqitch process for ``target`` (with
        ``service_file``, written by :func:`secret_service_file`, when the
        target has secrets other than the password)."""
        env = dict(self._base_env())
        if target.password is not None:
            env["PGPASSWORD"] = target.password
            env["SQITCH_PASSWORD"] = target.password
        if service_file is not None:
            env["PGSERVICEFILE"] = service_file
            env["PGSERVICE"] = SERVICE_NAME
        user = _os_user() or "eventstore"
        env.setdefault("SQITCH_FULLNAME", user)
        env.setdefault("SQITCH_EMAIL", f"{user}@{socket.gethostname() or 'localhost'}")
        return env

    def _preflight(self, target: SqitchTarget, operation: str) -> str:
        """Check everything a Sqitch run needs; return the sqitch executable's path."""
        path = self._base_env().get("PATH")
        sqitch = shutil.which(self.executable, path=path)
        if sqitch is None:
            raise SqitchError(SQITCH_INSTALL_HINT, operation=operation)
        if shutil.which("psql", path=path) is None:
            raise SqitchError(PSQL_INSTALL_HINT, operation=operation)
        if not (self.project_dir / "sqitch.plan").is_file():
            raise SqitchError(
                f"no sqitch.plan in {self.project_dir}: set {PROJECT_DIR_ENV} to the "
                "directory that holds sqitch.plan and sqitch.conf",
                operation=operation,
            )
        _check_sqitch_safe(target, operation)
        return sqitch

    def _run(
        self,
        args: Sequence[str],
        target: SqitchTarget,
        *,
        operation: str,
        capture: bool,
        ok_codes: Sequence[int] = (0,),
    ) -> str:
        executable = self._preflight(target, operation)
        argv = self.command(args, target, executable=executable)
        name = f"sqitch {args[0]}"
        # Sqitch writes straight to our file descriptors: emit what we buffered first.
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            with secret_service_file(target) as service_file:
                proc = subprocess.run(
                    argv,
                    cwd=self.project_dir,
                    env=self.child_env(target, service_file),
                    stdout=subprocess.PIPE if capture else None,
                    stderr=subprocess.STDOUT if capture else None,
                    text=True,
                    check=False,
                )
        except OSError as exc:
            raise SqitchError(
                f"could not run {name}: {_one_line(exc)}", operation=operation
            ) from exc
        output = proc.stdout if capture and proc.stdout is not None else ""
        if proc.returncode not in ok_codes:
            message = f"{name} failed with exit code {proc.returncode} on {target.describe()}"
            tail = output.strip().splitlines()[-_TAIL_LINES:]
            if tail:
                message += ":\n" + "\n".join(tail)
            raise SqitchError(message, operation=operation)
        return output


# DBD::Pg hands Sqitch's connection parameters to libpq unquoted, so these
# characters in any of them make the connection string unparsable.
_UNSAFE_FOR_SQITCH = re.compile(r"[\s'\\;]")


def _check_sqitch_safe(target: SqitchTarget, operation: str) -> None:
    values = {"host": target.host, "user": target.user, "dbname": target.dbname}
    values.update(target.params)
    for key, value in values.items():
        if _UNSAFE_FOR_SQITCH.search(value):
            raise SqitchError(
                f"Sqitch cannot connect with {key}={value!r}: spaces, quotes, backslashes "
                "and semicolons are not supported in connection parameters",
                operation=operation,
            )
    for key, value in target.secrets.items():
        # A service file holds one key=value a line, taken as written.
        if value != value.strip() or "\n" in value or "\r" in value:
            raise SqitchError(
                f"Sqitch cannot connect with this {key}: leading or trailing spaces and line "
                "breaks are not supported in it",
                operation=operation,
            )


@contextmanager
def secret_service_file(target: SqitchTarget) -> Iterator[str | None]:
    """A libpq service file holding ``target``'s secrets other than the
    password (None when it has none): readable by this user only, removed
    on exit. Sqitch's children find it through ``PGSERVICEFILE`` and
    ``PGSERVICE``, so the secrets never reach a command line."""
    if not target.secrets:
        yield None
        return
    with tempfile.TemporaryDirectory(prefix="eventstore-sqitch-") as directory:  # mode 0700
        path = os.path.join(directory, "pg_service.conf")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(f"[{SERVICE_NAME}]\n")
            for key, value in sorted(target.secrets.items()):
                out.write(f"{key}={value}\n")
        yield path


def _ensure_database(target: SqitchTarget, *, operation: str) -> bool:
    if target.dbname == MAINTENANCE_DB:
        return False
    try:
        conn = psycopg.connect(target.conninfo(dbname=MAINTENANCE_DB), autocommit=True)
    except psycopg.Error as exc:
        # No access to the maintenance database: fine if the target exists.
        try:
            psycopg.connect(target.conninfo(), autocommit=True).close()
        except psycopg.Error:
            raise SqitchError(
                f"cannot connect to PostgreSQL at {target.describe(MAINTENANCE_DB)} "
                f"to create database {target.dbname!r}: {_one_line(exc)}",
                operation=operation,
            ) from exc
        return False
    try:
        with conn:
            row = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (target.dbname,)
            ).fetchone()
            if row is not None:
                return False
            try:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
            except pg_errors.DuplicateDatabase:
                return False  # created concurrently
            return True
    except psycopg.Error as exc:
        raise SqitchError(
            f"cannot create database {target.dbname!r} on "
            f"{target.describe(MAINTENANCE_DB)}: {_one_line(exc)}",
            operation=operation,
            sqlstate=exc.sqlstate,
        ) from exc


_DEFAULT = Sqitch()


def deploy(
    dsn: str,
    *,
    to: str | None = None,
    capture: bool = False,
    project_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Create the database if needed and deploy (and verify) every change."""
    runner = _DEFAULT if project_dir is None else Sqitch(project_dir)
    return runner.deploy(dsn, to=to, capture=capture)


def verify(
    dsn: str, *, capture: bool = False, project_dir: str | os.PathLike[str] | None = None
) -> str:
    """Run the verify script of every deployed change."""
    runner = _DEFAULT if project_dir is None else Sqitch(project_dir)
    return runner.verify(dsn, capture=capture)


def revert(
    dsn: str,
    *,
    to: str | None = None,
    capture: bool = False,
    project_dir: str | os.PathLike[str] | None = None,
) -> str:
    """Revert every change, or the changes after ``to``."""
    runner = _DEFAULT if project_dir is None else Sqitch(project_dir)
    return runner.revert(dsn, to=to, capture=capture)


def status(
    dsn: str, *, capture: bool = False, project_dir: str | os.PathLike[str] | None = None
) -> str:
    """Show what is deployed."""
    runner = _DEFAULT if project_dir is None else Sqitch(project_dir)
    return runner.status(dsn, capture=capture)


def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it does not exist. True if it was created."""
    return _DEFAULT.ensure_database(dsn)
