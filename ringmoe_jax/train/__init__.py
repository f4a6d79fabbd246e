"""Training: model/optimizer state, the jitted step, checkpoints, metric logs, the loop."""
