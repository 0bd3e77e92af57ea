-- Verify utcp:hash_v2 on pg
SELECT hash_version FROM utcp.stored_events WHERE false;
SELECT utcp.event_hash_v2(NULL, '00000000-0000-0000-0000-000000000000', 's', 1, 't',
                          '{}'::jsonb, NULL, NULL, now(), now(), 'r');
-- Unambiguous: NULL and '' differ, and shifting text across fields changes the hash.
SELECT 1 / (utcp.hash_field('') <> '\xffffffff'::bytea)::int;
