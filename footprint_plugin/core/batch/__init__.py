"""Big-area jobs: tiles grouped into mosaics, mosaics cut into blocks, a resumable job folder, Dask.

Owns: `mosaic` (block planning), `runner` (run_batch and the job folder) and `distributed` (optional Dask
cluster, per-worker setup). May import: `common`, `io`, `models`, `zoo`, `vectors`, `engine`.
"""
