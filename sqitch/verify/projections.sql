-- Verify utcp:projections on pg
SELECT trade_id, portfolio_id, symbol, side, quantity, price, fees, executed_at, order_id,
       status, event_position, updated_at
  FROM utcp.trades WHERE false;
SELECT portfolio_id, symbol, quantity, avg_cost, realized_pnl, fees, trade_count, updated_at
  FROM utcp.positions WHERE false;
SELECT portfolio_id, name, base_currency, cash, realized_pnl, fees, opened_at, updated_at
  FROM utcp.portfolios WHERE false;
SELECT projection, checkpoint_tx, checkpoint_position, events_processed, last_event_at,
       updated_at, last_error, last_error_at, last_error_event
  FROM utcp.projection_checkpoints WHERE false;
SELECT 1 / (has_table_privilege('utcp_reader', 'utcp.positions', 'SELECT'))::int;
SELECT 1 / (NOT has_table_privilege('utcp_writer', 'utcp.positions', 'INSERT'))::int;
