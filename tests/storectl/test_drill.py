"""The drill's pure helpers (storectl/drill.py; the drill itself is `make drill`)."""

from __future__ import annotations

import datetime as dt
import uuid
from pathlib import Path

from storectl.drill import (
    STANZA,
    burn_count,
    choose_target,
    compare_ids,
    pgbackrest_conf,
    primary_settings,
    target_text,
)

UTC = dt.UTC


def test_the_target_is_a_whole_second_at_least_the_gap_after_the_last_commit() -> None:
    last = dt.datetime(2026, 12, 2, 10, 53, 16, 665885, tzinfo=UTC)
    assert choose_target(last, 0.3) == dt.datetime(2026, 12, 2, 10, 53, 17, tzinfo=UTC)
    late = dt.datetime(2026, 12, 2, 10, 53, 16, 900000, tzinfo=UTC)
    assert choose_target(late, 0.3) == dt.datetime(2026, 12, 2, 10, 53, 18, tzinfo=UTC)
    exact = dt.datetime(2026, 12, 2, 10, 53, 16, 700000, tzinfo=UTC)
    assert choose_target(exact, 0.3) == dt.datetime(2026, 12, 2, 10, 53, 17, tzinfo=UTC)
    for micro in range(0, 1_000_000, 12_345):
        t = dt.datetime(2026, 1, 1, tzinfo=UTC) + dt.timedelta(microseconds=micro)
        target = choose_target(t, 0.3)
        assert target.microsecond == 0
        assert dt.timedelta(seconds=0.3) <= target - t < dt.timedelta(seconds=1.3)


def test_target_text_is_utc_and_plain() -> None:
    cet = dt.timezone(dt.timedelta(hours=1))
    assert target_text(dt.datetime(2026, 12, 2, 11, 53, 17, tzinfo=cet)) == "2026-12-02 10:53:17+00"
    assert (
        target_text(dt.datetime(2026, 12, 2, 10, 53, 17, 250000, tzinfo=UTC))
        == "2026-12-02 10:53:17.25+00"
    )


def test_compare_ids_names_missing_extra_and_duplicated() -> None:
    a, b, c = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    assert compare_ids([a, b], [b, a]) == []
    problems = compare_ids([a, b], [a, a, c])
    assert problems[0] == "1 duplicated"
    assert problems[1].startswith("1 missing") and str(b) in problems[1]
    assert problems[2].startswith("1 extra") and str(c) in problems[2]


def test_burn_count_covers_the_gap() -> None:
    assert burn_count(0) == 1
    assert burn_count(-5) == 1
    assert burn_count(3979) * 4 >= 3979
    assert burn_count(4000, clients=4) == 1001


def test_the_configuration_names_the_private_paths() -> None:
    tmp, data = Path("/srv/d"), Path("/srv/d/primary")
    conf = pgbackrest_conf(tmp, data, 5555)
    assert f"[{STANZA}]" in conf
    assert "pg1-path=/srv/d/primary" in conf and "pg1-port=5555" in conf
    assert "repo1-path=/srv/d/repo" in conf
    settings = primary_settings(tmp, 5555, tmp / "pgbackrest.conf")
    assert settings["port"] == "5555"
    assert "--config=/srv/d/pgbackrest.conf" in settings["archive_command"]
    assert settings["archive_mode"] == "on" and settings["wal_level"] == "replica"
