"""Big-area jobs: tiles grouped into mosaics, mosaics cut into blocks, a resumable job folder, Dask.

Owns: `mosaic` (tiles, mosaics, block geometry), `planning` (the job's plan, size and disk checks), `jobdir`
(the job folder: ownership marker, manifest, cleanup), `lock` (one run per job folder or output), `layout`
(file names, task specs, the merge), `blocks` (the work of one block or mosaic), `engines` (serial or Dask),
`model_cache` (one model per process), `distributed` (optional Dask cluster, bounded connects, per-worker
setup), `options` (options, progress, result) and `runner` (run_batch).
May import: `common`, `io`, `models`, `zoo`, `vectors`, `engine`.
"""
