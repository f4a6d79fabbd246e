"""Input data: sensor-tagged tiles -> fixed-shape, multi-modal batches.

synthetic.py  the built-in synthetic tiles (structured scenes rendered per sensor), a Grain source.
records.py    validation of one record against its sensor; NaN/Inf and nodata become invalid.
augment.py    numpy random resized crop / centre crop / flip, bilinear for optical, nearest for SAR.
pipeline.py   the Grain pipeline (shard, shuffle, repeat, validate, normalise, augment, batch).
"""
