"""Shared test configuration."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

# One home for the fixtures every package's tests use: a throwaway
# database deployed through Sqitch, login roles, the shared store.
pytest_plugins = ["tests.support.database"]

# Property tests that talk to PostgreSQL are slow per example and share
# fixtures across examples on purpose (each example uses fresh stream ids).
settings.register_profile(
    "default",
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
settings.register_profile(
    "thorough",
    parent=settings.get_profile("default"),
    max_examples=500,
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))
