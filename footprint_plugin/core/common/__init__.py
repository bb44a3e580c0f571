"""Shared vocabulary of the engine: errors, progress/cancel callbacks, names and defaults, geometry helpers.

Owns: `errors`, `callbacks`, `vocabulary` (torch-free names and defaults every front end reads) and
`geometry` (shapely helpers, metric CRSs). May import: nothing else in `core` (the bottom layer).
"""
