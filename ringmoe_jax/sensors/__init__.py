"""Sensors and modalities as plain data.

modalities.py  the four modalities (opt, ms, sar_l1, sar_l2) and their ids.
registry.py    Band / Sensor descriptions and validation, the ordered SensorRegistry.
builtin.py     the built-in sensors (paper four first: ids 0-3) and default_registry().
"""
from ringmoe_jax.sensors.modalities import DEFAULT_CHANNELS, MODALITIES, modality_id
from ringmoe_jax.sensors.builtin import BUILTIN_SENSORS
from ringmoe_jax.sensors.registry import (Band, Sensor, SensorRegistry,
                                          UnknownSensorError, default_registry)

__all__ = ["DEFAULT_CHANNELS", "MODALITIES", "modality_id", "BUILTIN_SENSORS", "Band", "Sensor",
           "SensorRegistry", "UnknownSensorError", "default_registry"]
