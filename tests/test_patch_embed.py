"""Spectral patch embedding (model.patch_embed='spectral', issue 16): band subsets and supersets
embed with the default model, masked channels are ignored, band dropout is deterministic, and a
micro pre-training step runs on tiles of all 14 built-in sensors at once."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import compiled_model, micro_config
from ringmoe_jax.data import pipeline
from ringmoe_jax.data.simulator import SceneSimulator
from ringmoe_jax.models.patch_embed import ModalityPatchEmbed, SpectralPatchEmbed
from ringmoe_jax.objectives import sensor_tables
from ringmoe_jax.sensors.modalities import modality_id
from ringmoe_jax.sensors.registry import Sensor, default_registry
from ringmoe_jax.train import model as model_lib

P, D = 4, 16


def _registry_with_subset():
  """The built-ins + 'landsat8_sub' = Landsat-8 OLI bands B2, B4, B5 (a user's band subset)."""
  reg = default_registry()
  full = reg.get("landsat8_oli")
  keep = (1, 3, 4)
  reg.register(dataclasses.replace(
      full, name="landsat8_sub", bands=tuple(full.bands[i] for i in keep),
      mean=tuple(full.mean[i] for i in keep), std=tuple(full.std[i] for i in keep),
      dn_gain=None, dn_offset=None))
  return reg, keep


def _embed(reg):
  return SpectralPatchEmbed(4, sensor_tables.band_table(reg), P, D, rngs=nnx.Rngs(0))


def _pixels(b, c, seed=0, size=8):
  return jnp.asarray(np.random.default_rng(seed).normal(size=(b, size, size, c)), jnp.float32)


def test_band_subset_equals_full_sensor_with_channels_masked():
  reg, keep = _registry_with_subset()
  emb = _embed(reg)
  c = 13
  full = np.asarray(_pixels(1, c))
  sub = np.zeros_like(full)
  sub[..., :3] = full[..., list(keep)]
  ms = jnp.full((1,), modality_id("ms"), jnp.int32)
  mask = np.zeros((1, c), np.float32)
  mask[0, list(keep)] = 1
  a = emb(jnp.asarray(sub), ms, sensor=jnp.asarray([reg.index("landsat8_sub")]))
  b = emb(jnp.asarray(full), ms, sensor=jnp.asarray([reg.index("landsat8_oli")]),
          channels=jnp.asarray(mask))
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-5)
  # and differs from the full sensor's embedding (the other bands do count when present)
  whole = emb(jnp.asarray(full), ms, sensor=jnp.asarray([reg.index("landsat8_oli")]))
  assert float(jnp.max(jnp.abs(whole - b))) > 1e-3


def test_masked_and_padding_channels_do_not_change_the_output():
  reg = default_registry()
  emb = _embed(reg)
  s1 = reg.index("sentinel1_grd")  # 2 channels; channels 2.. are padding
  x = np.asarray(_pixels(2, 13))
  y = x.copy()
  y[..., 1:] = np.random.default_rng(5).normal(size=y[..., 1:].shape) * 100
  y[0, 0, 0, 5] = np.nan  # not even a NaN in an absent channel gets in
  mask = np.ones((2, 13), np.float32)
  mask[:, 1] = 0  # VH dropped
  mod = jnp.full((2,), modality_id("sar_l2"), jnp.int32)
  sens = jnp.full((2,), s1, jnp.int32)
  a = emb(jnp.asarray(x), mod, sensor=sens, channels=jnp.asarray(mask))
  b = emb(jnp.asarray(y), mod, sensor=sens, channels=jnp.asarray(mask))
  assert np.all(np.isfinite(np.asarray(b)))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_kernels_are_generated_per_band_not_per_sensor():
  """Same band description -> same kernel (Landsat 8 and 9 share OLI bands); a sensor added
  to the registry adds a table row, never a parameter."""
  reg = default_registry()
  emb = _embed(reg)
  k = np.asarray(emb.kernels())
  np.testing.assert_array_equal(k[reg.index("landsat8_oli")], k[reg.index("landsat9_oli")])
  reg2, _ = _registry_with_subset()
  emb2 = _embed(reg2)
  shapes = lambda m: jax.tree.map(jnp.shape, nnx.state(m, nnx.Param))
  assert shapes(emb) == shapes(emb2)


def test_superset_sentinel2_runs_with_the_default_model():
  """13-band Sentinel-2 and 2-channel Sentinel-1 GRD through the default (micro) model with
  no in_channels override; 'fixed' keeps the paper's parameter tree."""
  c = micro_config(**{"model.patch_embed": "spectral",
                      "data.sensors": ("sentinel2_l1c", "sentinel1_grd", "gaofen2_pms")})
  assert model_lib.modality_channels(c) == (3, 13, 8, 2)
  m = compiled_model(c)  # init and forward in one program each: op by op costs ~20 s here
  reg = default_registry()
  x = _pixels(2, 13, size=32)
  feats, _ = nnx.jit(lambda enc, x, mod, sen: enc(x, mod, sensor=sen, train=False))(
      m.encoder, x, jnp.asarray([1, 3], jnp.int32),
      jnp.asarray([reg.index("sentinel2_l1c"), reg.index("sentinel1_grd")], jnp.int32))
  assert feats[-1].shape[0] == 2 and np.all(np.isfinite(np.asarray(feats[-1])))
  fixed = model_lib.abstract_model(micro_config())
  assert isinstance(fixed.encoder.patch_embed, ModalityPatchEmbed)
  assert model_lib.input_channels(micro_config()) == 8


def _dropout_dataset(seed=0, rate=0.5):
  reg = default_registry()
  src = SceneSimulator(64, 40, sensors=("sentinel2_l1c", "gaofen3_slc"), registry=reg, seed=0)
  return pipeline.make_dataset(src, registry=reg, batch_size=4, crop_size=32, max_channels=13,
                               seed=seed, band_dropout=rate)


def test_band_dropout_is_deterministic_and_masks_pixels():
  a, b = _dropout_dataset(), _dropout_dataset()
  for step in (0, 3):
    x, y = a[step], b[step]
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)
    ch = x["channels"]
    reg = default_registry()
    n = np.array([reg.get(reg.names()[s]).num_channels for s in x["sensor"]])
    assert np.all(ch.sum(-1) >= 1) and np.all(ch.sum(-1) <= n)
    assert np.all(ch[np.arange(13)[None] >= n[:, None]] == 0)  # padding is absent
    assert np.all(x["pixels"][..., :][np.broadcast_to(ch[:, None, None, :] == 0,
                                                       x["pixels"].shape)] == 0)
  assert any((a[i]["channels"].sum(-1) < 8).any() for i in range(3))  # something dropped
  other = _dropout_dataset(seed=1)
  assert not np.array_equal(a[0]["channels"], other[0]["channels"])
  # resume: an iterator restored from its state continues with the same batches
  it = pipeline.make_iterator(_dropout_dataset(), num_threads=1, prefetch_buffer_size=1)
  next(it)
  state = it.get_state()
  want = next(it)
  it2 = pipeline.make_iterator(_dropout_dataset(), num_threads=1, prefetch_buffer_size=1)
  it2.set_state(state)
  np.testing.assert_array_equal(next(it2)["channels"], want["channels"])


def test_micro_pretraining_step_on_all_builtin_sensors_and_a_user_file_sensor(tmp_path):
  """All 14 built-ins at once, no channel override, plus a sensor defined in a user JSON file
  (data.sensor_files): it trains without code changes, rendered by the simulator from its bands."""
  import json  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  names = default_registry().names()
  assert len(names) == 14
  user = {"name": "my_msi", "modality": "ms", "gsd_m": 2.0, "product_level": "L2A",
          "scale": "reflectance", "mean": [0.1] * 5, "std": [0.1] * 5,
          "bands": [{"name": n, "center_wavelength_nm": w, "bandwidth_nm": 40.0}
                    for n, w in (("blue", 485), ("green", 555), ("red", 660), ("re", 705),
                                 ("nir", 830))]}
  (tmp_path / "my_msi.json").write_text(json.dumps(user))
  c = micro_config(**{"model.patch_embed": "spectral", "data.sensors": names + ("my_msi",),
                      "data.sensor_files": (str(tmp_path / "my_msi.json"),),
                      "moe.dispatcher": "capacity"})  # a smaller step to compile
  c.train.update(total_steps=1, log_every=1, checkpoint_every=100)
  r = trainer.train(c, str(tmp_path / "run"))
  assert len(r["losses"]) == 1 and np.isfinite(r["losses"][0]), r["losses"]
