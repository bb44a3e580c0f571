"""The model zoo: model cards and their weights, in the bundled and the user model folders.

Owns: `modelcard` (ModelCard, load/save, list/find/import/delete, the user model folder) and `weights`
(load_model with the safe, sha256-checked load; save_model). May import: `common`, `io`, `models`.
"""
