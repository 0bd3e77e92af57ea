"""Settings: production defaults, EVENTSTORE_* overrides, and invalid values
refused with a ValidationError that names the setting."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path
from typing import Any

import msgspec
import pytest

from eventstore import Settings, ValidationError
from eventstore.settings import (
    OTHER_VARIABLES,
    SECRET_PARAMS,
    SettingsWarning,
    dsn_secrets,
    redact,
    redact_dsn,
)


def test_defaults() -> None:
    s = Settings()
    assert (s.pool_min_size, s.pool_max_size) == (2, 10)
    assert s.acquire_timeout == 10.0
    assert s.max_lifetime == 3600.0
    assert s.max_idle == 600.0
    assert s.connect_timeout == 5.0
    assert s.statement_timeout == 30.0
    assert s.idle_in_transaction_session_timeout == 60.0
    assert s.application_name == "eventstore"
    assert (s.retry_attempts, s.retry_timeout) == (5, 30.0)
    assert s.max_event_bytes == 1_048_576
    assert s.max_batch_events == 10_000


def test_from_env_without_variables_is_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({"UNRELATED": "1", "EVENTSTORE_DSN": "postgresql://x"}) == Settings()


def test_from_env_overrides_every_field() -> None:
    env = {
        "EVENTSTORE_POOL_MIN_SIZE": "1",
        "EVENTSTORE_POOL_MAX_SIZE": "20",
        "EVENTSTORE_ACQUIRE_TIMEOUT": "2.5",
        "EVENTSTORE_MAX_LIFETIME": "120",
        "EVENTSTORE_MAX_IDLE": "30",
        "EVENTSTORE_CONNECT_TIMEOUT": "3",
        "EVENTSTORE_STATEMENT_TIMEOUT": "0",
        "EVENTSTORE_IDLE_IN_TRANSACTION_SESSION_TIMEOUT": "15.5",
        "EVENTSTORE_APPLICATION_NAME": "trader",
        "EVENTSTORE_RETRY_ATTEMPTS": "1",
        "EVENTSTORE_RETRY_TIMEOUT": "5",
        "EVENTSTORE_MAX_EVENT_BYTES": "4096",
        "EVENTSTORE_MAX_BATCH_EVENTS": "50",
    }
    s = Settings.from_env(env)
    assert s == Settings(
        pool_min_size=1,
        pool_max_size=20,
        acquire_timeout=2.5,
        max_lifetime=120.0,
        max_idle=30.0,
        connect_timeout=3.0,
        statement_timeout=0.0,
        idle_in_transaction_session_timeout=15.5,
        application_name="trader",
        retry_attempts=1,
        retry_timeout=5.0,
        max_event_bytes=4096,
        max_batch_events=50,
    )
    assert isinstance(s.pool_max_size, int) and isinstance(s.acquire_timeout, float)


def test_empty_variables_are_ignored_and_keyword_overrides_win() -> None:
    env = {"EVENTSTORE_POOL_MAX_SIZE": "", "EVENTSTORE_RETRY_ATTEMPTS": "3"}
    s = Settings.from_env(env, retry_attempts=7, application_name="x")
    assert s.pool_max_size == 10
    assert s.retry_attempts == 7
    assert s.application_name == "x"


def test_from_env_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTSTORE_POOL_MAX_SIZE", "17")
    assert Settings.from_env().pool_max_size == 17


def test_connection_options() -> None:
    options = Settings(
        statement_timeout=1.5, idle_in_transaction_session_timeout=60
    ).connection_options()
    assert "statement_timeout=1500" in options
    assert "idle_in_transaction_session_timeout=60000" in options


INVALID: list[tuple[str, Any]] = [
    ("pool_min_size", -1),
    ("pool_max_size", 0),
    ("acquire_timeout", 0),
    ("acquire_timeout", math.nan),
    ("max_lifetime", -1),
    ("max_idle", 0),
    ("connect_timeout", 0),
    ("statement_timeout", -1),
    ("statement_timeout", math.inf),
    ("idle_in_transaction_session_timeout", -0.5),
    ("idle_in_transaction_session_timeout", math.inf),
    ("retry_attempts", 0),
    ("retry_timeout", 0),
    ("max_event_bytes", 0),
    ("max_batch_events", 0),
]


@pytest.mark.parametrize(("name", "value"), INVALID)
def test_invalid_values_name_the_setting(name: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Settings(**{name: value})
    assert info.value.field == name
    assert name in str(info.value)


def test_pool_max_below_min_is_refused() -> None:
    with pytest.raises(ValidationError) as info:
        Settings(pool_min_size=5, pool_max_size=3)
    assert info.value.field == "pool_max_size"
    Settings(pool_min_size=5, pool_max_size=5)
    Settings(pool_min_size=0, pool_max_size=1)


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("EVENTSTORE_POOL_MAX_SIZE", "abc", "pool_max_size"),
        ("EVENTSTORE_POOL_MAX_SIZE", "1.5", "pool_max_size"),
        ("EVENTSTORE_RETRY_ATTEMPTS", "many", "retry_attempts"),
        ("EVENTSTORE_ACQUIRE_TIMEOUT", "fast", "acquire_timeout"),
        ("EVENTSTORE_POOL_MAX_SIZE", "0", "pool_max_size"),
        ("EVENTSTORE_RETRY_TIMEOUT", "-1", "retry_timeout"),
        ("EVENTSTORE_ACQUIRE_TIMEOUT", "nan", "acquire_timeout"),
        ("EVENTSTORE_STATEMENT_TIMEOUT", "inf", "statement_timeout"),
    ],
)
def test_invalid_environment_values_name_the_setting(variable: str, value: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.from_env({variable: value})
    assert info.value.field == field, info.value.field
    assert info.value.operation == "settings"


def test_invalid_keyword_override_names_the_setting() -> None:
    with pytest.raises(ValidationError) as info:
        Settings.from_env({}, pool_min_size=4, pool_max_size=2)
    assert info.value.field == "pool_max_size"


# -- secrets in DSNs -----------------------------------------------------------


@pytest.mark.parametrize(
    ("dsn", "shown"),
    [
        (
            "postgresql://u:pw%40x@h:5432/db?sslpassword=sp&sslmode=require",
            "postgresql://u:***@h:5432/db?sslpassword=***&sslmode=require",
        ),
        ("postgres://u@h/db?password=pw&x=1", "postgres://u@h/db?password=***&x=1"),
        ("postgresql://u:p@w@[h/db", "postgresql://u:***@[h/db"),  # malformed, stray '@'
        ("host=h password = 'p w\\' x' user=u", "host=h password = *** user=u"),
        ("host=h sslpassword=sp PASSWORD=pw", "host=h sslpassword=*** PASSWORD=***"),
        ("host=h user=u", "host=h user=u"),
    ],
)
def test_redact_dsn(dsn: str, shown: str) -> None:
    assert redact_dsn(dsn) == shown


def test_redact_removes_every_form_of_a_secret_from_a_message() -> None:
    dsn = "postgresql://u:s3cr%3At@h/db?sslpassword=ssl-secret"
    assert dsn_secrets(dsn) >= {"s3cr%3At", "s3cr:t", "ssl-secret"}
    message = f'bad "{dsn}"; token "s3cr%3At"; decoded s3cr:t; ssl-secret'
    cleaned = redact(message, dsn)
    for secret in ("s3cr", "ssl-secret"):
        assert secret not in cleaned
    assert redact("nothing to hide", None) == "nothing to hide"
    assert {"password", "sslpassword"} <= SECRET_PARAMS


# -- every variable, documented, honoured, checked --------------------------------

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def non_default(name: str) -> tuple[str, Any]:
    """A valid value other than the default, as text and as the setting."""
    default = getattr(Settings(), name)
    if isinstance(default, bool):
        return ("false", False) if default else ("true", True)
    if isinstance(default, str):
        return "other", "other"
    if name == "pool_max_size":
        return "11", 11
    if name in ("max_event_bytes", "max_batch_events"):
        return "7", 7
    if isinstance(default, int):
        return str(default + 1), default + 1
    return str(default + 1.5), default + 1.5


def test_from_env_honours_every_setting() -> None:
    for name in Settings.__struct_fields__:
        text, value = non_default(name)
        settings = Settings.from_env({f"EVENTSTORE_{name.upper()}": text})
        assert getattr(settings, name) == value, name
        assert settings == msgspec.structs.replace(Settings(), **{name: value})


def test_every_setting_is_documented() -> None:
    docs = DOCS.read_text()
    for name in Settings.__struct_fields__:
        assert re.search(rf"^\| `{name}` \| [^|]+ \| `EVENTSTORE_{name.upper()}` \|", docs, re.M), (
            f"{name} is not in docs/settings.md's table"
        )
    for variable in OTHER_VARIABLES:
        assert f"`{variable}`" in docs, f"{variable} is not in docs/settings.md"


def test_program_defaults_yield_to_the_environment() -> None:
    """What the CLI does: its own small pool, unless the environment says
    otherwise; keyword overrides still win over both."""
    small = {"pool_min_size": 1, "pool_max_size": 2}
    assert Settings.from_env({}, defaults=small).pool_max_size == 2
    s = Settings.from_env({"EVENTSTORE_POOL_MAX_SIZE": "8"}, defaults=small)
    assert (s.pool_min_size, s.pool_max_size) == (1, 8)
    # A larger minimum from the environment lifts the program's maximum.
    s = Settings.from_env({"EVENTSTORE_POOL_MIN_SIZE": "4"}, defaults=small)
    assert (s.pool_min_size, s.pool_max_size) == (4, 4)
    # ... but not one that was asked for.
    with pytest.raises(ValidationError) as info:
        Settings.from_env(
            {"EVENTSTORE_POOL_MIN_SIZE": "4", "EVENTSTORE_POOL_MAX_SIZE": "3"}, defaults=small
        )
    assert info.value.field == "pool_max_size"
    assert "EVENTSTORE_POOL_MAX_SIZE" in str(info.value)
    assert Settings.from_env({"EVENTSTORE_POOL_MAX_SIZE": "8"}, pool_max_size=3).pool_max_size == 3
    with pytest.raises(ValidationError) as info:
        Settings.from_env({}, defaults={"pool_size": 3})
    assert info.value.field == "pool_size"


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("EVENTSTORE_POOL_MAX_SIZE", "abc"),
        ("EVENTSTORE_KEEPALIVES_COUNT", "2.5"),
        ("EVENTSTORE_TCP_USER_TIMEOUT", "-1"),
        ("EVENTSTORE_NETWORK_TIMEOUT", "soon"),
    ],
)
def test_a_bad_variable_is_named(variable: str, value: str) -> None:
    with pytest.raises(ValidationError) as info:
        Settings.from_env({variable: value})
    assert variable in str(info.value)
    assert info.value.field == variable.removeprefix("EVENTSTORE_").lower()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("pool_min_size", "2"),
        ("acquire_timeout", "10"),
        ("application_name", 5),
        ("keepalives_idle", 1.5),
        ("retry_attempts", True),
    ],
)
def test_wrong_types_are_validation_errors(name: str, value: Any) -> None:
    """Not a TypeError from comparing a str with an int."""
    with pytest.raises(ValidationError) as info:
        Settings(**{name: value})
    assert info.value.field == name
    with pytest.raises(ValidationError) as info:
        Settings.from_env({}, **{name: [value]})
    assert info.value.field == name


def test_a_misspelled_variable_is_warned_about_once() -> None:
    env = {"EVENTSTORE_POOL_MAX_SZE": "5", "EVENTSTORE_DSN": "postgresql://x"}
    with pytest.warns(SettingsWarning, match="did you mean EVENTSTORE_POOL_MAX_SIZE") as caught:
        assert Settings.from_env(env) == Settings()
    assert len(caught) == 1
    assert "EVENTSTORE_POOL_MAX_SZE" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Settings.from_env(env)  # once per process
        Settings.from_env({"EVENTSTORE_DSN": "x", "EVENTSTORE_TEST_DSN": "y"})  # known ones
    with pytest.warns(SettingsWarning) as caught:
        Settings.from_env({"EVENTSTORE_ZZZ_QQQ_WWW": "1"})
    assert "did you mean" not in str(caught[0].message)
