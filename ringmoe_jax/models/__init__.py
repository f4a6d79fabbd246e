"""Backbone: SwinV2 with a hierarchical MoE FFN in every block.

attention.py    window attention (cosine, log-spaced CPB, shifted-window masks).
patch_embed.py  per-modality patch embeddings.
swin.py         blocks, stages, patch merging, the multi-level encoder.
"""
