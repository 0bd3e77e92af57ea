"""The log's contract, run against every writer the store has.

Every test in this package takes the ``writer`` fixture, which is
parametrized over :data:`WRITERS`: adding a writer to the store (the
group-commit writer, the HTTP client) is one entry there, and the whole
contract — round trips, expected versions, idempotency, all-or-nothing,
the global order under out-of-order commits, killed connections, the hash
chain — runs against it too.

A writer is anything with the store's ``append`` (:class:`Writer`), plus a
store on the same database for reading back what it wrote. A factory opens
one on a DSN with a :class:`~eventstore.Settings` and closes it on exit.

The suite has a database of its own, deployed like any other, with two
test-only triggers (:data:`JITTER_TRIGGER`, and the slow insert of
:mod:`tests.support.faults`), in which the store connects as the session's
least-privilege writer role.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import msgspec
import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

from eventstore import ANY, AppendResult, EventStore, NewEvent, Settings
from eventstore.events import ExpectedVersion
from tests.support.database import as_role, deployed_database
from tests.support.faults import SLOW_TRIGGER
from tests.support.http_writer import http_writer
from trading import trading_registry

#: Test-only: every inserted event sleeps a random 0-5 ms, so that
#: concurrent transactions commit in an order unrelated to their
#: transaction ids and positions (the situation in which a reader paging by
#: id skips events), whatever test runs.
JITTER_TRIGGER = """
CREATE FUNCTION public.test_commit_jitter() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_sleep(random() * 0.005);
    RETURN NULL;
END $$;
CREATE TRIGGER test_commit_jitter AFTER INSERT ON utcp.stored_events
    FOR EACH ROW EXECUTE FUNCTION public.test_commit_jitter();
"""


class Writer(Protocol):
    """What the contract asks of a writer: the store's ``append``, and a
    store on the same database to read back with (``read_stream``,
    ``read_all``, ``stream_version``, ``verify_chain``, ``status``)."""

    @property
    def store(self) -> EventStore: ...

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: ExpectedVersion = ANY,
        idempotency_key: str | None = None,
    ) -> AppendResult: ...


#: (DSN of the contract database as the least-privilege writer role, the
#: settings to open with) -> an open writer, closed when the context ends.
#: The settings carry a unique ``application_name`` that the writer's
#: sessions must use (the killed-connection test finds them by it).
WriterFactory = Callable[[str, Settings], AbstractContextManager[Writer]]


@dataclass(frozen=True)
class StoreWriter:
    """The store's own ``append``: the direct path, and any writer that is
    a setting of the store (group commit)."""

    store: EventStore

    def append(
        self,
        stream_id: str,
        events: Sequence[NewEvent],
        *,
        expected_version: ExpectedVersion = ANY,
        idempotency_key: str | None = None,
    ) -> AppendResult:
        return self.store.append(
            stream_id, events, expected_version=expected_version, idempotency_key=idempotency_key
        )


@contextmanager
def store_writer(dsn: str, settings: Settings, **overrides: Any) -> Iterator[Writer]:
    """An :class:`EventStore` opened with ``settings`` changed by
    ``overrides`` (e.g. ``group_commit=True``)."""
    settings = msgspec.structs.replace(settings, **overrides)
    with EventStore.open(dsn, settings, registry=trading_registry()) as store:
        yield StoreWriter(store)


#: Every writer the store has, by the name the tests are parametrized with.
#: The group-commit writer is ``functools.partial(store_writer,
#: group_commit=True)`` (and "direct" then turns it off); the HTTP client
#: is a factory that starts the service on ``dsn`` with ``settings`` and
#: yields a client whose ``append`` goes over loopback HTTP, with
#: ``store`` a direct store on the same DSN.
WRITERS: dict[str, WriterFactory] = {
    # every append its own call of utcp.append_group (a group of one)
    "direct": functools.partial(store_writer, group_commit=False),
    # concurrent appends of the process share one call, one transaction
    "group-commit": functools.partial(store_writer, group_commit=True),
    # the service's store.append tool over loopback HTTP (service in-process)
    "http": http_writer,
}


@dataclass(frozen=True)
class ContractDb:
    name: str
    admin_dsn: str  # superuser
    writer_dsn: str  # the session's least-privilege writer role


@pytest.fixture(scope="session")
def contract_db(writer_dsn: str) -> Iterator[ContractDb]:
    with deployed_database("utcp_contract", setup_sql=JITTER_TRIGGER + SLOW_TRIGGER) as dsn:
        yield ContractDb(
            name=str(conninfo_to_dict(dsn)["dbname"]),
            admin_dsn=dsn,
            writer_dsn=as_role(dsn, writer_dsn),
        )


@pytest.fixture(scope="session", params=sorted(WRITERS))
def writer_kind(request: pytest.FixtureRequest) -> str:
    """The name of the writer under test (a key of :data:`WRITERS`)."""
    return str(request.param)


OpenWriter = Callable[..., AbstractContextManager[Writer]]


def contract_settings(kind: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "pool_min_size": 1,
        "pool_max_size": 12,
        "retry_timeout": 20.0,
        "application_name": f"utcp-contract-{kind}-{uuid.uuid4().hex[:8]}",
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture(scope="session")
def open_writer(contract_db: ContractDb, writer_kind: str) -> OpenWriter:
    """``open_writer(**settings)``: another writer of the kind under test,
    on the contract database (for a test that needs its own settings or
    its own ``application_name``)."""

    def open_(**overrides: Any) -> AbstractContextManager[Writer]:
        factory = WRITERS[writer_kind]
        return factory(contract_db.writer_dsn, contract_settings(writer_kind, **overrides))

    return open_


@pytest.fixture(scope="session")
def writer(open_writer: OpenWriter) -> Iterator[Writer]:
    """The writer under test, shared by the suite's tests for its kind.
    After them all, the whole log's hash chain still verifies."""
    with open_writer() as w:
        yield w
        report = w.store.verify_chain()
        assert report.ok, f"the hash chain broke under this writer: {report}"


@pytest.fixture
def admin(contract_db: ContractDb) -> Iterator[psycopg.Connection[Any]]:
    """A superuser connection to the contract database (autocommit)."""
    with psycopg.connect(contract_db.admin_dsn, autocommit=True) as conn:
        yield conn


@pytest.fixture
def store(writer: Writer) -> EventStore:
    """The store to read back with: on the writer's database (here, the
    suite's fixture of the same name is the writer's, never the session's)."""
    return writer.store
