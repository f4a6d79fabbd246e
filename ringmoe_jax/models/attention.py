"""SwinV2 window attention (Liu et al. 2022, "Swin Transformer V2").

Pure helpers for partitioning a feature map into windows, the SwinV2 position
tables and the shifted-window mask, plus the `WindowAttentionV2` NNX module
(cosine attention with a learnable, clamped logit scale and a continuous
position bias) and `windowed_attention`, which runs it over a whole map.

Axis letters used in shape comments:
  B   batch
  H   feature-map height (tokens)
  W   feature-map width (tokens)
  C   channels (embedding dim)
  ws  window side; N = ws * ws tokens per window
  nW  windows per image, (H // ws) * (W // ws)
  h   attention heads; d = C // h channels per head
  T   entries of the relative-position table, (2 * ws - 1) ** 2
"""

import functools
import math
from typing import Optional

from flax import nnx
from flax.typing import Dtype, Initializer
import jax
import jax.numpy as jnp
import numpy as np

# Swin initialises every Linear with trunc_normal(std=0.02). Callers may pass
# e.g. nnx.with_partitioning(default_kernel_init, names) later for sharding.
default_kernel_init = nnx.initializers.truncated_normal(stddev=0.02)

# Standard Swin value for masked logits. Not -inf so a fully masked row (which
# cannot occur for a valid shift, but could for a user mask) stays finite.
MASK_VALUE = -100.0

_NORM_EPS = 1e-2


# ----------------------------------------------------------------------------
# Window partitioning.
# ----------------------------------------------------------------------------


def window_partition(x, ws: int):
  """Splits a feature map into non-overlapping windows.

  Args:
    x: (B, H, W, C) array (numpy or jax); H and W divisible by ws.
    ws: window side.

  Returns:
    (B * nW, ws * ws, C); windows in row-major order over the map (all windows
    of image 0 first), tokens row-major inside each window.
  """
  b, h, w, c = x.shape
  assert h % ws == 0 and w % ws == 0, (
      f"window_partition: map {h}x{w} is not divisible by window size {ws}")
  x = x.reshape(b, h // ws, ws, w // ws, ws, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, H/ws, W/ws, ws, ws, C)
  return x.reshape(b * (h // ws) * (w // ws), ws * ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
  """Inverse of `window_partition`.

  Args:
    windows: (B * nW, ws * ws, C).
    ws: window side.
    h: map height, divisible by ws.
    w: map width, divisible by ws.

  Returns:
    (B, H, W, C).
  """
  assert h % ws == 0 and w % ws == 0, (
      f"window_reverse: map {h}x{w} is not divisible by window size {ws}")
  nh, nw = h // ws, w // ws
  c = windows.shape[-1]
  assert windows.shape[0] % (nh * nw) == 0, (
      f"window_reverse: {windows.shape[0]} windows is not a multiple of the "
      f"{nh * nw} windows of a {h}x{w} map")
  b = windows.shape[0] // (nh * nw)
  x = windows.reshape(b, nh, nw, ws, ws, c)
  x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, H/ws, ws, W/ws, ws, C)
  return x.reshape(b, h, w, c)


def effective_window(h: int, w: int, ws: int, shift: int) -> tuple[int, int]:
  """Standard Swin rule: a window no smaller than the map covers all of it.

  If min(H, W) <= ws the window shrinks to min(H, W) and the shift is dropped
  (shifting a single window only wraps tokens around). The attention module
  must then be built with the returned window size.

  Returns:
    (ws, shift) to use.
  """
  if min(h, w) <= ws:
    return min(h, w), 0
  return ws, shift


# ----------------------------------------------------------------------------
# Constant tables (numpy; built once per window size).
# ----------------------------------------------------------------------------


def relative_position_index(ws: int) -> np.ndarray:
  """Swin index of each token pair's offset into the (2ws-1)^2 offset table.

  Returns:
    (N, N) int32; entry [i, j] = (dy + ws - 1) * (2ws - 1) + (dx + ws - 1)
    where (dy, dx) = pos(i) - pos(j).
  """
  coords = np.stack(np.meshgrid(np.arange(ws), np.arange(ws), indexing="ij"))
  coords = coords.reshape(2, -1)  # (2, N)
  rel = coords[:, :, None] - coords[:, None, :]  # (2, N, N)
  rel = rel.transpose(1, 2, 0) + (ws - 1)  # (N, N, 2), offsets in [0, 2ws-2]
  return (rel[..., 0] * (2 * ws - 1) + rel[..., 1]).astype(np.int32)


def relative_coords_table(ws: int, pretrained_ws: int = 0) -> np.ndarray:
  """SwinV2 log-spaced relative coordinates, the input of the position MLP.

  Offsets are normalised to [-1, 1] by (pretrained_ws - 1) if given (so a
  model fine-tuned at a larger window extrapolates smoothly) else (ws - 1),
  scaled by 8, then mapped by sign(x) * log2(|x| + 1) / log2(8); values
  therefore lie within +-log2(9) / log2(8) ~= 1.057 (as in the official code).

  Returns:
    (2ws-1, 2ws-1, 2) float32; [a, b] holds the (dy, dx) coordinate of offset
    (a - ws + 1, b - ws + 1).
  """
  span = np.arange(-(ws - 1), ws, dtype=np.float64)
  table = np.stack(np.meshgrid(span, span, indexing="ij"), axis=-1)
  denom = (pretrained_ws if pretrained_ws > 0 else ws) - 1
  if ws == 1:
    # Only the zero offset exists; avoid 0 / 0.
    return np.zeros((1, 1, 2), np.float32)
  if denom <= 0:
    raise ValueError(
        f"pretrained_window_size={pretrained_ws} cannot normalise offsets of "
        f"window size {ws}")
  table = table / denom * 8.0
  table = np.sign(table) * np.log2(np.abs(table) + 1.0) / np.log2(8.0)
  return table.astype(np.float32)


def shifted_window_mask(h: int, w: int, ws: int,
                        shift: int) -> Optional[np.ndarray]:
  """Attention mask for shifted windows (standard Swin img_mask).

  After rolling the map by -shift, a window at the bottom/right edge holds
  tokens that were not neighbours in the original image; they must not attend
  to each other.

  Returns:
    None if shift == 0, else (nW, N, N) float32: 0 where tokens i and j of a
    window come from the same region of the shifted map, MASK_VALUE otherwise.
  """
  if shift == 0:
    return None
  assert 0 < shift < ws, f"shift {shift} must lie in (0, window size {ws})"
  img_mask = np.zeros((1, h, w, 1), np.float32)
  slices = (slice(0, -ws), slice(-ws, -shift), slice(-shift, None))
  label = 0
  for hs in slices:
    for wsl in slices:
      img_mask[:, hs, wsl, :] = label
      label += 1
  win = window_partition(img_mask, ws)[..., 0]  # (nW, N)
  diff = win[:, None, :] - win[:, :, None]  # (nW, N, N)
  return np.where(diff != 0, MASK_VALUE, 0.0).astype(np.float32)


# Read-only cached copies: the tables are constants, baked into compiled code.
@functools.lru_cache(maxsize=None)
def _cached(fn, *args) -> Optional[np.ndarray]:
  out = fn(*args)
  if out is not None:
    out.setflags(write=False)
  return out


# ----------------------------------------------------------------------------
# Module.
# ----------------------------------------------------------------------------


def _l2_normalize(x, eps: float = _NORM_EPS):
  """x / sqrt(||x||^2 + eps^2) along the last axis: cosine attention's normalisation.

  Smooth, with a gradient bounded by 1/eps. torch's F.normalize (x / max(||x||, 1e-12), as in
  SwinV2) has gradient 1e12 near x = 0, and near-zero q / k do occur (constant or nodata
  patches, the mask token at init): one such token then dominates the global gradient norm
  and clipping scales every other update down by orders of magnitude. For |x| >= 0.1 (typical
  |q| per head is ~0.5-5) the result differs from x / ||x|| by < 0.5%.
  """
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(sq + eps * eps)


class WindowAttentionV2(nnx.Module):
  """SwinV2 multi-head window self-attention.

  Cosine attention with a learnable per-head temperature (clamped at 100) and
  a continuous position bias: a small MLP maps log-spaced relative
  coordinates to per-head biases, squashed by 16 * sigmoid.

  qkv has no bias of its own; as in the paper, learnable `q_bias` and `v_bias`
  are added and the key bias is fixed at zero (the BEiT/Swin convention: in
  dot-product attention a key bias only shifts each query's logits by a
  constant, which softmax cancels).

  The constant tables (`relative_position_index`, `relative_coords_table`) are
  read-only numpy arrays exposed as attributes but computed from the window
  size on access, so they stay out of `nnx.state` (no checkpointing, no
  optimiser, no sharding) and compile to constants under jit.
  """

  def __init__(self,
               dim: int,
               num_heads: int,
               window_size: int,
               *,
               qkv_bias: bool = True,
               pretrained_window_size: int = 0,
               cpb_hidden: int = 512,
               dtype: Dtype = jnp.float32,
               param_dtype: Dtype = jnp.float32,
               kernel_init: Initializer = default_kernel_init,
               rngs: nnx.Rngs):
    assert dim % num_heads == 0, (
        f"dim {dim} is not divisible by num_heads {num_heads}")
    self.dim = dim
    self.num_heads = num_heads
    self.window_size = window_size
    self.pretrained_window_size = pretrained_window_size
    self.dtype = dtype

    def linear(din, dout, use_bias, names):
      # Logical axis names ('embed', 'heads') let the sharding rules place the projections;
      # the CPB MLP is tiny and stays replicated (names None).
      return nnx.Linear(din, dout, use_bias=use_bias, dtype=dtype, param_dtype=param_dtype,
                        kernel_init=nnx.with_partitioning(kernel_init, names),
                        bias_init=nnx.with_partitioning(nnx.initializers.zeros, names[1:]),
                        rngs=rngs)
    self.qkv = linear(dim, 3 * dim, False, ("embed", "heads"))
    if qkv_bias:
      self.q_bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("heads",))
      self.v_bias = nnx.Param(jnp.zeros((dim,), param_dtype), out_sharding=("heads",))
    else:
      self.q_bias = None
      self.v_bias = None
    # Temperature is a log; init 10 as in the paper.
    self.logit_scale = nnx.Param(
        jnp.full((num_heads, 1, 1), math.log(10.0), param_dtype))
    self.cpb_fc1 = linear(2, cpb_hidden, True, (None, None))
    self.cpb_fc2 = linear(cpb_hidden, num_heads, False, (None, None))
    self.proj = linear(dim, dim, True, ("heads", "embed"))

  @property
  def relative_position_index(self) -> np.ndarray:
    """(N, N) int32, read-only."""
    return _cached(relative_position_index, self.window_size)

  @property
  def relative_coords_table(self) -> np.ndarray:
    """(2ws-1, 2ws-1, 2) float32, read-only."""
    return _cached(relative_coords_table, self.window_size,
                   self.pretrained_window_size)

  def position_bias(self) -> jax.Array:
    """Continuous position bias, (h, N, N) float32, in (0, 16)."""
    n = self.window_size * self.window_size
    coords = jnp.asarray(self.relative_coords_table).reshape(-1, 2)  # (T, 2)
    table = self.cpb_fc2(jax.nn.relu(self.cpb_fc1(coords)))  # (T, h)
    idx = self.relative_position_index.reshape(-1)
    bias = table[idx].reshape(n, n, self.num_heads).transpose(2, 0, 1)
    return 16.0 * jax.nn.sigmoid(bias.astype(jnp.float32))

  def __call__(self, x: jax.Array, mask=None) -> jax.Array:
    """Attention inside each window.

    Args:
      x: (B * nW, N, C) tokens, N = window_size ** 2.
      mask: (nW, N, N) additive mask shared by every image, or None.

    Returns:
      (B * nW, N, C) in `dtype`.
    """
    bw, n, c = x.shape
    h = self.num_heads
    assert n == self.window_size ** 2, (
        f"{n} tokens per window, expected {self.window_size}^2")
    assert c == self.dim, f"{c} channels, expected {self.dim}"

    qkv = self.qkv(x)  # (B*nW, N, 3C)
    if self.q_bias is not None:
      bias = jnp.concatenate([self.q_bias[...],
                              jnp.zeros_like(self.q_bias[...]),
                              self.v_bias[...]])
      qkv = qkv + bias.astype(qkv.dtype)
    qkv = qkv.reshape(bw, n, 3, h, c // h).transpose(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]  # each (B*nW, h, N, d)

    # Cosine similarity; normalise in float32 so bf16 norms do not drift.
    q = _l2_normalize(q.astype(jnp.float32)).astype(self.dtype)
    k = _l2_normalize(k.astype(jnp.float32)).astype(self.dtype)
    logits = jnp.einsum("bhnd,bhmd->bhnm", q, k,
                        preferred_element_type=jnp.float32)
    # Clamp at 100 so the temperature cannot run away (SwinV2 sec. 3.2).
    scale = jnp.exp(jnp.minimum(self.logit_scale[...].astype(jnp.float32),
                                math.log(100.0)))
    logits = logits * scale + self.position_bias()  # (B*nW, h, N, N)

    if mask is not None:
      nw = mask.shape[0]
      assert bw % nw == 0, f"{bw} windows is not a multiple of mask's {nw}"
      logits = logits.reshape(bw // nw, nw, h, n, n)
      logits = logits + jnp.asarray(mask, jnp.float32)[None, :, None]
      logits = logits.reshape(bw, h, n, n)

    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    out = jnp.einsum("bhnm,bhmd->bnhd", attn, v.astype(self.dtype))
    return self.proj(out.reshape(bw, n, c))


def windowed_attention(attn: WindowAttentionV2, x: jax.Array, ws: int,
                       shift: int) -> jax.Array:
  """(Shifted-)window attention over a whole feature map.

  The caller picks (ws, shift), normally via `effective_window` (if the map is
  not larger than the window, the window shrinks to the map and the shift is
  dropped); `attn` must have been built with that window size.

  Args:
    attn: module with attn.window_size == ws.
    x: (B, H, W, C); H and W divisible by ws.
    ws: window side.
    shift: cyclic shift in [0, ws).

  Returns:
    (B, H, W, C).
  """
  _, h, w, _ = x.shape
  assert ws == attn.window_size, (
      f"window size {ws} differs from the module's {attn.window_size}")
  if shift > 0:
    x = jnp.roll(x, (-shift, -shift), axis=(1, 2))
  mask = _cached(shifted_window_mask, h, w, ws, shift)
  y = attn(window_partition(x, ws), mask)  # (B*nW, N, C)
  y = window_reverse(y, ws, h, w)
  if shift > 0:
    y = jnp.roll(y, (shift, shift), axis=(1, 2))
  return y
