"""The packages' public faces: what they export, how their types present
themselves, errors that survive pickling, the version, the typing marker,
and the one extension point for read models (``EventStore.query``)."""

from __future__ import annotations

import datetime as dt
import importlib
import inspect
import pickle
import typing
import uuid
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from types import ModuleType
from typing import Any

import msgspec
import pytest

import eventstore
import projections
import trading
from eventstore import EventStore, StorageError, StoredEvent
from eventstore import errors as store_errors

FACES = (eventstore, trading, projections)


@pytest.mark.parametrize("package", FACES, ids=lambda p: p.__name__)
def test_every_exported_class_presents_the_package_as_its_module(package: ModuleType) -> None:
    exported = [getattr(package, n) for n in package.__all__]
    classes = [obj for obj in exported if isinstance(obj, type)]
    assert classes
    for cls in classes:
        if cls.__module__.split(".")[0] != package.__name__:
            continue  # a re-export of a lower layer's type presents that layer
        assert cls.__module__ == package.__name__, cls
        assert getattr(package, cls.__qualname__) is cls
        # The names in its annotations still resolve (msgspec, typing).
        typing.get_type_hints(cls, include_extras=True)
        if issubclass(cls, msgspec.Struct):
            msgspec.structs.fields(cls)


@pytest.mark.parametrize("package", FACES, ids=lambda p: p.__name__)
def test_every_public_signature_uses_exported_types(package: ModuleType) -> None:
    """The classes a public function or method takes or returns, when they
    are this project's, are exported by their package's face."""
    everything = [getattr(face, n) for face in FACES for n in face.__all__]
    exported = {obj for obj in everything if isinstance(obj, type)}
    own = ("eventstore", "trading", "projections")
    missing: set[str] = set()

    def check(hint: Any, where: str) -> None:
        for arg in typing.get_args(hint):
            check(arg, where)
        ours = isinstance(hint, type) and hint.__module__.split(".")[0] in own
        if ours and hint not in exported and not hint.__name__.startswith("_"):
            missing.add(f"{hint.__module__}.{hint.__qualname__} ({where})")

    for name in package.__all__:
        obj = getattr(package, name)
        members: list[tuple[str, Any]] = []
        if inspect.isfunction(obj):
            members.append((name, obj))
        elif isinstance(obj, type) and not issubclass(obj, BaseException):
            for attr, member in vars(obj).items():
                if attr.startswith("_") and attr != "__init__":
                    continue
                function = member
                if isinstance(member, classmethod | staticmethod):
                    function = member.__func__
                if isinstance(member, property):
                    function = member.fget
                if inspect.isfunction(function):
                    members.append((f"{name}.{attr}", function))
            if issubclass(obj, msgspec.Struct):
                for field, hint in typing.get_type_hints(obj).items():
                    check(hint, f"{name}.{field}")
        for where, function in members:
            for hint in typing.get_type_hints(function).values():
                check(hint, where)
    assert not missing, sorted(missing)


@pytest.mark.parametrize("package", FACES, ids=lambda p: p.__name__)
def test_no_export_hides_a_module_of_the_package(package: ModuleType) -> None:
    """``from projections import rebuild`` must stay the module: an export
    named like a submodule would replace it on the package."""
    assert package.__file__ is not None
    modules = {p.stem for p in Path(package.__file__).parent.glob("*.py")}
    for name in set(package.__all__) & modules:
        assert isinstance(getattr(package, name), ModuleType), name


def test_the_faces_export_the_types_users_meet() -> None:
    expected = {
        eventstore: {
            "ExpectedVersion",
            "ChainProblem",
            "AnchorProblem",
            "Anchor",
            "ChainReport",
            "StoreStatus",
            "EventSchema",
            "Settings",
            *store_errors.__all__,
        },
        trading: {
            "PortfolioOpened",
            "CashDeposited",
            "CashWithdrawn",
            "Trade",
            "TradeCancelled",
            "AuditEvent",
            "StorageAdapter",
        },
        projections: {"Position", "Portfolio", "ProjectionStatus", "RebuildReport"},
    }
    for package, names in expected.items():
        assert names <= set(package.__all__), names - set(package.__all__)
        for name in package.__all__:
            assert hasattr(package, name), name


def test_internals_are_not_on_the_face() -> None:
    # No raw connection on the store: read models use the read-only query.
    assert not hasattr(EventStore, "connection")
    # No mutable registry shared by every store.
    assert not hasattr(importlib.import_module("eventstore.events"), "default_registry")
    for name in ("sql", "connection", "writing", "reading", "codec", "Database"):
        assert name not in eventstore.__all__


def test_version_is_the_distributions() -> None:
    assert eventstore.__version__ == version("utcp-eventstore")


@pytest.mark.parametrize("package", [*FACES, importlib.import_module("storectl")])
def test_the_packages_are_typed(package: ModuleType) -> None:
    assert package.__file__ is not None
    assert (Path(package.__file__).parent / "py.typed").is_file()


# -- errors survive pickling, message and context -----------------------------

_EVENT = StoredEvent(
    position=7,
    checkpoint="1234/7",
    event_id=uuid.UUID(int=1),
    stream_id="portfolio-1",
    stream_version=3,
    type="TradeExecuted",
    data={"trade_id": "t1"},
    metadata=None,
    symbol="AAPL",
    occurred_at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    created_at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    prev_hash=None,
    hash=b"\x01",
)
_CONTEXT = {"operation": "append", "stream_id": "s-1", "idempotency_key": "k", "sqlstate": "40001"}
_EXTRA: dict[str, dict[str, Any]] = {
    "ValidationError": {"field": "events[0].data"},
    "WrongExpectedVersion": {"expected": 3, "actual": 5},
    "CheckpointNotInLog": {"checkpoint": "99/12"},
    "AppendOutcomeUnknown": {"event_ids": (uuid.UUID(int=2), uuid.UUID(int=3))},
}


def _errors() -> list[tuple[str, BaseException]]:
    made: list[tuple[str, BaseException]] = []
    for name in store_errors.__all__:
        cls = getattr(store_errors, name)
        made.append((name, cls("it went wrong", **_CONTEXT, **_EXTRA.get(name, {}))))
    made.append(
        ("ProjectionError", projections.ProjectionError("trading", _EVENT, "no such portfolio"))
    )
    made.append(("CheckpointMoved", projections.CheckpointMoved("moved", operation="project")))
    made.append(("RebuildError", projections.RebuildError("no swap", operation="rebuild")))
    return made


def test_every_error_type_is_covered() -> None:
    covered = {name for name, _ in _errors()}
    assert set(store_errors.__all__) <= covered


@pytest.mark.parametrize(("name", "error"), _errors(), ids=[n for n, _ in _errors()])
def test_errors_survive_pickling(name: str, error: BaseException) -> None:
    assert isinstance(error, eventstore.EventStoreError)
    back = pickle.loads(pickle.dumps(error))  # noqa: S301 (our own bytes)
    assert type(back) is type(error)
    assert str(back) == str(error)
    assert back.args == error.args
    assert back.message == error.message
    assert back.context() == error.context()
    assert vars(back) == vars(error)
    assert type(back).__module__ in ("eventstore", "projections")


def test_public_values_survive_pickling() -> None:
    """Pickles name the package (``eventstore.StoredEvent``): they load
    while the modules behind the face move."""
    position = projections.Position(
        portfolio_id="1",
        symbol="AAPL",
        quantity=Decimal("10"),
        avg_cost=Decimal("189.5"),
        realized_pnl=Decimal(0),
        fees=Decimal(1),
        trade_count=1,
        updated_at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    )
    trade = trading.Trade(
        trade_id="t1",
        portfolio_id="1",
        symbol="AAPL",
        side="buy",
        quantity=Decimal("10"),
        price=Decimal("189.5"),
        executed_at=dt.datetime(2024, 1, 2, tzinfo=dt.UTC),
    )
    for value in (_EVENT, position, trade):
        data = pickle.dumps(value)
        assert b"eventstore.events" not in data and b"models" not in data
        assert pickle.loads(data) == value  # noqa: S301 (our own bytes)
    for symbol in (eventstore.ANY, eventstore.NO_STREAM, eventstore.STREAM_EXISTS):
        assert pickle.loads(pickle.dumps(symbol)) is symbol  # noqa: S301


# -- the one extension point: read-only queries --------------------------------


def test_query_is_read_only_whatever_the_role(database_dsn: str) -> None:
    with EventStore.open(database_dsn) as superuser:  # may write anything elsewhere
        assert superuser.query("probe", "SELECT 1 AS one", by_name=True) == [{"one": 1}]
        with pytest.raises(StorageError) as info:
            superuser.query("probe", "CREATE TEMP TABLE face_probe (x int)")
    assert info.value.sqlstate == "25006"  # read_only_sql_transaction
    assert info.value.operation == "probe"
