-- Verify utcp:event_indexes on pg
SELECT 1 / (count(*) = 5)::int FROM pg_catalog.pg_indexes
 WHERE schemaname = 'utcp' AND tablename = 'stored_events'
   AND indexname IN ('stored_events_global_order', 'stored_events_symbol_time',
                     'stored_events_type_time', 'stored_events_category_time',
                     'stored_events_created_at');
