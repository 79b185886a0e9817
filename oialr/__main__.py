"""``python -m oialr`` is the ``oialr`` command."""

import sys

from .cli import main

sys.exit(main())
