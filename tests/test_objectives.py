"""The pre-training objective wired together: masking choice, per-sensor tables, group pooling,
pipeline groups, config variants, and every term finite and counted 0 on degenerate tiles."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from helpers import compiled_model, micro_config
from ringmoe_jax.config.load import load_config
from ringmoe_jax.config.validate import ConfigError, validate
from ringmoe_jax.data import pipeline
from ringmoe_jax.data.simulator import SceneSimulator
from ringmoe_jax.objectives import objective, sensor_tables
from ringmoe_jax.objectives.simmim import simmim_loss
from ringmoe_jax.sensors.registry import default_registry
from ringmoe_jax.train.model import make_model

REG = default_registry()
TERMS = ("sar_l1_complex_loss", "spectral_sam_loss", "spectral_index_loss", "contrastive_loss")
COUNTS = ("sar_l1_complex_tiles", "spectral_sam_pixels", "spectral_index_count",
          "contrastive_pairs")


def test_tables_pick_bands_by_wavelength_and_sar_power():
  t = sensor_tables.build_tables(REG, ("NDVI", "NDWI", "NDBI"))
  wfv = REG.index("gaofen1_wfv")  # B1 blue, B2 green, B3 red, B4 NIR
  assert (t.index_a[wfv, 0], t.index_b[wfv, 0]) == (3, 2)  # NDVI = (NIR - red) / (NIR + red)
  assert (t.index_a[wfv, 1], t.index_b[wfv, 1]) == (1, 3)  # NDWI = (green - NIR) / (...)
  assert t.index_ok[wfv].tolist() == [1, 1, 0]  # no SWIR: NDBI skipped for this sensor
  s2 = REG.index("sentinel2_l2a")
  assert t.index_ok[s2].tolist() == [1, 1, 1]
  assert t.sar_power[REG.index("gaofen3_amp")] == sensor_tables.AMPLITUDE
  ids = np.asarray([wfv, -1, len(REG) + 3])
  # Compiled, not op by op (each eager op compiles on its own on the 2-core CI machine).
  np.testing.assert_array_equal(jax.jit(sensor_tables.take_fill)(t.index_ok[:, 0], ids),
                                [1, 0, 0])
  x = np.full((3, 1, 1, 1), 0.5, np.float32)
  kinds = np.asarray([sensor_tables.AMPLITUDE, sensor_tables.INTENSITY, sensor_tables.DECIBEL])
  np.testing.assert_allclose(np.asarray(jax.jit(sensor_tables.to_intensity)(x, kinds)).ravel(),
                             [0.25, 0.5, 10 ** 0.05], rtol=1e-6)


def test_group_embeddings_average_per_group_and_modality():
  b, c = 6, 3
  feats = np.arange(b * c, dtype=np.float32).reshape(b, 1, 1, c)
  valid = np.ones((b, 4, 4), np.float32)
  valid[5] = 0.0  # tile 5 has no data
  group = np.asarray([7, 7, 7, 9, -1, 9], np.int32)
  modality = np.asarray([0, 1, 0, 2, 1, 3], np.int32)
  emb, present = jax.jit(objective.group_embeddings, static_argnums=4)(
      feats, valid, group, modality, 4)
  want_present = np.zeros((b, 4), bool)
  want_present[0, [0, 1]] = True
  want_present[3, 2] = True  # tile 4: no group; tile 5: no data
  np.testing.assert_array_equal(present, want_present)
  np.testing.assert_allclose(emb[0, 0], (feats[0, 0, 0] + feats[2, 0, 0]) / 2)
  np.testing.assert_allclose(emb[0, 1], feats[1, 0, 0])


def test_masking_is_chosen_by_config():
  c = micro_config()
  model = nnx.eval_shape(lambda: make_model(c))
  key = jax.random.PRNGKey(0)
  draw = lambda obj: jax.jit(obj.draw_mask, static_argnums=(1, 2))(key, 2, (8, 8))
  block = draw(objective.Objective.from_config(c, model))
  c.mim.masking = "pimask"
  c.mim.pimask_in_cell_ratio = 0.5
  pi = draw(objective.Objective.from_config(c, model))
  cell = c.mim.mask_cell // c.model.patch_size
  # PIMask masks half of the tokens of the same selected cells.
  assert int(pi.sum()) * 2 == int(block.sum())
  assert not np.any(np.asarray(pi) & ~np.asarray(block))
  assert block.shape == pi.shape == (2, 8, 8) and cell == 2


def test_pipeline_keeps_groups_whole_and_carries_looks():
  src = SceneSimulator(64, 40, sensors=("gaofen2_pms", "gaofen1_wfv", "gaofen3_slc",
                                         "gaofen3_amp"), seed=0, co_registered=4)
  ds = pipeline.make_dataset(src, registry=REG, batch_size=8, crop_size=32, max_channels=8,
                             seed=1, keep_index=True)
  for step in (0, 9):  # 9: past the first epoch (16 groups / 2 per batch)
    batch = ds[step]
    g, idx = batch["group"], batch["index"]
    for k in range(0, 8, 4):
      assert len(set(g[k:k + 4].tolist())) == 1 and g[k] >= 0
      assert len(set((idx[k:k + 4] // 4).tolist())) == 1
      # Distinct sensors in a group (4 sensors, groups of 4): every modality once.
      assert sorted(batch["modality"][k:k + 4].tolist()) == [0, 1, 2, 3]
    assert g[0] != g[4]
    want = [REG.get(REG.names()[s]).looks or 0.0 for s in batch["sensor"]]
    np.testing.assert_array_equal(batch["looks"], want)
  with pytest.raises(ValueError, match="multiple of the group size 4"):
    pipeline.make_dataset(src, registry=REG, batch_size=6, crop_size=32, max_channels=8, seed=1)


def test_eval_pipeline_clean_and_label():
  src = SceneSimulator(8, 40, sensors=("gaofen3_amp",), seed=0, nodata_fraction=0.0)
  b = pipeline.make_eval_dataset(src, registry=REG, batch_size=4, crop_size=32, max_channels=8,
                                 keep_clean=True, keep_label=True)[0]
  assert b["clean"].shape == b["raw"].shape and b["label"].shape == (4,)
  assert np.all(b["clean"][..., 0] > 0) and np.all(b["clean"][..., 1:] == 0)
  assert np.all(b["group"] >= 0)


@pytest.mark.parametrize("arg, kinds, sam, contrastive", [
    ("", ("reflectance", "reflectance", "span_complex", "log_intensity"), 1.0, True),
    ("physics=none,contrastive=off", ("pixels",) * 4, 0.0, False),
    ("physics=paper,masking=pimask", ("pixels", "pixels", "span", "pixels"), 0.0, True),
])
def test_config_variants(arg, kinds, sam, contrastive):
  c = load_config("pretrain_tiny:" + arg)
  validate(c)
  assert tuple(c.mim.targets[m] for m in ("opt", "ms", "sar_l1", "sar_l2")) == kinds
  assert c.physics.sam_weight == sam and c.contrastive.enabled == contrastive


@pytest.mark.parametrize("field, value, match", [
    ("mim.masking", "random", "mim.masking='random'"),
    ("physics.sam_weight", -1.0, "physics.sam_weight=-1.0"),
    ("physics.indices", ("NDXX",), "unknown index 'NDXX'"),
    ("mim.targets.sar_l1", "reflectance", "only for modalities"),
    ("data.batch_size", 6, "multiple of data.co_registered=4"),
])
def test_validate_objective_fields(field, value, match):
  c = micro_config(**{field: value})
  with pytest.raises(ConfigError, match=match):
    validate(c)


# ------------------------------------------------------------------------------------------------
# Degenerate tiles on the micro model: one compiled loss+grad, several batches.
# ------------------------------------------------------------------------------------------------


def _batch(rng: np.random.Generator, b: int = 8, size: int = 32) -> dict[str, np.ndarray]:
  """Two co-registered groups of the paper's four sensors, physically plausible values."""
  modality = np.tile(np.arange(4, dtype=np.int32), b // 4)
  names = ("gaofen2_pms", "gaofen1_wfv", "gaofen3_slc", "gaofen3_amp")
  raw = np.zeros((b, size, size, 8), np.float32)
  pixels = np.zeros_like(raw)
  for i, m in enumerate(modality):
    s = REG.get(names[m])
    c = s.num_channels
    if m < 2:
      x = rng.uniform(0.02, 0.4, (size, size, c))
    elif m == 2:
      x = rng.normal(0, 0.2, (size, size, c))
    else:
      x = np.sqrt(rng.gamma(4.0, 0.05 / 4.0, (size, size, c)))
    raw[i, ..., :c] = x
    pixels[i, ..., :c] = s.normalize(x)
  return {"pixels": pixels, "raw": raw, "valid": np.ones((b, size, size), np.float32),
          "modality": modality,
          "sensor": np.asarray([REG.index(names[m]) for m in modality], np.int32),
          "looks": np.asarray([REG.get(names[m]).looks or 0.0 for m in modality], np.float32),
          "group": np.repeat(np.arange(b // 4, dtype=np.int32), 4)}


@pytest.fixture(scope="module")
def loss_and_grad():
  """(batch, mask) -> (loss, metrics, norm of d loss / d (prediction, features, temperature)).

  The encoder runs forward only; the gradient is taken through every loss term down to the
  model's outputs, where a NaN from any term would show (cheap to compile)."""
  c = micro_config()
  model = compiled_model(c)
  obj = objective.Objective.from_config(c, model)

  @nnx.jit
  def forward(model, batch, mask):
    pred, feats, aux = model.forward(batch, mask, train=True)
    return pred, feats, aux, model.contrastive_log_temperature[...]

  @jax.jit
  def terms(outs, aux, batch, mask):
    def f(o):
      return obj.terms(o[0], o[1], aux, batch, mask, o[2])
    (loss, metrics), grads = jax.value_and_grad(f, has_aux=True)(outs)
    metrics.pop("routing")
    return loss, metrics, jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(grads)))

  def run(batch, mask):
    batch = {k: jnp.asarray(v) for k, v in batch.items()}
    pred, feats, aux, log_t = forward(model, batch, mask)
    aux = {"balance_loss": aux["balance_loss"],
           "routing": {k: {"z_loss": r["z_loss"]} for k, r in aux["routing"].items()}}
    return terms((pred, feats, log_t), aux, batch, mask)

  return run


def test_legacy_keywords_give_plain_weights():
  model = nnx.eval_shape(lambda: make_model(micro_config()))
  obj = objective.Objective.legacy(model, mask_ratio=0.6, mask_cell_px=8, balance_weight=0.001)
  assert obj.kinds == ("reflectance", "reflectance", "span_complex", "log_intensity")
  assert (obj.sam_weight, obj.index_weight, obj.contrastive_weight) == (0.0, 0.0, 0.0)
  with pytest.raises(TypeError, match="needs config"):
    simmim_loss(model, {}, jax.random.PRNGKey(0))


def _check_finite(loss, aux, gnorm):
  assert np.isfinite(float(loss)) and np.isfinite(float(gnorm))
  for k, v in aux.items():
    assert np.all(np.isfinite(np.asarray(v))), k


def test_all_terms_active_on_a_normal_batch(loss_and_grad):
  batch = _batch(np.random.default_rng(0))
  mask = jnp.ones((8, 8, 8), bool).at[:, :4].set(False)
  loss, aux, gnorm = loss_and_grad(batch, mask)
  _check_finite(loss, aux, gnorm)
  for k in COUNTS:
    assert float(aux[k]) > 0, k
  assert np.all(np.asarray(aux["mim_pixels_per_modality"]) > 0)
  # Two tiles of SAR-L1 scored phase-invariantly; 6 modality pairs with 2 groups each.
  assert float(aux["sar_l1_complex_tiles"]) == 2 and float(aux["contrastive_pairs"]) == 6


@pytest.mark.parametrize("case", ["nothing_masked", "all_nodata", "zero_power_sar"])
def test_degenerate_tiles_contribute_zero_counted(loss_and_grad, case):
  batch = _batch(np.random.default_rng(1))
  mask = jnp.ones((8, 8, 8), bool)
  if case == "nothing_masked":
    mask = jnp.zeros((8, 8, 8), bool)
  elif case == "all_nodata":
    batch["valid"][:] = 0
    batch["pixels"][:] = 0
    batch["raw"][:] = 0
  else:  # every SAR pixel has zero power (both SAR modalities), the optical tiles are normal
    sar = batch["modality"] >= 2
    batch["raw"][sar] = 0
    batch["pixels"][sar] = 0
  loss, aux, gnorm = loss_and_grad(batch, mask)
  _check_finite(loss, aux, gnorm)
  counts = np.asarray(aux["mim_pixels_per_modality"])
  losses = np.asarray(aux["loss_per_modality"])
  if case == "zero_power_sar":
    assert float(aux["sar_l1_complex_tiles"]) == 0 and float(aux["sar_l1_complex_loss"]) == 0
    np.testing.assert_array_equal(counts[2:], 0)  # span and Gamma NLL drop zero power
    np.testing.assert_array_equal(losses[2:], 0)
    assert counts[0] > 0 and float(aux["spectral_sam_pixels"]) > 0
  else:
    np.testing.assert_array_equal(counts, 0)
    np.testing.assert_array_equal(losses, 0)
    for term, count in zip(TERMS[:3], COUNTS[:3]):
      assert float(aux[term]) == 0 and float(aux[count]) == 0, term
    if case == "all_nodata":  # no data: no embedding takes part in the contrastive term
      assert float(aux["contrastive_loss"]) == 0 and float(aux["contrastive_pairs"]) == 0
