"""Detection: devices, input scaling, the tile grid, tiled inference and the detect pipeline.

Owns: `device`, `scaling`, `tiling` (THE tile grid and blend weights, also used by training validation),
`inference` (predict_raster: tiled, blended, streamed probability GeoTIFF) and `pipeline`
(detect_buildings: inference + polygons + write). May import: `common`, `io`, `models`, `zoo`, `vectors`.
"""
