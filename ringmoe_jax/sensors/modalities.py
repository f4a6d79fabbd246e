"""The four RingMoE modalities, as plain data.

Every tile carries a sensor tag; every sensor belongs to exactly one modality. Modality ids are
the positions in `MODALITIES`; they index the per-modality patch embeddings, routers and decoders.
"""
from __future__ import annotations

MODALITIES: tuple[str, ...] = ("opt", "ms", "sar_l1", "sar_l2")

# Input channels per modality in the paper (sar_l1: HH, HV, VH, VV as real+imag pairs;
# sar_l2: one detected amplitude channel).
DEFAULT_CHANNELS: dict[str, int] = {"opt": 3, "ms": 4, "sar_l1": 8, "sar_l2": 1}


def modality_id(name: str) -> int:
  """Index of modality `name` in MODALITIES; raises ValueError naming the valid choices."""
  try:
    return MODALITIES.index(name)
  except ValueError:
    raise ValueError(
        f"unknown modality {name!r}; expected one of {', '.join(MODALITIES)}") from None
