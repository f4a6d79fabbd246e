"""The full default config tree; configs/ start here and change what differs.

Defaults are the paper's values where it gives them (RINGMOE.md); choices the paper leaves open
are marked 'choice'.
"""
from __future__ import annotations

import ml_collections

from ringmoe_jax.sensors.modalities import DEFAULT_CHANNELS


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict(dict(
      img_size=192, patch_size=4, embed_dim=448, depths=(2, 2, 18, 2),
      num_heads=(14, 28, 56, 112), window_size=12, mlp_ratio=4.0, qkv_bias=True,
      pretrained_window_size=0, cpb_hidden=512,
      # Convpass adapters per block (fine-tuning mode "adapter" sets it from finetune.adapter_dim).
      adapter_dim=0, adapter_scale=1.0,
      # The modalities the model has (patch embeddings, specialised experts and routers,
      # decoders); () = all of MODALITIES. A sub-model of the expert-pruning transform keeps
      # fewer (ringmoe_jax/prune); batch modality ids stay the global ones.
      modalities=(),
      # A window larger than a stage's map shrinks to the map (Swin's rule). False: error.
      allow_window_shrink=True,
      in_channels=ml_collections.ConfigDict(dict(DEFAULT_CHANNELS)),
      # 'fixed' (the paper: one kernel per modality of in_channels bands) or 'spectral' (each
      # band's kernel generated from its registry description; any band subset / superset of a
      # modality; in_channels then only sizes modalities without a sensor in use).
      # Default 'fixed' (paper parity; golden sharding files). benchmarks/band_robustness.py
      # (pretrain_tiny physics=none, 120 steps, 192 test tiles, one seed) measured probe accuracy
      # all bands / 1 / 2 missing: spectral 0.776 / 0.723 / 0.625, fixed (zero-filled)
      # 0.740 / 0.646 / 0.543 (probe refit on the subset: 0.746 / 0.703 vs 0.742 / 0.716).
      # Seed 1: spectral 0.760 / 0.698 / 0.593, fixed 0.786 / 0.667 / 0.523. Two-seed mean:
      # a tie with all bands, spectral ahead only where bands vanish under a trained head,
      # fixed ahead with the probe refit on the subset; step time equal (patch_embed.py
      # 1.002). So 'fixed' stays the default; 'spectral' for other band sets (README).
      patch_embed="fixed",
      dtype="float32", param_dtype="float32"))

  c.moe = ml_collections.ConfigDict(dict(
      num_special=4, num_collab=4, num_shared=1, top_k=1, capacity_factor=1.2,
      eval_capacity_factor=2.0,  # choice: evaluation should drop (almost) nothing
      special_capacity_fraction=ml_collections.config_dict.placeholder(float),
      min_capacity=4, router_init_std=0.02, balance_weight=0.001,
      # 'auto' (GPU/TPU: dropless ragged_dot; CPU: dropless native on one device in float32,
      # else dropless blocked; expert-sharded mesh: capacity), 'capacity', 'dropless_ragged', 'dropless_blocked', 'dropless_native'. See
      # moe/dispatch.py.
      dispatcher="auto",
      expert_parallel="gspmd",  # or 'shard_map' (explicit all_to_all), parallel/expert_parallel.py
      renormalize_gates=False,  # the paper's code renormalises top-1 to 1: a bug (RINGMOE.md)
      batch_priority=False, jitter_noise=0.0, router_z_loss_weight=0.0,
      # Hidden width of each shared FFN as a multiple of the block's dim; None: model.mlp_ratio.
      # The dense model of a merge (ringmoe_jax/prune) folds the merged experts into it.
      shared_mlp_ratio=ml_collections.config_dict.placeholder(float),
      dropless_block_sizes=(512, 256, 128, 64, 32)))

  c.mim = ml_collections.ConfigDict(dict(
      mask_ratio=0.6, mask_cell=32,
      # 'simmim' (whole cells) or 'pimask' (RingMo: pimask_in_cell_ratio of each selected
      # cell's tokens; choice: 0.5, RingMo's value is not public).
      masking="simmim", pimask_in_cell_ratio=0.5,
      # Per modality, see objectives/targets.py: 'pixels', 'span', 'span_complex',
      # 'reflectance' (opt/ms), 'log_intensity' (sar_l2, Gamma NLL).
      targets=ml_collections.ConfigDict(dict(
          opt="pixels", ms="pixels", sar_l1="span", sar_l2="pixels"))))

  # Physics terms beyond the targets (objectives/objective.py). Off (0) by default: the paper.
  c.physics = ml_collections.ConfigDict(dict(
      reflectance_unit=0.1,  # choice: 'reflectance' targets in units of 0.1 reflectance (~1)
      sar_l1_complex_weight=1.0,  # with target 'span_complex'
      sam_weight=0.0, index_weight=0.0,
      indices=("NDVI", "NDWI"),  # each used where the sensor has the bands (by wavelength)
      spectral_modalities=("ms",),  # SAM / indices on these modalities' 'reflectance' targets
      default_looks=1.0,  # SAR-L2 sensors without registry looks (choice: single look)
      gamma_include_constants=True))  # report the true NLL (constants do not change gradients)

  # Cross-modal InfoNCE on co-registered groups (batch key 'group'; data.co_registered > 1).
  c.contrastive = ml_collections.ConfigDict(dict(
      # Weight 1: the masked and contrastive terms count equally (as in CROMA); at 0.1 the
      # InfoNCE of pretrain_tiny stayed at chance over 300 steps, at 1 it falls 2.14 -> 1.67
      # with the same reconstruction losses.
      enabled=False, weight=1.0,
      min_temperature=0.01, max_temperature=1.0))

  c.data = ml_collections.ConfigDict(dict(
      # 'simulator' (built-in co-registered multi-modal scenes), 'synthetic' (simple per-tile
      # generator) or 'arrayrecord' (shards from `python -m ringmoe_jax.data.ingest`, data.paths).
      source="simulator",
      paths=(),
      sensors=("gaofen2_pms", "gaofen1_wfv", "gaofen3_slc", "gaofen3_amp"),
      weights=ml_collections.config_dict.placeholder(tuple),  # per sensor; None: equal
      # None (per-sensor weights), 'paper' (70% optical / 20% MS / 10% SAR) or {modality: w}.
      modality_weights=ml_collections.config_dict.placeholder(object),
      co_registered=1,  # simulator: tiles per scene rendered by different sensors
      sensor_files=(),  # user sensor definitions (JSON/YAML), registered before training
      # Pre-training: probability that each channel of a tile is dropped (pixels zeroed, batch
      # "channels" 0; one channel always kept). None: 0.2 with model.patch_embed='spectral',
      # 0 with 'fixed' (data/pipeline.py BandDropout).
      band_dropout=ml_collections.config_dict.placeholder(float),
      num_tiles=100_000, tile_size=256, batch_size=512, num_workers=0))

  c.optim = ml_collections.ConfigDict(dict(
      base_lr=2.5e-4, base_batch=512,  # lr = base_lr * batch_size / base_batch
      min_lr=5e-7, warmup_steps=10_000, b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.05,
      grad_clip=5.0,
      # Length of the warmup-cosine schedule; 0: train.total_steps. Fix it to keep the
      # schedule (and the compiled step) unchanged when a run is extended with a larger
      # total_steps.
      schedule_steps=0))

  # route_per_shard: MoE routing groups = batch shards over (data, fsdp) (capacity per shard,
  # no global dispatch gather); False: one routing over the global batch (models/swin.py).
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, expert=1, tensor=1,
                                          route_per_shard=False))
  # Logical-axis -> mesh-axis rules: a preset of parallel/sharding.py ('dp', 'fsdp',
  # 'fsdp_expert', 'fsdp_expert_tensor'), or explicit rules (('embed', 'fsdp'), ...).
  c.sharding_preset = "fsdp_expert_tensor"
  c.sharding_rules = ()

  # Stage blocks scanned in pairs (compile time independent of depth) and the backward-pass
  # rematerialisation of each pair: 'none' | 'full' | 'dots_saveable' |
  # 'dots_with_no_batch_dims_saveable' (models/swin.py).
  c.remat = ml_collections.ConfigDict(dict(policy="none", scan_blocks=True))

  c.train = ml_collections.ConfigDict(dict(
      total_steps=100_000, log_every=50, checkpoint_every=1000, max_to_keep=3,
      async_checkpoint=True,
      # A step whose loss or gradient norm is NaN/Inf is skipped inside the jitted step
      # (counted in state['skipped_steps']); this many in a row stop the run (checked on
      # logging and checkpoint steps) without writing a checkpoint after the streak.
      max_consecutive_nonfinite=3,
      # Fault injection for tests: the batches of these steps (0-based state step) get NaN
      # pixels (on the host; the compiled step is unchanged), so their loss is NaN.
      inject_nonfinite_steps=(),
      # (first, last): a JAX profiler trace of steps first..last (1-based, inclusive) goes to
      # WORKDIR/profile (TensorBoard / Perfetto). None: no trace.
      profile_steps=ml_collections.config_dict.placeholder(tuple)))
  return c
