"""Benchmarks of the event store against raw psycopg (see bench/README.md)."""
