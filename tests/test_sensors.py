"""Sensor registry: plain-data sensors, errors that name things, JSON round trips, the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ringmoe_jax.sensors import modalities
from ringmoe_jax.sensors.registry import (Band, Sensor, SensorRegistry, UnknownSensorError,
                                          default_registry)

REPO = pathlib.Path(__file__).resolve().parents[1]

USER_SENSOR = {
    "name": "sentinel1_grd",
    "modality": "sar_l2",
    "bands": [
        {"name": "VV", "radar_band": "C", "center_frequency_ghz": 5.405, "polarization": "VV",
         "component": "amplitude"},
        {"name": "VH", "radar_band": "C", "center_frequency_ghz": 5.405, "polarization": "VH",
         "component": "amplitude"},
    ],
    "gsd_m": 10,
    "product_level": "GRD",
    "scale": "linear",
    "mean": [0.2, 0.05],
    "std": [0.1, 0.03],
    "nodata": 0,
    "looks": 4.4,
}


def test_builtins_cover_all_modalities_with_paper_channels():
  reg = default_registry()
  assert {s.modality for s in reg} == set(modalities.MODALITIES)
  for s in reg:
    assert s.num_channels == modalities.DEFAULT_CHANNELS[s.modality], s.name
    assert len(s.mean) == len(s.std) == s.num_channels
  assert reg.get("gaofen2_pms").band_names == ("R", "G", "B")
  slc = reg.get("gaofen3_slc")
  assert [(b.polarization, b.component) for b in slc.bands[:4]] == [
      ("HH", "real"), ("HH", "imag"), ("HV", "real"), ("HV", "imag")]
  assert slc.product_level == "SLC" and slc.looks == 1
  wfv = reg.get("gaofen1_wfv")
  assert wfv.bands[3].center_wavelength_nm == 830 and wfv.bands[3].bandwidth_nm == 120
  assert wfv.nearest_band(660) == 2 and wfv.nearest_band(850) == 3


def test_unknown_sensor_error_names_sensor_and_registered():
  reg = default_registry()
  with pytest.raises(UnknownSensorError) as e:
    reg.get("nope")
  assert isinstance(e.value, KeyError) and isinstance(e.value, ValueError)
  assert str(e.value) == ("unknown sensor 'nope'; registered: gaofen2_pms, gaofen1_wfv, "
                          "gaofen3_slc, gaofen3_amp")
  with pytest.raises(KeyError, match="nope"):
    reg.index("nope")


def test_index_is_registration_order_and_overwrite_keeps_it():
  reg = default_registry()
  assert [reg.index(n) for n in reg.names()] == [0, 1, 2, 3]
  pms = reg.get("gaofen2_pms")
  with pytest.raises(ValueError, match="already registered"):
    reg.register(pms)
  reg.register(Sensor(**{**pms.__dict__, "gsd_m": 1.0}), overwrite=True)
  assert reg.index("gaofen2_pms") == 0 and reg.get("gaofen2_pms").gsd_m == 1.0


def test_sensor_json_round_trip():
  for s in default_registry():
    text = json.dumps(s.to_dict())
    assert Sensor.from_dict(json.loads(text)) == s


def test_registry_json_round_trip():
  reg = default_registry()
  reg.register(Sensor.from_dict(USER_SENSOR))
  restored = SensorRegistry.from_json(reg.to_json())
  assert restored == reg
  assert restored.names() == reg.names()
  assert restored.index("sentinel1_grd") == 4


def test_user_sensor_from_json_file(tmp_path):
  path = tmp_path / "sensors.json"
  path.write_text(json.dumps([USER_SENSOR]))
  reg = default_registry()
  assert reg.load_file(path) == ["sentinel1_grd"]
  s = reg.get("sentinel1_grd")
  assert s.num_channels == 2 and s.modality == "sar_l2" and s.looks == 4.4
  assert reg.index("sentinel1_grd") == 4  # after the built-ins: their ids do not move


def test_user_sensor_from_yaml_file(tmp_path):
  yaml = pytest.importorskip("yaml")
  path = tmp_path / "sensors.yaml"
  path.write_text(yaml.safe_dump(USER_SENSOR))
  reg = default_registry()
  reg.load_file(path)
  assert reg.get("sentinel1_grd").band_names == ("VV", "VH")


def test_from_dict_bad_modality_names_sensor_and_field():
  with pytest.raises(ValueError) as e:
    Sensor.from_dict({**USER_SENSOR, "modality": "lidar"})
  msg = str(e.value)
  assert "sentinel1_grd" in msg and "'modality'" in msg and "lidar" in msg


@pytest.mark.parametrize("change, field", [
    ({"mean": [0.1]}, "mean"),
    ({"std": [0.1, 0.0]}, "std"),
    ({"scale": "percent"}, "scale"),
    ({"gsd_m": -1}, "gsd_m"),
    ({"colour": "red"}, "colour"),
    ({"bands": [{**USER_SENSOR["bands"][0], "polarization": "XX"}, USER_SENSOR["bands"][1]]},
     "polarization"),
])
def test_from_dict_bad_fields_are_named(change, field):
  with pytest.raises(ValueError, match=f"sentinel1_grd.*{field}"):
    Sensor.from_dict({**USER_SENSOR, **change})


def test_missing_field_and_band_kind_mismatch():
  bad = dict(USER_SENSOR)
  del bad["scale"]
  with pytest.raises(ValueError, match="'scale': missing"):
    Sensor.from_dict(bad)
  with pytest.raises(ValueError, match="no wavelength"):
    Sensor.from_dict({**USER_SENSOR, "modality": "ms"})
  with pytest.raises(ValueError, match="either optical"):
    Band("x", center_wavelength_nm=500, bandwidth_nm=10, radar_band="C")


def test_normalize_per_channel():
  s = default_registry().get("gaofen1_wfv")
  pixels = np.array(s.mean, np.float32) + np.array(s.std, np.float32) * np.arange(4)
  out = s.normalize(pixels[None, None])
  assert out.dtype == np.float32 and out.shape == (1, 1, 4)
  np.testing.assert_allclose(out[0, 0], np.arange(4), atol=1e-5)
  np.testing.assert_allclose(s.denormalize(out), pixels[None, None], rtol=1e-6)
  with pytest.raises(ValueError, match=r"gaofen1_wfv.*\(\.\.\., 4\)"):
    s.normalize(np.zeros((2, 2, 3)))


def _run_cli(*args):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  out = subprocess.run([sys.executable, "-m", "ringmoe_jax.sensors", *args], cwd=REPO, env=env,
                       capture_output=True, text=True, check=True, timeout=60)
  return out.stdout.splitlines()


def test_cli_prints_one_line_per_sensor(tmp_path):
  reg = default_registry()
  lines = _run_cli()
  assert len(lines) == len(reg)
  for line, s in zip(lines, reg):
    assert line.split()[0] == s.name
    assert s.modality in line.split() and f"{s.num_channels}ch" in line
  path = tmp_path / "user.json"
  path.write_text(json.dumps(USER_SENSOR))
  lines = _run_cli("--file", str(path))
  assert [line.split()[0] for line in lines] == [*reg.names(), "sentinel1_grd"]
