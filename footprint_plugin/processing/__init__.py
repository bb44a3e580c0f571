"""Processing provider `footprint`: one algorithm per module, all thin layers over footprint_plugin.core."""

from __future__ import annotations
