"""SQL of the trading adapter: what it asks the log before it writes."""

from __future__ import annotations

from typing import Final

# Whether a trade was executed in a portfolio's stream (before a cancellation).
# The type is a literal: it matches the predicate of the partial index
# stored_events_trade_id (sqitch/deploy/index_tiebreak.sql), which a
# parameter would not in a generic (prepared) plan.
TRADE_IN_STREAM: Final = """
SELECT EXISTS (SELECT 1 FROM utcp.stored_events
                WHERE stream_id = %s AND type = 'TradeExecuted' AND data ->> 'trade_id' = %s)"""

# Which of some trades were cancelled: (stream_id, trade_id) of the
# cancellations recorded in those portfolios' streams.
CANCELLED_TRADES: Final = """
SELECT DISTINCT stream_id, data ->> 'trade_id'
  FROM utcp.stored_events
 WHERE stream_id = ANY(%s::text[]) AND type = %s AND data ->> 'trade_id' = ANY(%s::text[])"""
