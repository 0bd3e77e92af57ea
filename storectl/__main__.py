"""``python -m storectl`` is the ``eventstore`` command."""

import sys

from .cli import main

sys.exit(main())
