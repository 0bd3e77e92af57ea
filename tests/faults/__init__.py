"""Fault tests on a private PostgreSQL cluster (issue 9)."""
