"""The encoder routes by sensor tag, masks as configured, and exposes multi-level features."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import compiled_model, micro_config
from flax import nnx

from ringmoe_jax.objectives import masking


class _Jitted:
  """encode(pixels, modality), compiled once per input shape."""

  def __init__(self, model):
    self.encoder = nnx.jit(lambda m, px, mod: m.encoder(px, mod, train=False))
    self.model = model

  def __call__(self, px, mod):
    return self.encoder(self.model, px, mod)


@pytest.fixture(scope="module")
def encode():
  c = micro_config()
  c.moe.eval_capacity_factor = 100.0  # nothing dropped: outputs depend on the tile alone
  c.moe.dispatcher = "capacity"
  return _Jitted(compiled_model(c))


def _batch(b=8, size=32, seed=0, modality=None):
  rng = np.random.default_rng(seed)
  mod = np.asarray(modality if modality is not None else rng.integers(0, 4, b), np.int32)
  return (jnp.asarray(rng.normal(size=(b, size, size, 8)), jnp.float32), jnp.asarray(mod))


def test_multi_level_features(encode):
  px, mod = _batch()
  feats, aux = encode(px, mod)
  assert [f.shape for f in feats] == [(8, 8, 8, 16), (8, 4, 4, 32), (8, 2, 2, 64), (8, 1, 1, 128)]
  assert aux["routing"]["special"]["tokens_per_expert"].shape == (5, 16)  # 5 blocks, 4x4 experts


def test_modality_comes_from_the_tag_not_the_position(encode):
  px, mod = _batch()
  perm = jnp.asarray([3, 1, 7, 0, 5, 2, 6, 4])
  f1, _ = encode(px, mod)
  f2, _ = encode(px[perm], mod[perm])
  np.testing.assert_allclose(f1[-1][perm], f2[-1], rtol=1e-4, atol=1e-5)
  # A tile's features do not depend on the rest of the batch (any mix of modalities works).
  f_alone, _ = encode(px[2:3], mod[2:3])
  np.testing.assert_allclose(f1[-1][2:3], f_alone[-1], rtol=1e-4, atol=1e-5)
  # The same pixels under another sensor tag give other features.
  f_other, _ = encode(px[2:3], (mod[2:3] + 1) % 4)
  assert not np.allclose(f_alone[-1], f_other[-1], atol=1e-3)


def test_tokens_reach_only_their_own_modalitys_special_experts(encode):
  # Batch of 8, the shape `encode` is already compiled for (a batch of 4 would compile again).
  px, _ = _batch(b=8, modality=[2] * 8)
  _, aux = encode(px, jnp.full((8,), 2, jnp.int32))
  counts = np.asarray(aux["routing"]["special"]["tokens_per_expert"])  # (blocks, 16)
  assert counts[:, 8:12].sum() > 0
  assert counts[:, :8].sum() == 0 and counts[:, 12:].sum() == 0


def test_padded_channels_are_ignored(encode):
  # Batch of 8 (its first 2 tiles are those of b=2): the shape `encode` is compiled for.
  px, _ = _batch(b=8, modality=[0] * 8)
  mod = jnp.zeros((8,), jnp.int32)
  noisy = px.at[..., 3:].set(123.0)  # an optical tile has 3 channels; the rest is padding
  np.testing.assert_allclose(encode(px, mod)[0][-1],
                             encode(noisy, mod)[0][-1], rtol=1e-5)


@pytest.mark.parametrize("img,cell,ratio", [(192, 8, 0.6), (64, 4, 0.6), (32, 2, 0.5)])
def test_mask_ratio(img, cell, ratio):
  grid = img // 4
  m = np.asarray(jax.jit(masking.block_mask, static_argnums=(1, 2, 3, 4))(
      jax.random.PRNGKey(1), 16, (grid, grid), cell, ratio))
  cells = (grid // cell) ** 2
  want = round(ratio * cells) / cells
  np.testing.assert_allclose(m.reshape(16, -1).mean(axis=1), want)  # exact, every tile
  # Cells are masked whole: each cell block is all-True or all-False.
  blocks = m.reshape(16, grid // cell, cell, grid // cell, cell).transpose(0, 1, 3, 2, 4)
  per = blocks.reshape(16, cells, cell * cell).mean(-1)
  assert set(np.unique(per)) <= {0.0, 1.0}
  # Different tiles get different masks.
  assert len({m[i].tobytes() for i in range(16)}) > 1
