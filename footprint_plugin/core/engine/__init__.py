"""Detection: devices, input scaling, the tile grid, tiled inference and the detect pipeline.

Owns: `device`, `scaling` (statistics once per raster, cached per layer), `tiling` (THE tile grid and blend
weights, also used by training validation), `options` (InferenceOptions / InferenceResult), `planning` (the
model grid, windows of a raster, column windows, resampling back), `runner` (the prepared network, TTA,
batches, out-of-memory retries), `precision` (the bf16/fp16 gate), `streaming` (one prediction's tile loop),
`estimate` (job size before the work), `inference` (predict_raster, the entry point) and `pipeline`
(detect_buildings: inference + polygons + write). May import: `common`, `io`, `models`, `zoo`, `vectors`.
"""
