"""Prometheus metrics of one service instance (its own registry, so that
several apps in one process, as in tests, do not collide)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["Metrics"]


class _Gauges(Collector):
    """Values read when scraped: pool use, projection lag."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[Any]:
        values = self.read()
        for name, value in sorted(values.items()):
            family = GaugeMetricFamily(f"eventstore_{name}", name.replace("_", " "))
            family.add_metric([], value)
            yield family


class Metrics:
    def __init__(self, read_gauges: Callable[[], dict[str, float]]) -> None:
        self.registry = CollectorRegistry()
        self.calls = Counter(
            "eventstore_tool_calls",
            "tool calls by tool and outcome",
            ["tool", "outcome"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "eventstore_tool_call_seconds",
            "tool call latency",
            ["tool"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )
        self.appends = Counter(
            "eventstore_appends", "write calls that wrote to the log", registry=self.registry
        )
        self.duplicates = Counter(
            "eventstore_duplicates",
            "write calls that wrote nothing (already recorded)",
            registry=self.registry,
        )
        self.conflicts = Counter(
            "eventstore_conflicts", "calls refused with 409", registry=self.registry
        )
        self.registry.register(_Gauges(read_gauges))

    def render(self) -> bytes:
        return generate_latest(self.registry)
