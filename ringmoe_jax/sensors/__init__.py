"""Sensors and modalities as plain data.

modalities.py  the four modalities (opt, ms, sar_l1, sar_l2) and their ids.
registry.py    Band / Sensor descriptions, the ordered SensorRegistry and the built-in sensors.
"""
from ringmoe_jax.sensors.modalities import DEFAULT_CHANNELS, MODALITIES, modality_id
from ringmoe_jax.sensors.registry import (BUILTIN_SENSORS, Band, Sensor, SensorRegistry,
                                          UnknownSensorError, default_registry)

__all__ = ["DEFAULT_CHANNELS", "MODALITIES", "modality_id", "BUILTIN_SENSORS", "Band", "Sensor",
           "SensorRegistry", "UnknownSensorError", "default_registry"]
