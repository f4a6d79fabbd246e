"""Scene classification head on the pooled encoder vector (single- or multi-label).

Axes: B batch, D pooled width (8C, the last stage), K classes.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ringmoe_jax.heads.layers import F32, layer_norm, linear


class ClassifierHead(nnx.Module):
  """LayerNorm -> dropout -> Linear: pooled (B, D) -> logits (B, K), float32.

  The classifier is zero-initialised (kernel and bias), as DeiT / BEiT-style fine-tuning does
  (MAE uses std 2e-5, i.e. nearly zero): the first logits are all 0, so the loss starts at
  exactly log K (softmax) or log 2 per label (sigmoid), and the gradient that reaches the
  pre-trained encoder at step 0 (kernel^T x dlogits) is 0, so a random head cannot push the
  encoder before the head itself has learnt something. The kernel still gets a gradient
  (features x dlogits), so training starts at once. The LayerNorm puts the pooled vector of any
  backbone on one scale, which a linear probe also needs.
  """

  def __init__(self, dim: int, num_classes: int, *, dropout: float = 0.0, rngs: nnx.Rngs):
    self.norm = layer_norm(dim, rngs=rngs, name="embed")
    self.dropout = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else None
    self.fc = linear(dim, num_classes, rngs=rngs, names=("embed", None),
                     kernel_init=nnx.initializers.zeros)

  def __call__(self, pooled: jax.Array, *, train: bool = False) -> jax.Array:
    """pooled (B, D) -> logits (B, K). train=True applies dropout (needs the 'dropout' rng)."""
    x = self.norm(pooled.astype(F32))
    if self.dropout is not None:
      x = self.dropout(x, deterministic=not train)
    return self.fc(x).astype(jnp.float32)
