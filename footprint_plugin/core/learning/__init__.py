"""Training and fine-tuning: labels, chips, augmentation, the trainer and its reports.

Owns: `labels`, `chips`, `augment`, `report` (curves and quicklook PNGs), `suggest` (where to digitize
next), and the trainer: `training` (entry point), `config`, `cards`, `dataset`, `steps`, `schedule`,
`validation`, `checkpoint`, `fitting`, `finishing`, `trainer`.
May import: `common`, `io`, `models`, `zoo`, `vectors`, `engine`.
"""
