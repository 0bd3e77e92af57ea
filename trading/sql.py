"""SQL of the trading adapter: what it asks the log before it writes."""

from __future__ import annotations

from typing import Final

# Whether a trade was executed in a portfolio's stream (before a cancellation).
TRADE_IN_STREAM: Final = """
SELECT EXISTS (SELECT 1 FROM utcp.stored_events
                WHERE stream_id = %s AND type = %s AND data ->> 'trade_id' = %s)"""

# Which of some trades were cancelled: (stream_id, trade_id) of the
# cancellations recorded in those portfolios' streams.
CANCELLED_TRADES: Final = """
SELECT DISTINCT stream_id, data ->> 'trade_id'
  FROM utcp.stored_events
 WHERE stream_id = ANY(%s::text[]) AND type = %s AND data ->> 'trade_id' = ANY(%s::text[])"""
