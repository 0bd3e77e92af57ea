"""A trading desk for the projection tests: a realistic session appended
through the adapter, a thread that keeps appending, and ``eventstore
project run`` workers as an operator starts and stops them."""

from __future__ import annotations

import datetime as dt
import random
import signal
import subprocess
import sys
import threading
import uuid
from decimal import Decimal

from tests.support.database import WAIT
from trading import StorageAdapter, Trade
from trading.events import CashDeposited, PortfolioOpened, TradeCancelled


class TradingDesk:
    """Appends a realistic session through the adapter: portfolios, cash,
    buys and sells (shorts and flips happen), some cancellations."""

    SYMBOLS = ("AAPL", "MSFT", "NVDA", "BTC-USD")

    def __init__(self, adapter: StorageAdapter, portfolios: int = 3, seed: int = 7) -> None:
        self.adapter = adapter
        self.rng = random.Random(seed)
        self.tag = uuid.uuid4().hex[:8]
        self.portfolios = [f"{self.tag}-p{i}" for i in range(portfolios)]
        self.open_trades: list[tuple[str, str]] = []
        self.executed = 0
        self.cancelled = 0
        self.events = 0
        now = self.now()
        for pid in self.portfolios:
            adapter.open_portfolio(
                PortfolioOpened(portfolio_id=pid, name=pid, base_currency="USD", opened_at=now)
            )
            adapter.deposit_cash(
                CashDeposited(
                    deposit_id=f"{pid}-d0",
                    portfolio_id=pid,
                    amount=Decimal(250_000),
                    occurred_at=now,
                )
            )
            self.events += 2

    @staticmethod
    def now() -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def step(self) -> None:
        rng = self.rng
        if self.open_trades and rng.random() < 0.08:
            pid, tid = self.open_trades.pop(rng.randrange(len(self.open_trades)))
            self.adapter.cancel_trade(
                TradeCancelled(
                    trade_id=tid, portfolio_id=pid, reason="busted", occurred_at=self.now()
                )
            )
            self.cancelled += 1
        else:
            pid = rng.choice(self.portfolios)
            tid = f"{self.tag}-t{self.executed}"
            self.adapter.save_trade(
                Trade(
                    trade_id=tid,
                    portfolio_id=pid,
                    symbol=rng.choice(self.SYMBOLS),
                    side=rng.choice(("buy", "sell")),
                    quantity=Decimal(rng.randint(1, 40)),
                    price=Decimal(rng.randint(5_000, 50_000)) / 100,
                    fees=Decimal(rng.randint(0, 300)) / 100,
                    executed_at=self.now(),
                )
            )
            self.open_trades.append((pid, tid))
            self.executed += 1
        self.events += 1


class DeskWriter(threading.Thread):
    """Keeps appending until stopped."""

    def __init__(self, desk: TradingDesk) -> None:
        super().__init__(daemon=True)
        self.desk = desk
        self.stop = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                self.desk.step()
        except BaseException as exc:
            self.error = exc

    def finish(self) -> None:
        self.stop.set()
        self.join(timeout=WAIT)
        assert self.error is None, f"the writer failed: {self.error!r}"


def start_worker(dsn: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "storectl", "project", "run", "--dsn", dsn, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def stop_worker(proc: subprocess.Popen[str], timeout: float = WAIT) -> tuple[int, str]:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"the worker did not stop on SIGTERM:\n{err}") from None
    return proc.returncode, err
