"""The programs built on the store: the ``eventstore`` command
(:mod:`storectl.cli`), the demo session (:mod:`storectl.demo`) and the
backup/restore drill (:mod:`storectl.drill`). Nothing in ``eventstore``,
``trading`` or ``projections`` imports from here."""
