"""Sensor registry: plain-data sensors, errors that name things, JSON round trips, the CLI."""
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from ringmoe_jax.sensors import modalities
from ringmoe_jax.sensors.builtin import BUILTIN_SENSORS
from ringmoe_jax.sensors.registry import (Band, Sensor, SensorRegistry, UnknownSensorError,
                                          default_registry)

REPO = pathlib.Path(__file__).resolve().parents[1]

USER_SENSOR = {
    "name": "my_s1_grd",
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
  assert reg.names()[:4] == ("gaofen2_pms", "gaofen1_wfv", "gaofen3_slc", "gaofen3_amp")
  for s in list(reg)[:4]:
    assert s.num_channels == modalities.DEFAULT_CHANNELS[s.modality], s.name
  for s in reg:
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
  assert str(e.value) == f"unknown sensor 'nope'; registered: {', '.join(reg.names())}"
  with pytest.raises(KeyError, match="nope"):
    reg.index("nope")


def test_index_is_registration_order_and_overwrite_keeps_it():
  reg = default_registry()
  assert [reg.index(n) for n in reg.names()] == list(range(len(reg)))
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
  assert restored.index("my_s1_grd") == len(BUILTIN_SENSORS)


def test_user_sensor_from_json_file(tmp_path):
  path = tmp_path / "sensors.json"
  path.write_text(json.dumps([USER_SENSOR]))
  reg = default_registry()
  assert reg.load_file(path) == ["my_s1_grd"]
  s = reg.get("my_s1_grd")
  assert s.num_channels == 2 and s.modality == "sar_l2" and s.looks == 4.4
  assert reg.index("my_s1_grd") == len(BUILTIN_SENSORS)  # after the built-ins: their ids do not move


def test_user_sensor_from_yaml_file(tmp_path):
  yaml = pytest.importorskip("yaml")
  path = tmp_path / "sensors.yaml"
  path.write_text(yaml.safe_dump(USER_SENSOR))
  reg = default_registry()
  reg.load_file(path)
  assert reg.get("my_s1_grd").band_names == ("VV", "VH")


def test_from_dict_bad_modality_names_sensor_and_field():
  with pytest.raises(ValueError) as e:
    Sensor.from_dict({**USER_SENSOR, "modality": "lidar"})
  msg = str(e.value)
  assert "my_s1_grd" in msg and "'modality'" in msg and "lidar" in msg


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
  with pytest.raises(ValueError, match=f"my_s1_grd.*{field}"):
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
  assert [line.split()[0] for line in lines] == [*reg.names(), "my_s1_grd"]


# ---------------------------------------------------------------- built-ins vs published tables

NEW_BUILTINS = ("gaofen6_wfv", "jilin1", "sentinel1_slc", "sentinel1_grd", "sentinel2_l1c",
                "sentinel2_l2a", "landsat8_oli", "landsat9_oli", "worldview2", "worldview3")


def test_issue4_builtins_exist_with_physical_descriptions():
  reg = default_registry()
  for name in NEW_BUILTINS:
    s = reg.get(name)
    assert s.description and s.gsd_m > 0
  s1 = reg.get("sentinel1_grd")
  assert s1.modality == "sar_l2" and s1.product_level == "GRD" and s1.looks == 4.4
  assert {(b.radar_band, b.center_frequency_ghz, b.polarization, b.component)
          for b in s1.bands} == {("C", 5.405, "VV", "amplitude"), ("C", 5.405, "VH", "amplitude")}
  slc = reg.get("sentinel1_slc")
  assert slc.modality == "sar_l1" and [b.component for b in slc.bands] == ["real", "imag"] * 2
  s2 = reg.get("sentinel2_l2a")
  assert s2.modality == "ms" and s2.num_channels == 12 and "B10" not in s2.band_names
  assert reg.get("sentinel2_l1c").num_channels == 13
  np.testing.assert_allclose(s2.to_physical(np.full((1, 12), 3000, np.uint16)), 0.2, atol=1e-6)
  oli = reg.get("landsat8_oli")
  np.testing.assert_allclose(oli.to_physical(np.full((1, 7), 10000, np.uint16)), 0.075,
                             atol=1e-6)
  assert reg.get("jilin1").modality == reg.get("gaofen2_pms").modality == "opt"


def test_builtins_match_third_party_table_and_spyndex():
  import csv
  import spyndex
  table = {}
  with open(REPO / "third_party/sensor_specs/bands.csv", encoding="utf-8") as f:
    for row in csv.DictReader(f):
      table[(row["sensor"], row["band"])] = row
  reg = default_registry()
  n = 0
  for s in reg:
    for b in s.bands:
      row = table[(s.name, b.name)]
      if b.is_optical:
        assert float(row["center_wavelength_nm"]) == pytest.approx(b.center_wavelength_nm)
        assert float(row["bandwidth_nm"]) == pytest.approx(b.bandwidth_nm)
      else:
        assert float(row["center_frequency_ghz"]) == b.center_frequency_ghz
        assert row["polarization"] == b.polarization
      n += 1
  assert n == len(table)
  platforms = {"sentinel2_l1c": "sentinel2a", "sentinel2_l2a": "sentinel2a",
               "landsat8_oli": "landsat8", "landsat9_oli": "landsat9", "worldview2": "wv2",
               "worldview3": "wv3"}
  # spyndex's own table (its Python objects do not expose every platform as an attribute).
  bands_json = pathlib.Path(spyndex.__file__).parent / "data" / "bands.json"
  spy = json.loads(bands_json.read_text())
  checked = 0
  for name, platform in platforms.items():
    s = reg.get(name)
    for band in spy.values():
      spec = band["platforms"].get(platform)
      if spec is None or spec["band"] not in s.band_names:
        continue
      ours = s.bands[s.band_names.index(spec["band"])]
      assert ours.center_wavelength_nm == pytest.approx(spec["wavelength"]), (name, spec)
      assert ours.bandwidth_nm == pytest.approx(spec["bandwidth"]), (name, spec)
      checked += 1
  assert checked == 12 + 12 + 7 + 7 + 6 + 6  # every band spyndex has for these platforms
