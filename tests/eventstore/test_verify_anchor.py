"""`eventstore verify --anchor FILE`: tamper evidence that does not trust
the database it checks (eventstore/integrity.py).

Every test tampers as a superuser would (guard triggers disabled, the
change, the triggers enabled again) in a database of its own: a copy
(CREATE DATABASE … TEMPLATE) of one seeded log, so the anchor saved from
the seed (outside the database, as `eventstore anchor --json` printed it)
fits every copy.

Each tampering's test name says what catches it:

* ``legacy``: ``EventStore.verify_chain()``, the SQL check that
  ``eventstore verify`` ran before (it trusts the functions of schema utcp);
* ``plain``: ``eventstore verify`` now (recomputed in Python, no saved anchor);
* ``anchored``: ``eventstore verify --anchor FILE``.
"""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from eventstore import EventStore, IntegrityViolation, NewEvent, Settings, integrity
from tests.support.database import (
    admin_dsn,
    deployed_database,
    drop_database,
    dsn_for,
    login_role,
    run_cli,
)
from tests.support.horizon import wait_for_horizon

TABLES = ("stored_events", "idempotency_keys", "chain_anchors")

# A scheme-1 event, as the store wrote them before hash scheme 2, inserted
# as a superuser (the hash from the database's own scheme-1 function).
INSERT_V1_EVENT = """
INSERT INTO utcp.stored_events
       (event_id, stream_id, stream_version, type, data, metadata, symbol,
        occurred_at, created_at, prev_hash, hash, hash_version, recorded_by)
SELECT %(id)s, %(stream)s, %(version)s, %(type)s, %(data)s::jsonb, %(metadata)s::jsonb,
       %(symbol)s, %(occurred)s::timestamptz, t.now, p.hash,
       sha256(coalesce(p.hash, '\\x'::bytea) || utcp.event_content(
           %(id)s, %(stream)s, %(version)s, %(type)s, %(data)s::jsonb, %(metadata)s::jsonb,
           %(symbol)s, %(occurred)s::timestamptz, t.now)), 1, 'legacy_writer'
  FROM (SELECT clock_timestamp() AS now) t
  LEFT JOIN utcp.stored_events p
         ON p.stream_id = %(stream)s AND p.stream_version = %(version)s - 1
"""

# Re-hash one stream's chain with the database's own functions, as an
# attacker covering a change would.
REHASH_STREAM = """
DO $$
DECLARE r record; v_prev bytea := NULL;
BEGIN
    FOR r IN SELECT * FROM utcp.stored_events WHERE stream_id = '{stream}'
             ORDER BY stream_version LOOP
        UPDATE utcp.stored_events e
           SET prev_hash = v_prev,
               hash = CASE r.hash_version
                   WHEN 1 THEN sha256(coalesce(v_prev, '\\x'::bytea) || utcp.event_content(
                       r.event_id, r.stream_id, r.stream_version, r.type, r.data, r.metadata,
                       r.symbol, r.occurred_at, r.created_at))
                   ELSE utcp.event_hash_v2(v_prev, r.event_id, r.stream_id, r.stream_version,
                       r.type, r.data, r.metadata, r.symbol, r.occurred_at, r.created_at,
                       r.recorded_by) END
         WHERE e.event_id = r.event_id
        RETURNING e.hash INTO v_prev;
    END LOOP;
END $$"""

# Recompute every anchor row from the (changed) log with utcp.log_digest.
REWRITE_ANCHORS = """
DO $$
DECLARE a record; d record; v_tx xid8 := '0'; v_pos bigint := 0; v_digest bytea;
        v_events bigint := 0;
BEGIN
    FOR a IN SELECT * FROM utcp.chain_anchors ORDER BY anchor_id LOOP
        SELECT * INTO d FROM utcp.log_digest(v_tx, v_pos, a.through_tx, a.through_position);
        v_digest := sha256(coalesce(v_digest, '\\x'::bytea) || d.digest);
        v_events := v_events + d.events;
        UPDATE utcp.chain_anchors SET digest = v_digest, events = v_events
         WHERE anchor_id = a.anchor_id;
        v_tx := a.through_tx; v_pos := a.through_position;
    END LOOP;
END $$"""


def es(dsn: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run_cli(*args, "--dsn", dsn, check=False)


class Seed:
    """The seeded log: its database (a template), its streams, its saved anchor."""

    def __init__(self) -> None:
        self.name = ""
        self.dsn = ""
        #: the newest anchor, and the one before it, as `eventstore anchor --json` saved them
        self.anchor_file = Path()
        self.first_file = Path()
        self.anchor: dict[str, Any] = {}
        self.streams: list[str] = []
        self.v1_stream = ""
        self.keyed_stream = ""
        self.key = ""


def _seed_log(store: EventStore, conn: psycopg.Connection[Any], seed: Seed) -> None:
    tag = uuid.uuid4().hex[:8]
    seed.v1_stream = f"legacy-{tag}"
    payloads = [
        ('{"amount": "1.50", "note": "caf\\u00e9 \\u001f sep"}', None, None),
        ('{"b": [1, 2.50, 1e3, true, null], "a": {"z": "\\"q\\""}}', '{"actor": "x"}', "AAPL"),
        ('{"empty": ""}', "{}", ""),
    ]
    for version, (data, metadata, symbol) in enumerate(payloads, 1):
        conn.execute(
            INSERT_V1_EVENT,
            {
                "id": uuid.uuid4(),
                "stream": seed.v1_stream,
                "version": version,
                "type": "LegacyStep",
                "data": data,
                "metadata": metadata,
                "symbol": symbol,
                "occurred": "2024-02-29 12:34:56.789012+00",
            },
        )
    # Scheme 2 from here on, written by the store, the v1 stream continued.
    store.append(seed.v1_stream, [NewEvent("Step", {"n": 4, "text": "√ ünïcode \u2028"})])
    for i in range(4):
        stream = f"acct{i}-{tag}"
        for batch in range(2):
            store.append(
                stream,
                [
                    NewEvent(
                        "Deposited",
                        {"i": i, "batch": batch, "k": k, "symbol": "MSFT"},
                        {"actor": "seed"} if k % 2 else None,
                    )
                    for k in range(3)
                ],
            )
        seed.streams.append(stream)
    seed.keyed_stream = f"keyed-{tag}"
    seed.key = f"key-{tag}"
    store.append(seed.keyed_stream, [NewEvent("Opened", {"n": 1})], idempotency_key=f"{seed.key}-0")
    store.append(
        seed.keyed_stream,
        [NewEvent("Step", {"n": 2}), NewEvent("Step", {"n": 3})],
        idempotency_key=seed.key,
    )


def _anchor(dsn: str, path: Path) -> Path:
    proc = es(dsn, "anchor", "--json")
    assert proc.returncode == 0, proc.stderr
    path.write_text(proc.stdout)
    return path


def _take_anchor_after_visible(dsn: str, path: Path, events: int) -> Path:
    """An anchor covering ``events`` events: taken once the readers' horizon
    has passed them (another session's transaction on the shared server can
    hold it back)."""
    wait_for_horizon(dsn)
    _anchor(dsn, path)
    text = path.read_text()
    assert text.startswith("{") and json.loads(text)["events"] >= events, text
    return path


@pytest.fixture(scope="module")
def seed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seed]:
    folder = tmp_path_factory.mktemp("anchors")
    with deployed_database("utcp_vanchor") as dsn:
        name = psycopg.conninfo.conninfo_to_dict(dsn)["dbname"]
        assert isinstance(name, str)
        seed = Seed()
        with (
            EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=2)) as store,
            psycopg.connect(dsn, autocommit=True) as conn,
        ):
            _seed_log(store, conn, seed)
            total = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
            assert total is not None
            first = _take_anchor_after_visible(dsn, folder / "first.json", total[0])
            # More events after the first anchor, and a second anchor.
            for stream in seed.streams[:2]:
                store.append(stream, [NewEvent("Late", {"late": True})])
            anchor = _take_anchor_after_visible(dsn, folder / "anchor.json", total[0] + 2)
        seed.name, seed.dsn, seed.anchor_file, seed.first_file = name, dsn, anchor, first
        seed.anchor = json.loads(anchor.read_text())
        yield seed


@contextmanager
def copy_of(seed: Seed) -> Iterator[str]:
    """A throwaway copy of the seeded database (same tx ids and positions)."""
    name = f"{seed.name[:40]}_c{uuid.uuid4().hex[:6]}"
    with psycopg.connect(admin_dsn(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(seed.name)
            )
        )
    try:
        yield dsn_for(name)
    finally:
        drop_database(name)


def tamper(dsn: str, *statements: str, params: dict[str, Any] | None = None) -> None:
    """Run ``statements`` as a superuser with every guard trigger disabled,
    then enable them again (ALWAYS, as deployed)."""
    with psycopg.connect(dsn, autocommit=True) as conn, conn.transaction():
        triggers = conn.execute(
            "SELECT tgrelid::regclass::text, tgname FROM pg_trigger "
            "WHERE NOT tgisinternal AND tgrelid::regclass::text = ANY(%s)",
            ([f"utcp.{t}" for t in TABLES],),
        ).fetchall()
        for table, trigger in triggers:
            conn.execute(f"ALTER TABLE {table} DISABLE TRIGGER {trigger}")
        for statement in statements:
            conn.execute(statement, params or {})
        for table, trigger in triggers:
            conn.execute(f"ALTER TABLE {table} ENABLE ALWAYS TRIGGER {trigger}")


class Verdicts:
    def __init__(self, dsn: str, anchor_file: Path) -> None:
        with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
            self.legacy = store.verify_chain().ok
        self.plain_proc = es(dsn, "verify")
        self.anchored_proc = es(dsn, "verify", "--anchor", str(anchor_file))
        for proc in (self.plain_proc, self.anchored_proc):
            assert proc.returncode in (0, 1), proc.stderr
            assert "Traceback" not in proc.stderr
        self.plain = self.plain_proc.returncode == 0
        self.anchored = self.anchored_proc.returncode == 0

    def expect(self, *, legacy: bool, plain: bool) -> None:
        """``legacy``/``plain``: whether that check still passes (misses the
        tampering); ``--anchor`` must always catch it."""
        assert self.legacy is legacy, "legacy verify_chain"
        assert self.plain is plain, self.plain_proc.stdout
        assert not self.anchored, self.anchored_proc.stdout
        assert "PROBLEMS" in self.anchored_proc.stdout
        assert "saved anchor #" in self.anchored_proc.stdout, self.anchored_proc.stdout


def check(seed: Seed, *statements: str, params: dict[str, Any] | None = None) -> Verdicts:
    with copy_of(seed) as dsn:
        # Before: everything passes on the copy.
        before = es(dsn, "verify", "--anchor", str(seed.anchor_file))
        assert before.returncode == 0, before.stdout + before.stderr
        tamper(dsn, *statements, params=params)
        return Verdicts(dsn, seed.anchor_file)


# -- the untampered log -------------------------------------------------------


def test_untampered_log_passes_plain_and_anchored_and_later_appends_are_accepted(
    seed: Seed,
) -> None:
    with copy_of(seed) as dsn:
        with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
            store.append(seed.streams[0], [NewEvent("After", {"after": 1})])
            store.append(f"new-{uuid.uuid4().hex[:6]}", [NewEvent("After", {"after": 2})])
        proc = es(
            dsn,
            "verify",
            "--anchor",
            str(seed.anchor_file),
            "--anchor",
            str(seed.first_file),
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert proc.stdout.startswith("ok: the whole log, "), proc.stdout
        assert "2 saved anchors" in proc.stdout
        proc = es(dsn, "verify", "--anchor", str(seed.anchor_file), "--json")
        assert proc.returncode == 0
        (summary,) = [json.loads(line) for line in proc.stdout.splitlines()]
        assert summary["ok"] is True
        assert summary["saved_anchors_checked"] == 1
        assert summary["events_checked"] == seed.anchor["events"] + 2
        assert summary["keys_checked"] == 2


def test_the_human_output_of_anchor_is_accepted_too(seed: Seed, tmp_path: Path) -> None:
    anchor = seed.anchor
    human = tmp_path / "human.txt"
    human.write_text(
        f"anchor #{anchor['anchor_id']}: {anchor['events']} events through checkpoint "
        f"{anchor['checkpoint']}\n  sha256 {anchor['digest']}\n"
    )
    proc = es(seed.dsn, "verify", "--anchor", str(human))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "bad.txt"
    bad.write_text("not an anchor\n")
    proc = es(seed.dsn, "verify", "--anchor", str(bad))
    assert proc.returncode == 1
    assert proc.stderr.startswith("eventstore: error: ") and "Traceback" not in proc.stderr


def test_python_recomputation_equals_the_databases_hashes_under_both_schemes(
    seed: Seed,
) -> None:
    with psycopg.connect(seed.dsn, autocommit=True) as conn:
        rows = conn.execute(integrity.EVENTS_PAGE.replace("LIMIT %s", ""), ("0", 0)).fetchall()
        schemes = {row[12] for row in rows}
        assert schemes == {1, 2}
        for row in rows:
            assert integrity._hash_of(row) == row[14], row[3:5]
        # The canonical bytes too, field for field, against the database's functions.
        content = conn.execute(
            """SELECT e.hash_version, utcp.event_content(e.event_id, e.stream_id,
                      e.stream_version, e.type, e.data, e.metadata, e.symbol,
                      e.occurred_at, e.created_at),
                      utcp.event_content_v2(e.event_id, e.stream_id, e.stream_version,
                      e.type, e.data, e.metadata, e.symbol, e.occurred_at, e.created_at,
                      e.recorded_by),
                      e.event_id::text, e.stream_id, e.stream_version::text, e.type,
                      e.data::text, e.metadata::text, e.symbol,
                      extract(epoch FROM e.occurred_at)::text,
                      extract(epoch FROM e.created_at)::text, e.recorded_by
                 FROM utcp.stored_events e"""
        ).fetchall()
    for _, v1, v2, *fields in content:
        names = [
            "event_id",
            "stream_id",
            "stream_version",
            "type_",
            "data",
            "metadata",
            "symbol",
            "occurred_epoch",
            "created_epoch",
        ]
        values = dict(zip(names, fields[:9], strict=True))
        assert integrity.event_content_v1(**values) == v1
        assert integrity.event_content_v2(**values, recorded_by=fields[9]) == v2


# -- the tampering matrix -----------------------------------------------------


def test_changed_payload__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    verdicts = check(
        seed,
        "UPDATE utcp.stored_events SET data = data || '{\"amount\": 999}' "
        "WHERE stream_id = %(s)s AND stream_version = 2",
        params={"s": seed.streams[0]},
    )
    verdicts.expect(legacy=False, plain=False)


def test_changed_payload_rehashed__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    stream = seed.streams[1]
    verdicts = check(
        seed,
        "UPDATE utcp.stored_events SET data = data || '{\"amount\": 999}' "
        "WHERE stream_id = %(s)s AND stream_version = 2",
        REHASH_STREAM.format(stream=stream),
        params={"s": stream},
    )
    verdicts.expect(legacy=False, plain=False)


def test_changed_payload_rehashed_anchors_rewritten__missed_by_legacy_and_plain(
    seed: Seed,
) -> None:
    for stream in (seed.streams[0], seed.v1_stream):  # scheme 2, and scheme 1 + 2
        verdicts = check(
            seed,
            "UPDATE utcp.stored_events SET data = data || '{\"amount\": 999}' "
            "WHERE stream_id = %(s)s AND stream_version = 2",
            REHASH_STREAM.format(stream=stream),
            REWRITE_ANCHORS,
            params={"s": stream},
        )
        verdicts.expect(legacy=True, plain=True)
        assert "digest differs from the saved one" in verdicts.anchored_proc.stdout


def test_deleted_event__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    verdicts = check(
        seed,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(s)s AND stream_version = 2",
        params={"s": seed.streams[2]},
    )
    verdicts.expect(legacy=False, plain=False)
    assert "version gap" in verdicts.plain_proc.stdout


def test_deleted_event_renumbered_rehashed_anchors_rewritten__missed_by_legacy_and_plain(
    seed: Seed,
) -> None:
    stream = seed.streams[2]
    verdicts = check(
        seed,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(s)s AND stream_version = 2",
        "UPDATE utcp.stored_events SET stream_version = stream_version - 1 "
        "WHERE stream_id = %(s)s AND stream_version > 2",
        REHASH_STREAM.format(stream=stream),
        REWRITE_ANCHORS,
        params={"s": stream},
    )
    verdicts.expect(legacy=True, plain=True)
    assert "covered" in verdicts.anchored_proc.stdout  # one event fewer


def test_deleted_stream_anchors_rewritten__missed_by_legacy_and_plain(seed: Seed) -> None:
    verdicts = check(
        seed,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(s)s",
        REWRITE_ANCHORS,
        params={"s": seed.streams[3]},
    )
    verdicts.expect(legacy=True, plain=True)


def test_deleted_stream__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    verdicts = check(
        seed,
        "DELETE FROM utcp.stored_events WHERE stream_id = %(s)s",
        params={"s": seed.streams[3]},
    )
    verdicts.expect(legacy=False, plain=False)


def test_reordered_versions_rehashed_anchors_rewritten__missed_by_legacy_and_plain(
    seed: Seed,
) -> None:
    stream = seed.streams[0]
    verdicts = check(
        seed,
        "UPDATE utcp.stored_events SET stream_version = 1000002 "
        "WHERE stream_id = %(s)s AND stream_version = 2",
        "UPDATE utcp.stored_events SET stream_version = 2 "
        "WHERE stream_id = %(s)s AND stream_version = 3",
        "UPDATE utcp.stored_events SET stream_version = 3 "
        "WHERE stream_id = %(s)s AND stream_version = 1000002",
        REHASH_STREAM.format(stream=stream),
        REWRITE_ANCHORS,
        params={"s": stream},
    )
    verdicts.expect(legacy=True, plain=True)


def test_reordered_versions__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    stream = seed.streams[0]
    verdicts = check(
        seed,
        "UPDATE utcp.stored_events SET stream_version = 1000002 "
        "WHERE stream_id = %(s)s AND stream_version = 2",
        "UPDATE utcp.stored_events SET stream_version = 2 "
        "WHERE stream_id = %(s)s AND stream_version = 3",
        "UPDATE utcp.stored_events SET stream_version = 3 "
        "WHERE stream_id = %(s)s AND stream_version = 1000002",
        params={"s": stream},
    )
    verdicts.expect(legacy=False, plain=False)


SWAP_GLOBAL_ORDER = """
WITH a AS (SELECT event_id, tx_id, position FROM utcp.stored_events
            WHERE stream_id = %(a)s AND stream_version = 1),
     b AS (SELECT event_id, tx_id, position FROM utcp.stored_events
            WHERE stream_id = %(b)s AND stream_version = 1)
UPDATE utcp.stored_events e
   SET tx_id = CASE WHEN e.event_id = a.event_id THEN b.tx_id ELSE a.tx_id END,
       position = CASE WHEN e.event_id = a.event_id THEN b.position ELSE a.position END
  FROM a, b
 WHERE e.event_id IN (a.event_id, b.event_id)"""


def test_reordered_global_order_anchors_rewritten__missed_by_legacy_and_plain(
    seed: Seed,
) -> None:
    verdicts = check(
        seed,
        "ALTER TABLE utcp.stored_events ALTER COLUMN position DROP IDENTITY",
        SWAP_GLOBAL_ORDER,
        REWRITE_ANCHORS,
        params={"a": seed.streams[0], "b": seed.streams[3]},
    )
    verdicts.expect(legacy=True, plain=True)


def test_reordered_global_order__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    verdicts = check(
        seed,
        "ALTER TABLE utcp.stored_events ALTER COLUMN position DROP IDENTITY",
        SWAP_GLOBAL_ORDER,
        params={"a": seed.streams[0], "b": seed.streams[3]},
    )
    verdicts.expect(legacy=False, plain=False)


def test_truncated_tail_and_its_anchor__missed_by_legacy_and_plain(seed: Seed) -> None:
    verdicts = check(
        seed,
        """DELETE FROM utcp.stored_events e USING utcp.chain_anchors a
            WHERE a.anchor_id = (SELECT min(anchor_id) FROM utcp.chain_anchors)
              AND (e.tx_id, e.position) > (a.through_tx, a.through_position)""",
        "DELETE FROM utcp.chain_anchors WHERE anchor_id > "
        "(SELECT min(anchor_id) FROM utcp.chain_anchors)",
    )
    verdicts.expect(legacy=True, plain=True)
    assert "missing from utcp.chain_anchors" in verdicts.anchored_proc.stdout


def test_whole_log_and_anchors_truncated__missed_by_legacy_and_plain(seed: Seed) -> None:
    verdicts = check(
        seed,
        "TRUNCATE utcp.stored_events, utcp.chain_anchors, utcp.idempotency_keys",
    )
    verdicts.expect(legacy=True, plain=True)
    assert verdicts.plain_proc.stdout.startswith("ok: the whole log, 0 events")
    assert "the log has 0 up to its checkpoint" in verdicts.anchored_proc.stdout


def test_whole_log_truncated_keys_kept__caught_by_plain_through_the_keys(seed: Seed) -> None:
    verdicts = check(seed, "TRUNCATE utcp.stored_events, utcp.chain_anchors")
    verdicts.expect(legacy=True, plain=False)
    assert "idempotency key" in verdicts.plain_proc.stdout


def test_fake_anchor_digest__caught_by_legacy_plain_and_anchored(seed: Seed) -> None:
    verdicts = check(
        seed,
        "UPDATE utcp.chain_anchors SET digest = sha256('fake'::bytea) "
        "WHERE anchor_id = (SELECT max(anchor_id) FROM utcp.chain_anchors)",
    )
    verdicts.expect(legacy=False, plain=False)


def test_fake_log_digest_function__missed_by_legacy_only(seed: Seed) -> None:
    """The attacker keeps the digests of the untampered log, deletes a
    stream and replaces utcp.log_digest to answer the kept digests: the
    database's own check passes; the recomputation in Python does not."""
    verdicts = check(
        seed,
        """CREATE TABLE public.kept AS
           SELECT a.anchor_id, lag(a.through_tx, 1, '0'::xid8) OVER w AS after_tx,
                  lag(a.through_position, 1, 0::bigint) OVER w AS after_position,
                  d.events, d.digest
             FROM utcp.chain_anchors a
            CROSS JOIN LATERAL utcp.log_digest(
                  (SELECT coalesce(max(p.through_tx), '0'::xid8) FROM utcp.chain_anchors p
                    WHERE p.anchor_id < a.anchor_id),
                  (SELECT coalesce(max(p.through_position), 0) FROM utcp.chain_anchors p
                    WHERE p.anchor_id = (SELECT max(q.anchor_id) FROM utcp.chain_anchors q
                                          WHERE q.anchor_id < a.anchor_id)),
                  a.through_tx, a.through_position) d
           WINDOW w AS (ORDER BY a.anchor_id)""",
        "DELETE FROM utcp.stored_events WHERE stream_id = %(s)s",
        """CREATE OR REPLACE FUNCTION utcp.log_digest(
               p_after_tx xid8, p_after_position bigint, p_through_tx xid8,
               p_through_position bigint)
           RETURNS TABLE (events bigint, digest bytea) LANGUAGE sql STABLE
           SET search_path = pg_catalog, pg_temp AS $$
               SELECT k.events, k.digest FROM public.kept k
                WHERE k.after_tx = p_after_tx AND k.after_position = p_after_position $$""",
        params={"s": seed.streams[3]},
    )
    verdicts.expect(legacy=True, plain=False)


def test_fake_hash_function__missed_by_legacy_only(seed: Seed) -> None:
    """utcp.event_hash_v2 replaced to answer the stored hash: the database's
    own check passes over a changed payload."""
    verdicts = check(
        seed,
        "UPDATE utcp.stored_events SET data = data || '{\"amount\": 999}' "
        "WHERE stream_id = %(s)s AND stream_version = 2",
        """CREATE OR REPLACE FUNCTION utcp.event_hash_v2(
               prev_hash bytea, event_id uuid, stream_id text, stream_version bigint, type text,
               data jsonb, metadata jsonb, symbol text, occurred_at timestamptz,
               created_at timestamptz, recorded_by text)
           RETURNS bytea LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
               SELECT e.hash FROM utcp.stored_events e WHERE e.event_id = $2 $$""",
        params={"s": seed.streams[1]},
    )
    verdicts.expect(legacy=True, plain=False)


def test_a_forged_saved_anchor_fails(seed: Seed, tmp_path: Path) -> None:
    forged = tmp_path / "forged.json"
    forged.write_text(json.dumps({**seed.anchor, "digest": "00" * 32}) + "\n")
    proc = es(seed.dsn, "verify", "--anchor", str(forged))
    assert proc.returncode == 1
    assert "digest differs from the saved one" in proc.stdout


# -- idempotency keys ---------------------------------------------------------


def test_deleted_keyed_events__verify_reports_the_key_and_a_retry_fails_clearly(
    seed: Seed,
) -> None:
    with copy_of(seed) as dsn:
        tamper(
            dsn,
            "DELETE FROM utcp.stored_events WHERE stream_id = %(s)s AND stream_version >= 2",
            params={"s": seed.keyed_stream},
        )
        proc = es(dsn, "verify")
        assert proc.returncode == 1
        assert f"idempotency key '{seed.key}'" in proc.stdout, proc.stdout
        assert "2 of the 2 events it recorded" in proc.stdout
        with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
            retry = [NewEvent("Step", {"n": 2}), NewEvent("Step", {"n": 3})]
            with pytest.raises(IntegrityViolation, match="gone from the log"):
                store.append(seed.keyed_stream, retry, idempotency_key=seed.key)
            # Someone appends a different event at the keyed version.
            store.append(seed.keyed_stream, [NewEvent("Other", {"n": 99})])
        proc = es(dsn, "verify", "--json")
        assert proc.returncode == 1
        records = [json.loads(line) for line in proc.stdout.splitlines()]
        keys = [r for r in records if r.get("kind") == "key"]
        assert keys and keys[0]["key"] == seed.key
        assert records[-1]["ok"] is False


# -- streaming ----------------------------------------------------------------


class _Tracing(psycopg.Connection[Any]):
    """Records the rows each statement returned."""

    rows_per_statement: list[int]

    def execute(self, query: Any, params: Any = None, **kwargs: Any) -> Any:
        cur = super().execute(query, params, **kwargs)
        if cur.description is not None:
            self.rows_per_statement.append(cur.rowcount)
        return cur


def test_verify_reads_in_chunks_never_the_whole_log_in_one_statement(seed: Seed) -> None:
    with copy_of(seed) as dsn:
        with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
            for n in range(10):
                store.append(
                    f"bulk{n}-{uuid.uuid4().hex[:6]}",
                    [NewEvent("Bulk", {"n": n, "k": k}) for k in range(100)],
                )
        conn = _Tracing.connect(dsn, autocommit=True)
        conn.rows_per_statement = []
        with conn:
            report = integrity.verify_log(conn, chunk_size=100)
            total = conn.execute("SELECT count(*) FROM utcp.stored_events").fetchone()
        assert total is not None
        assert report.ok, report.problems
        assert report.events_checked == total[0] > 1000
        assert report.event_pages == -(-total[0] // 100)
        assert max(conn.rows_per_statement[:-1]) <= 100
        proc = es(dsn, "verify", "--chunk-size", "100", "--anchor", str(seed.anchor_file))
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_from_anchor_checks_only_what_follows_and_reports_changes_after_it(
    seed: Seed,
) -> None:
    with copy_of(seed) as dsn:
        with EventStore.open(dsn, Settings(pool_min_size=1, pool_max_size=1)) as store:
            store.append(seed.streams[0], [NewEvent("After", {"after": 1})])
        proc = es(dsn, "verify", "--from-anchor", str(seed.anchor_file), "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        summary = json.loads(proc.stdout.splitlines()[-1])
        assert summary["from_anchor"] == seed.anchor["anchor_id"]
        assert summary["events_checked"] == 1
        # A change after the anchor shows; one before it is not looked at.
        tamper(
            dsn,
            "UPDATE utcp.stored_events SET data = data || '{\"x\": 1}' "
            "WHERE stream_id = %(s)s AND type = 'After'",
            params={"s": seed.streams[0]},
        )
        proc = es(dsn, "verify", "--from-anchor", str(seed.anchor_file))
        assert proc.returncode == 1
        assert "hash does not match" in proc.stdout


def test_a_reader_can_verify_against_a_saved_anchor_keys_are_noted_as_unchecked(
    seed: Seed,
) -> None:
    with login_role(seed.dsn, "utcp_reader") as reader:
        proc = es(reader, "verify", "--anchor", str(seed.anchor_file))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "1 saved anchor," in proc.stdout
    assert "idempotency keys not checked" in proc.stderr
