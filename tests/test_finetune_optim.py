"""Fine-tuning modes, layer-wise lr decay and Convpass adapters."""
import functools

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


@functools.lru_cache(maxsize=None)
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


# segmentation: head-side keys 'head' and 'fusion'; full mode on the classifier (fewer leaves:
# AdamW over every leaf dominates the compile time).
@pytest.mark.parametrize("mode,task", [("frozen", "segmentation"), ("adapter", "segmentation"),
                                       ("full", "classification")])
def test_modes_update_exactly_their_leaves(mode, task):
  c, p = _abstract_params(task, f"mode={mode}")
  tx = fo.make_finetune_optimizer(c.optim, p, mode=mode, layer_decay=0.9,
                                  depths=tuple(c.model.depths), batch_size=8, total_steps=10)
  # Shapes only: the optimizer state of abstract params, and no moments for frozen leaves.
  abstract_state = jax.eval_shape(tx.init, p)
  if mode != "full":
    assert len(jax.tree.leaves(abstract_state)) < len(jax.tree.leaves(p))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: rng.normal(size=x.shape).astype(x.dtype), p)
  grads = jax.tree.map(lambda x: rng.normal(size=(3,) + x.shape).astype(x.dtype), p)

  @jax.jit  # one program (op by op, each optax op would compile on its own)
  def run(params, grads):
    def step(carry, g):
      params, state = carry
      upd, state = tx.update(g, state, params)
      return (optax.apply_updates(params, upd), state), None
    (params, state), _ = jax.lax.scan(step, (params, tx.init(params)), grads)  # 3 updates
    return params, state

  new, state = run(params, grads)
  assert jax.tree.structure(state) == jax.tree.structure(abstract_state)
  mask = _flat(fo.trainable_mask(p, mode))
  before, after = _flat(params), _flat(new)
  for k, trains in mask.items():
    changed = not np.array_equal(np.asarray(before[k]), np.asarray(after[k]))
    assert changed == trains, (mode, k)  # frozen leaves: bit-identical
    if mode == "adapter" and k.startswith("['encoder']"):
      assert trains == ("adapter" in k), k
  assert any(mask.values()) and (mode == "full") == all(mask.values())
  with pytest.raises(UserError, match="finetune.mode"):
    fo.trainable_mask(p, "partial")


def test_head_warmup_holds_the_encoder_for_k_steps_and_leaves_the_head_unchanged():
  c = micro_finetune_config("classification")
  rng = np.random.default_rng(0)
  params = {"encoder": {"patch_embed": {"w": rng.normal(size=(4, 3)).astype(np.float32)}},
            "head": {"cls": {"kernel": rng.normal(size=(3, 2)).astype(np.float32)}}}
  grads = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), params)
           for _ in range(4)]

  def run(k, mode="full"):
    tx = fo.make_finetune_optimizer(c.optim, params, mode=mode, layer_decay=1.0, depths=(1,),
                                    batch_size=8, total_steps=10, head_warmup_steps=k)
    p, state, out = params, tx.init(params), []
    for g in grads:
      upd, state = tx.update(g, state, p)
      p = optax.apply_updates(p, upd)
      out.append(p)
    return out

  gated, plain = run(2), run(0)
  enc = lambda p: np.asarray(p["encoder"]["patch_embed"]["w"])
  head = lambda p: np.asarray(p["head"]["cls"]["kernel"])
  for i in (0, 1):  # steps 1, 2: the encoder is bit-identical, the head moves as without a gate
    np.testing.assert_array_equal(enc(gated[i]), enc(params))
  for i in range(4):
    np.testing.assert_array_equal(head(gated[i]), head(plain[i]))
  assert not np.array_equal(enc(gated[2]), enc(params))  # step 3: the encoder trains
  # (The warmup-cosine lr is 0 at step 1: step 2 is the first that moves anything.)
  assert not np.array_equal(enc(plain[1]), enc(params))
  assert not np.array_equal(head(gated[1]), head(params))
  with pytest.raises(UserError, match="head_warmup_steps"):
    run(-1)


def test_adapter_mode_trains_under_10_percent_of_the_tiny_model():
  from ringmoe_jax.config.load import load_config  # the real tiny size, not the micro one
  c = load_config("finetune_segmentation:mode=adapter")
  m = abstract_task_model(c, get_task(c))
  p = nnx.state(m, nnx.Param).to_pure_dict()
  trainable, total = fo.count_trainable(p, fo.trainable_mask(p, "adapter"))
  print(f"adapter mode: {trainable} / {total} = {trainable / total:.4f}")
  assert 0 < trainable / total < 0.10


def test_fresh_adapters_leave_the_encoder_function_unchanged():
  # Two stages: a scanned pair (blocks 1, 2) + a merge, then an unscanned tail block.
  kw = dict(img_size=16, patch_size=4, embed_dim=8, depths=(2, 1), num_heads=(1, 2),
            window_size=4, cpb_hidden=8, in_channels=(3, 4, 8, 1))
  moe = MoEConfig(num_special=2, num_collab=2, num_shared=1, num_modalities=4)
  adapted = nnx.jit(lambda: RingMoEEncoder(EncoderConfig(**kw, adapter_dim=4), moe,
                                           rngs=nnx.Rngs(0)))()
  # The encoder without adapters (abstract: built from shapes), given the adapted one's other
  # parameters.
  plain = nnx.eval_shape(lambda: RingMoEEncoder(EncoderConfig(**kw), moe, rngs=nnx.Rngs(0)))
  graphdef, plain_state = nnx.split(plain, nnx.Param)
  src = _flat(nnx.state(adapted, nnx.Param).to_pure_dict())
  dst = plain_state.to_pure_dict()
  keys = list(_flat(dst))
  assert len(src) > len(keys) and all("adapter" not in k for k in keys)
  assert {k for k in src if "adapter" not in k} == set(keys)
  nnx.replace_by_pure_dict(plain_state, jax.tree.unflatten(jax.tree.structure(dst),
                                                           [src[k] for k in keys]))
  plain = nnx.merge(graphdef, plain_state)
  # Of the kernels only the up-projection's starts at zero; every adapter Param carries
  # logical axis names (sharding presets place it).
  for k, v in src.items():
    if "adapter" in k and "kernel" in k:
      assert (not np.any(np.asarray(v))) == ("adapter_up" in k), k
  for path, var in nnx.to_flat_state(nnx.state(adapted, nnx.Param)):
    if any("adapter" in str(p) for p in path):
      names = var.get_metadata().get("out_sharding")
      assert names is not None and len(names) == var.get_value().ndim, path
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 8))
  mod = jnp.asarray([0, 3], jnp.int32)
  encode = nnx.jit(lambda m, x, mod: m(x, mod, train=False)[0])
  for u, v in zip(encode(plain, x, mod), encode(adapted, x, mod)):
    np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
