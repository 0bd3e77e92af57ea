"""The store's connection pool: psycopg_pool's, handing out connections
last-in, first-out.

psycopg_pool hands out the connection that has been idle longest (FIFO),
so one writer rotates through every backend in the pool, each one cold in
the CPU caches and the scheduler. Handing out the most recently returned
connection (what PgBouncer does by default) keeps a lone writer on one warm
backend: +34% appends/s for a single writer, measured with
``python -m bench.append_bench``. It also lets ``max_idle`` close the
connections a quiet service really does not need, since the idle ones stay
idle instead of taking turns.
"""

from __future__ import annotations

from typing import Any

import psycopg
import psycopg_pool

__all__ = ["LifoConnectionPool"]


class LifoConnectionPool(psycopg_pool.ConnectionPool[psycopg.Connection[Any]]):
    """A ``psycopg_pool.ConnectionPool`` that reuses the most recently
    returned connection first. Everything else (checks, waiting clients,
    resizing, lifetimes) is psycopg_pool's own."""

    def _get_ready_connection(self, timeout: float | None) -> psycopg.Connection[Any] | None:
        # Called under the pool's lock. The parent takes from the left of
        # its deque and returns connections to the right: bring the newest
        # to the left first, leaving the order of the others unchanged.
        ready = self._pool
        if len(ready) > 1 and (timeout is None or timeout > 0):
            ready.rotate(1)
        return super()._get_ready_connection(timeout)
