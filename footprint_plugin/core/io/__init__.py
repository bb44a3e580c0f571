"""Files in and out: raster and vector I/O, atomic writes and the output guard.

Owns: `raster_io` (open/validate rasters, GSD, nodata masks, the probability COG), `vector_io`
(read/write polygons via OGR), `atomic` (THE atomic-write helper) and `paths` (no output may be an input
or another output; writable folders). May import: `common`.
"""
