"""Downstream heads: plain NNX modules on the encoder's feature list (float32).

The encoder gives 4 levels (B, H/4, W/4, C), (B, H/8, W/8, 2C), (B, H/16, W/16, 4C),
(B, H/32, W/32, 8C) and a pooled (B, 8C) vector; each head takes `dims`, the 4 widths.

layers.py          conv / linear with logical names, ConvNormAct (channel LayerNorm), resize,
                   LightFPN (the 4 levels summed on the stride-4 grid).
classification.py  ClassifierHead: pooled (B, D) -> logits (B, K).
upernet.py         UperNetHead: levels -> segmentation logits (B, H/4, W/4, K); adaptive
                   average pooling; upsample_logits.
fusion.py          ViewFusion: per-level (B, V, h, w, C) -> (B, h, w, C) (optical + SAR).
change.py          ChangeHead (BIT): before / after levels -> change logits (B, H/4, W/4, 2).
detection.py       DetectionHead (CenterNet style on the stride-4 FPN): class heatmaps (B, H/4,
                   W/4, K) + box parameters; targets, focal loss, peak picking, box decoding.
bins.py            AdaptiveBinsHead: levels -> depth (B, H/4, W/4), bin centres (B, NB);
                   silog_loss, l1_loss.

Parameters carry logical names ('embed', 'mlp', 'heads', None) and are created by the caller
under `nnx.use_eager_sharding(False)` (or a mesh), like the encoder's.
"""
from ringmoe_jax.heads.bins import AdaptiveBinsHead, l1_loss, silog_loss
from ringmoe_jax.heads.change import ChangeHead
from ringmoe_jax.heads.classification import ClassifierHead
from ringmoe_jax.heads.detection import DetectionHead
from ringmoe_jax.heads.fusion import ViewFusion
from ringmoe_jax.heads.upernet import UperNetHead, adaptive_avg_pool, upsample_logits

__all__ = ["AdaptiveBinsHead", "ChangeHead", "ClassifierHead", "DetectionHead", "UperNetHead", "ViewFusion",
           "adaptive_avg_pool", "l1_loss", "silog_loss", "upsample_logits"]
