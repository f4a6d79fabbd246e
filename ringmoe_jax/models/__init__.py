"""Backbone: SwinV2 with a hierarchical MoE FFN in every block.

attention.py    window attention (cosine, log-spaced CPB, shifted-window masks).
patch_embed.py  per-modality patch embeddings.
swin.py         blocks, stages, patch merging, the multi-level encoder.
"""

from flax import nnx as _nnx

# Parameters carry *logical* axis names ('embed', 'exp', ...), which are not mesh axes: Flax's
# eager sharding would try to place them at creation and fail outside a mesh. Placement happens
# afterwards, from the rules in parallel/sharding.py (see train/state.py), so it is off here.
_nnx.use_eager_sharding(False)
