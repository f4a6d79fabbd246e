"""Fine-tuning modes, layer-wise lr decay and Convpass adapters."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from helpers import micro_finetune_config
from ringmoe_jax.errors import UserError
from ringmoe_jax.models.swin import EncoderConfig, RingMoEEncoder
from ringmoe_jax.moe.layer import MoEConfig
from ringmoe_jax.tasks import get_task
from ringmoe_jax.train import finetune_optim as fo
from ringmoe_jax.train.setup import abstract_task_model


def _abstract_params(task="segmentation", arg=""):
  c = micro_finetune_config(task, arg)
  m = abstract_task_model(c, get_task(c))
  p = nnx.state(m, nnx.Param).to_pure_dict()
  return c, jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), p)


def _flat(tree):
  return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_layer_scales_of_scanned_pairs_tails_and_merges():
  # micro depths (1, 1, 2, 1): N = 5 blocks; stage 2 is one scanned pair (blocks 3, 4).
  _, p = _abstract_params()
  s = _flat(fo.layer_scales(p, (1, 1, 2, 1), 0.5))
  assert s["['encoder']['patch_embed']['kernels'][0]"] == 0.5 ** 6
  assert s["['encoder']['stages'][0]['tail'][0]['attn']['qkv']['kernel']"] == 0.5 ** 5
  assert s["['encoder']['merges'][0]['reduction']['kernel']"] == 0.5 ** 5  # with block 1
  np.testing.assert_array_equal(s["['encoder']['stages'][2]['pairs']['even']['attn']['qkv']['kernel']"].ravel(), [0.5 ** 3])
  np.testing.assert_array_equal(s["['encoder']['stages'][2]['pairs']['odd']['attn']['qkv']['kernel']"].ravel(), [0.5 ** 2])
  assert s["['encoder']['stages'][3]['tail'][0]['attn']['qkv']['kernel']"] == 0.5
  assert s["['head']['cls']['kernel']"] == 1.0
  # A stage of depth 4 scans 2 pairs: blocks (1, 3) even, (2, 4) odd, one vector per leaf.
  leaf = jax.ShapeDtypeStruct((2, 8, 8), jnp.float32)
  tree = {"encoder": {"stages": {0: {"pairs": {"even": {"w": leaf}, "odd": {"w": leaf}},
                                     "tail": {}}},
                      "final_norm": {"scale": jax.ShapeDtypeStruct((8,), jnp.float32)}}}
  s = fo.layer_scales(tree, (4,), 0.5)
  np.testing.assert_array_equal(s["encoder"]["stages"][0]["pairs"]["even"]["w"].ravel(),
                                [0.5 ** 4, 0.5 ** 2])
  np.testing.assert_array_equal(s["encoder"]["stages"][0]["pairs"]["odd"]["w"].ravel(),
                                [0.5 ** 3, 0.5 ** 1])
  assert s["encoder"]["stages"][0]["pairs"]["odd"]["w"].shape == (2, 1, 1)
  assert s["encoder"]["final_norm"]["scale"] == 1.0


@pytest.mark.parametrize("mode", ["frozen", "adapter", "full"])
def test_modes_update_exactly_their_leaves(mode):
  c, p = _abstract_params(arg=f"mode={mode}")
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), p)
  tx = fo.make_finetune_optimizer(c.optim, p, mode=mode, layer_decay=0.9,
                                  depths=tuple(c.model.depths), batch_size=8, total_steps=10)
  state = tx.init(params)
  new = params
  for _ in range(3):
    grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), x.dtype), params)
    upd, state = tx.update(grads, state, new)
    new = optax.apply_updates(new, upd)
  mask = _flat(fo.trainable_mask(p, mode))
  before, after = _flat(params), _flat(new)
  for k, trains in mask.items():
    changed = not np.array_equal(np.asarray(before[k]), np.asarray(after[k]))
    assert changed == trains, (mode, k)
    if mode == "adapter" and k.startswith("['encoder']"):
      assert trains == ("adapter" in k), k
  if mode != "full":  # frozen leaves get no AdamW moments
    assert len(jax.tree.leaves(state)) < len(jax.tree.leaves(params))
  with pytest.raises(UserError, match="finetune.mode"):
    fo.trainable_mask(p, "partial")


def test_adapter_mode_trains_under_10_percent_of_the_tiny_model():
  from ringmoe_jax.config.load import load_config  # the real tiny size, not the micro one
  c = load_config("finetune_segmentation:mode=adapter")
  m = abstract_task_model(c, get_task(c))
  p = nnx.state(m, nnx.Param).to_pure_dict()
  trainable, total = fo.count_trainable(p, fo.trainable_mask(p, "adapter"))
  print(f"adapter mode: {trainable} / {total} = {trainable / total:.4f}")
  assert 0 < trainable / total < 0.10


def test_fresh_adapters_leave_the_encoder_function_unchanged():
  kw = dict(img_size=32, patch_size=4, embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4),
            window_size=4, cpb_hidden=16)
  moe = MoEConfig(num_special=2, num_collab=2, num_shared=1, num_modalities=4)
  plain = nnx.jit(lambda: RingMoEEncoder(EncoderConfig(**kw), moe, rngs=nnx.Rngs(0)))()
  adapted = nnx.jit(lambda: RingMoEEncoder(EncoderConfig(**kw, adapter_dim=4), moe,
                                           rngs=nnx.Rngs(0)))()
  # Copy the plain encoder's parameters into the adapted one (adapters keep their init).
  src = nnx.state(plain, nnx.Param).to_pure_dict()
  dst = nnx.state(adapted, nnx.Param)
  flat_src = _flat(src)
  flat = {k: flat_src.get(k, v) for k, v in _flat(dst.to_pure_dict()).items()}
  assert any("adapter" in k for k in flat) and len(flat) > len(flat_src)
  treedef = jax.tree.structure(dst.to_pure_dict())
  nnx.replace_by_pure_dict(dst, jax.tree.unflatten(treedef, list(flat.values())))
  nnx.update(adapted, dst)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 32, 32, 8))
  mod = jnp.asarray([0, 3], jnp.int32)
  a, _ = plain(x, mod, train=False)
  b, _ = adapted(x, mod, train=False)
  for u, v in zip(a, b):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
