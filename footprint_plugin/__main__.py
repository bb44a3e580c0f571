"""`python -m footprint_plugin`: the headless command line over the engine."""

from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
