"""Training and fine-tuning: labels, chips, augmentation, the trainer and its reports.

Owns: `labels`, `chips`, `augment`, `training` and `report` (curves and quicklook PNGs).
May import: `common`, `io`, `models`, `zoo`, `vectors`, `engine`.
"""
