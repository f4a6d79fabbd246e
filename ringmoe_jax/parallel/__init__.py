"""Placement: the device mesh and the logical-axis -> mesh-axis rules."""
