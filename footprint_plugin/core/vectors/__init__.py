"""Buildings as polygons: probability to polygons, outline regularization, scoring against references.

Owns: `polygons` (threshold, watershed, clean, attributes; write_buildings), `regularize` and `evaluate`
(SpaceNet object scores, pixel IoU/Dice, TP/FP/FN layers). May import: `common`, `io`.
"""
