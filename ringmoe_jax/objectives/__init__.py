"""Pre-training objectives: masking, decoders, targets and losses (SimMIM; physics terms later)."""
