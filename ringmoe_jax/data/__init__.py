"""Input data: sensor-tagged tiles -> fixed-shape, multi-modal batches.

synthetic.py   the foundation's per-tile synthetic generator, a Grain source.
simulator.py   co-registered multi-modal scenes with labels for six tasks, a Grain source.
tiles.py       the tile record format (msgpack, v1) and ArrayRecord shard writer / reader.
tfds_tiles.py  the same shards as a tensorflow-datasets array_record data source (no TF).
ingest.py      `python -m ringmoe_jax.data.ingest`: GeoTIFF -> tile shards + manifest.json.
sources.py     `make_source(data_cfg, registry, seed)`: synthetic / simulator / arrayrecord,
               mixtures by modality weight.
records.py     validation of one record against its sensor; NaN/Inf and nodata become invalid.
augment.py     numpy random resized crop / centre crop / flip, bilinear for optical, nearest for SAR.
pipeline.py    the Grain pipeline (shard, shuffle, repeat, mix, validate, normalise, augment, batch).
"""
