r"""Frozen-feature evaluations of a pre-training run: linear probe and SAR-L2 denoising.

  python -m ringmoe_jax.tools.linear_probe --config=configs/pretrain_tiny.py --workdir=DIR

Axes: B batch, H/W pixels, h/w last-stage grid, Cl last-stage channels, F probe features,
K classes.

Linear probe: land-cover scene classes (the simulator's "label_class", the dominant class of the
tile; 7 classes) from tiles the run never saw (another simulator seed, one sensor per tile),
centre-cropped, encoded with no mask by the frozen encoder, features = mean-pooled tokens of
every stage (concatenated, F = sum of stage dims), standardised on the training half; a
multinomial logistic regression (L2, full-batch Adam) per modality; accuracy on the other half.

SAR-L2 denoising ratio: on SAR-L2 tiles with the simulator's noise-free backscatter ("clean"),
the masked-reconstruction forward pass (the run's masking); over masked valid pixels,
  ratio = mean |ln sigma_pred - ln sigma_clean| / mean |ln I_observed - ln sigma_clean|,
< 1 when the decoder's prediction is closer to the noise-free backscatter than the speckled
input. sigma_pred = exp(`Objective.log_backscatter(prediction)`) for target 'log_intensity', or the denormalised amplitude
squared for 'pixels' (plain SimMIM). The prediction never sees the masked pixel itself; its
Bayesian combination with that pixel's speckled value (a blind-spot denoiser, see
objectives/speckle.py) is reported as `posterior_ratio`, next to the same estimate from the
observation alone (`observation_only_ratio`).
"""
from __future__ import annotations

import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import ndimage
from flax import nnx

from ringmoe_jax.data import pipeline as pipeline_lib
from ringmoe_jax.data.simulator import CLASSES, SceneSimulator
from ringmoe_jax.errors import parse_absl_flags, run_cli
from ringmoe_jax.objectives import objective as objective_lib
from ringmoe_jax.objectives import sensor_tables
from ringmoe_jax.objectives import speckle
from ringmoe_jax.sensors.modalities import MODALITIES
from ringmoe_jax.train.checkpoint import Checkpointer, open_run
from ringmoe_jax.train.model import input_channels, make_model

# A separate simulator seed: probe tiles are scenes the run never trained on.
PROBE_SEED = 10_000


def load_trained_model(config, workdir: str, step: int | None = None, registry=None):
  """The SimMIM model of `config` with the parameters of the run's checkpoint (latest: None),
  its sensor tables from `registry` (None: the run's, `run_registry`)."""
  ckpt, step, _ = open_run(workdir, step=step, expected="a pre-training run")
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  restored = ckpt.manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore()))
  ckpt.close()
  if registry is None:
    registry = run_registry(config, workdir, int(step))
  model = make_model(config, registry=registry)
  state = nnx.state(model, nnx.Param)
  params = jax.tree.map(np.asarray, restored.state["params"])
  nnx.replace_by_pure_dict(state, params)
  nnx.update(model, state)
  return model, int(step)


def probe_sensors(config, registry) -> tuple[str, ...]:
  """The sensors the run trained on: data.sensors, or those of its shards (arrayrecord with
  data.sensors empty: the manifests' sensors, e.g. a user sensor's band subset)."""
  sensors = tuple(config.data.sensors)
  if not sensors and config.data.get("source") == "arrayrecord" and config.data.get("paths"):
    from ringmoe_jax.data import sources  # pylint: disable=import-outside-toplevel
    sensors = sources.sensors_in(config.data.paths, registry)
  return sensors


def run_registry(config, workdir: str, step: int):
  """The run's sensor registry: the checkpoint's (its ids), plus this config's new sensors."""
  import os  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train import init_from  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.trainer import build_registry  # pylint: disable=import-outside-toplevel
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), max_to_keep=1, async_save=False)
  meta = ckpt.read_meta(step)
  ckpt.close()
  return build_registry(config, saved=init_from.saved_registry(meta))


def probe_batches(config, num_tiles: int, *, batch_size: int = 32, seed: int = PROBE_SEED,
                  registry=None):
  """Evaluation batches (numpy) with "label" and "clean" from unseen simulated scenes of the
  run's sensors (`probe_sensors`), rendered with `registry` (default: built-ins + sensor files)."""
  reg = sensor_tables.training_registry(config) if registry is None else registry
  sensors = probe_sensors(config, reg)
  src = SceneSimulator(num_tiles, int(config.data.tile_size), sensors=sensors, registry=reg,
                       seed=seed, nodata_fraction=0.0)
  max_channels = input_channels(config, reg)
  ds = pipeline_lib.make_eval_dataset(src, registry=reg, batch_size=batch_size,
                                      crop_size=int(config.model.img_size),
                                      max_channels=max_channels, keep_clean=True,
                                      keep_label=True)
  return [ds[i] for i in range(len(ds))]


@nnx.jit
def _features(model, pixels, modality, valid, sensor, channels=None):
  feats, _ = model.encoder(pixels, modality, sensor=sensor, mask=None, valid=valid, train=False,
                           channels=channels)
  pooled = [objective_lib.pooled_embeddings(f, valid)[0] for f in feats]
  return jnp.concatenate(pooled, axis=-1)


def features(model, batches) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """-> features (N, F), labels (N,), modality (N,)."""
  xs, ys, ms = [], [], []
  for b in batches:
    xs.append(np.asarray(_features(model, jnp.asarray(b["pixels"]), jnp.asarray(b["modality"]),
                                   jnp.asarray(b["valid"]), jnp.asarray(b["sensor"]),
                                   None if "channels" not in b else jnp.asarray(b["channels"]))))
    ys.append(b["label"])
    ms.append(b["modality"])
  return np.concatenate(xs), np.concatenate(ys), np.concatenate(ms)


def logistic_regression(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                        num_classes: int, *, l2: float = 1e-3, steps: int = 500,
                        lr: float = 0.05) -> np.ndarray:
  """Multinomial logistic regression on standardised features -> test predictions (N_test,)."""
  mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
  xtr = jnp.asarray((x_train - mu) / sd)
  xte = jnp.asarray((x_test - mu) / sd)
  ytr = jnp.asarray(y_train)
  params = {"w": jnp.zeros((xtr.shape[1], num_classes)), "b": jnp.zeros((num_classes,))}
  tx = optax.adam(lr)

  def loss(p):
    logits = xtr @ p["w"] + p["b"]
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, ytr).mean()
    return ce + l2 * jnp.sum(jnp.square(p["w"]))

  @jax.jit
  def fit(p):
    def body(carry, _):
      p, s = carry
      g = jax.grad(loss)(p)
      u, s = tx.update(g, s, p)
      return (optax.apply_updates(p, u), s), None
    (p, _), _ = jax.lax.scan(body, (p, tx.init(p)), None, length=steps)
    return p

  p = fit(params)
  return np.asarray(jnp.argmax(xte @ p["w"] + p["b"], axis=-1))


def linear_probe(model, batches) -> dict[str, Any]:
  """Accuracy per modality (first half of each modality's tiles train, second half test)."""
  x, y, mod = features(model, batches)
  out: dict[str, Any] = {}
  accs = []
  for m, name in enumerate(MODALITIES):
    idx = np.flatnonzero(mod == m)
    if len(idx) < 8:
      continue
    tr, te = idx[:len(idx) // 2], idx[len(idx) // 2:]
    pred = logistic_regression(x[tr], y[tr], x[te], len(CLASSES))
    acc = float(np.mean(pred == y[te]))
    majority = float(np.mean(y[te] == np.bincount(y[tr], minlength=len(CLASSES)).argmax()))
    out[name] = {"accuracy": acc, "majority_baseline": majority, "train": len(tr),
                 "test": len(te)}
    accs.append(acc)
  out["mean_accuracy"] = float(np.mean(accs)) if accs else float("nan")
  return out


def sar_l2_denoise_ratio(model, config, batches, *, seed: int = 0,
                         registry=None) -> dict[str, float]:
  """See the module docstring; over the SAR-L2 tiles of `batches`.

  Also reports, over the same pixels, the ratio of
    posterior_ratio         the Bayesian combination of the prediction with the pixel's own
                            observation (objectives/speckle.py; prior shape fitted without clean
                            data, reported as posterior_prior_width / _shift);
    observation_only_ratio  the same estimate without the prediction (ln I with the speckle's
                            log bias removed): what the posterior must beat for the decoder to
                            have added anything;
    local_mean_ratio        `local_mean`, a box average of the seen pixels around each masked
                            pixel: how far plain context averaging gets on these scenes.
  """
  m = MODALITIES.index("sar_l2")
  kind = model.target_kinds[m]
  c = int(config.model.in_channels["sar_l2"])
  obj = objective_lib.Objective.from_config(config, model)
  reg = sensor_tables.training_registry(config) if registry is None else registry
  tables = obj.tables

  @nnx.jit
  def predict(model, batch, key):
    b, hh, ww, _ = batch["pixels"].shape
    p = obj.patch_size
    mask = obj.draw_mask(key, b, (hh // p, ww // p))
    pred, _, _ = model.forward(batch, mask, train=False)
    return pred[..., :c], jnp.repeat(jnp.repeat(mask, p, 1), p, 2)

  window = obj.mask_cell_px + 1  # reaches into the seen pixels around a masked cell
  cols = {k: [] for k in ("log_pred", "obs", "log_clean", "looks", "ref")}
  for i, b in enumerate(batches):
    keep = b["modality"] == m
    if not keep.any():
      continue
    jb = {k: jnp.asarray(v) for k, v in b.items()}
    pred, mask = predict(model, jb, jax.random.PRNGKey(seed + i))
    pred, mask = np.asarray(pred, np.float64), np.asarray(mask)
    power = np.asarray(sensor_tables.take_fill(tables.sar_power, jnp.asarray(b["sensor"]),
                                               sensor_tables.AMPLITUDE))
    obs = np.asarray(sensor_tables.to_intensity(jnp.asarray(b["raw"][..., :c]),
                                                jnp.asarray(power)), np.float64)
    clean = np.asarray(sensor_tables.to_intensity(jnp.asarray(b["clean"][..., :c]),
                                                  jnp.asarray(power)), np.float64)
    if kind == "log_intensity":
      log_pred = np.asarray(obj.log_backscatter(jnp.asarray(pred), jnp.asarray(b["sensor"])),
                            np.float64)
    else:  # normalised sensor values -> physical -> intensity
      phys = np.stack([reg.get(reg.names()[s]).denormalize(pred[j])
                       if keep[j] and s < len(reg) else pred[j]
                       for j, s in enumerate(b["sensor"])])
      log_pred = np.log(np.maximum(np.asarray(sensor_tables.to_intensity(
          jnp.asarray(phys, jnp.float32), jnp.asarray(power)), np.float64), 1e-8))
    w = (keep[:, None, None] & mask & (b["valid"] > 0))[..., None] & (obs > 0) & (clean > 0)
    w = np.broadcast_to(w, obs.shape)
    seen = (~mask & (b["valid"] > 0))[..., None] & (obs > 0)
    looks = np.where(b["looks"] > 0, b["looks"], obj.default_looks)[:, None, None, None]
    for k, v in (("log_pred", log_pred), ("obs", obs),
                 ("log_clean", np.log(np.where(w, clean, 1.0))),
                 ("looks", np.broadcast_to(looks, obs.shape)),
                 ("ref", np.log(local_mean(obs, seen, window)))):
      cols[k].append(v[w])
  if not cols["obs"]:
    return {"pixels": 0.0, "ratio": float("nan")}
  v = {k: np.concatenate(x) for k, x in cols.items()}
  err = lambda log_est: float(np.mean(np.abs(log_est - v["log_clean"])))
  err_in = err(np.log(v["obs"]))
  # The posterior's prior (width, offset) is fitted from observed intensities only, on a fixed
  # subsample (the fit evaluates 3 x 142 prior settings x 121 grid points per pixel).
  log_pred, obs, looks = (jnp.asarray(v[k], jnp.float32) for k in ("log_pred", "obs", "looks"))
  sub = np.random.default_rng(seed).permutation(obs.shape[0])[:20_000]
  width, shift = speckle.fit_prior(log_pred[sub], obs[sub], looks[sub])
  post = np.asarray(jax.jit(speckle.posterior_log_backscatter)(log_pred, obs, looks, width,
                                                                 shift), np.float64)
  alone = np.asarray(speckle.observation_log_backscatter(obs, looks), np.float64)
  return {"pixels": float(v["obs"].size), "pred_log_error": err(v["log_pred"]),
          "input_log_error": err_in, "ratio": err(v["log_pred"]) / err_in,
          "posterior_ratio": err(post) / err_in, "posterior_prior_width": float(width),
          "posterior_prior_shift": float(shift),
          "observation_only_ratio": err(alone) / err_in,
          "local_mean_ratio": err(v["ref"]) / err_in, "local_mean_window": window}


def local_mean(obs: np.ndarray, seen: np.ndarray, window: int) -> np.ndarray:
  """A non-learned inpainting reference: at every pixel, the mean observed intensity of the
  seen (unmasked, valid) pixels in a window x window box, or of the whole tile where the box
  holds none. obs, seen: (B, H, W, C) -> (B, H, W, C), > 0 wherever the tile has data."""
  box = lambda x: ndimage.uniform_filter(x, size=(1, window, window, 1), mode="constant")
  num, den = box(np.where(seen, obs, 0.0)), box(seen.astype(np.float64))
  tile = (np.sum(np.where(seen, obs, 0.0), axis=(1, 2), keepdims=True)
          / np.maximum(np.sum(seen, axis=(1, 2), keepdims=True), 1))
  return np.where(den > 1e-6, num / np.maximum(den, 1e-6), np.maximum(tile, 1e-12))


def evaluate(config, workdir: str, *, num_tiles: int = 1024) -> dict[str, Any]:
  model, step = load_trained_model(config, workdir)
  reg = run_registry(config, workdir, step)
  batches = probe_batches(config, num_tiles, registry=reg)
  return {"workdir": workdir, "step": step, "sensors": list(probe_sensors(config, reg)),
          "linear_probe": linear_probe(model, batches),
          "sar_l2_denoise": sar_l2_denoise_ratio(model, config, batches, registry=reg)}


def main(argv):
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  f = flags.FLAGS
  # A bad config or workdir: one 'error: ...' line, exit status 2 (ringmoe_jax/errors.py).
  result = run_cli(lambda: evaluate(f.config, f.workdir, num_tiles=f.num_tiles),
                   also=(FileNotFoundError,))
  print(json.dumps(result, indent=1))


if __name__ == "__main__":
  from absl import app, flags  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "The run's config (get_config(arg)).")
  flags.DEFINE_string("workdir", None, "The run's workdir (checkpoints/).")
  flags.DEFINE_integer("num_tiles", 1024, "Probe tiles (half train, half test per modality).")
  flags.mark_flags_as_required(["config", "workdir"])
  app.run(main, flags_parser=parse_absl_flags)
