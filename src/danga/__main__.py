"""``python -m danga``: the same as the ``danga`` command."""

from __future__ import annotations

import sys

from .cli import main

sys.exit(main())
