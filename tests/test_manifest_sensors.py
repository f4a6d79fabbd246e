"""Training sensors from the shard manifests (issue 16, item 2): a user sensor file and a band
subset at ingestion, then data.source='arrayrecord' with data.sensors empty, data.paths as the
output directory or as one shard file; sensor ids kept across a checkpoint (merge_registries)."""
import json
import os

import numpy as np
import pytest
import rasterio
from helpers import micro_config
from rasterio.transform import from_origin

from ringmoe_jax.config.validate import ConfigError, validate
from ringmoe_jax.data import ingest, pipeline, sources
from ringmoe_jax.sensors.registry import (SensorDefinitionError, SensorRegistry,
                                          default_registry, merge_registries)
from ringmoe_jax.train.trainer import build_registry

MY_SAR = {  # an X-band quad-pol detected product described by the user
    "name": "my_sar", "modality": "sar_l2",
    "bands": [{"name": p, "radar_band": "X", "center_frequency_ghz": 9.6, "polarization": p,
               "component": "amplitude"} for p in ("HH", "HV", "VH", "VV")],
    "gsd_m": 3, "product_level": "GRD", "scale": "linear", "mean": [0.3, 0.1, 0.1, 0.3],
    "std": [0.2, 0.05, 0.05, 0.2], "nodata": 0, "looks": 2.0,
}


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
  """`ingest --sensor-file=my_sar.json --sensor=my_sar --bands=HH` of a 4-band GeoTIFF."""
  tmp = tmp_path_factory.mktemp("ingest")
  sensor_file = tmp / "my_sar.json"
  sensor_file.write_text(json.dumps(MY_SAR))
  rng = np.random.default_rng(0)
  data = rng.uniform(0.05, 0.6, (4, 96, 96)).astype(np.float32)
  tif = str(tmp / "sar.tif")
  with rasterio.open(tif, "w", driver="GTiff", width=96, height=96, count=4, dtype="float32",
                     crs="EPSG:32633", transform=from_origin(5e5, 4e6, 3.0, 3.0), nodata=0) as f:
    f.write(data)
  out = tmp / "out"
  rc = ingest.main([f"--sensor-file={sensor_file}", "--sensor=my_sar", "--bands=HH",
                    f"--output={out}", "--size=48", "--stride=48", tif])
  assert rc == 0
  manifest = json.loads((out / "manifest.json").read_text())
  assert [s["name"] for s in manifest["sensors"]] == ["my_sar_hh"]
  return out, os.path.join(out, manifest["shards"][0]["path"])


def _config(paths, **overrides):
  # Capacity dispatch: a smaller train step to compile than the dropless blocked loop.
  return micro_config(**{"data.source": "arrayrecord", "data.sensors": (),
                         "data.paths": tuple(paths), "moe.dispatcher": "capacity", **overrides})


@pytest.mark.parametrize("as_file", [False, True], ids=["directory", "shard_file"])
def test_sensors_from_manifests(ingested, as_file):
  out, shard = ingested
  config = _config([shard if as_file else str(out)])
  validate(config)  # data.sensors may be empty for arrayrecord
  reg = build_registry(config)
  assert reg.names()[:len(default_registry())] == default_registry().names()  # ids unchanged
  assert reg.names()[-1] == "my_sar_hh" and reg.get("my_sar_hh").num_channels == 1
  src = sources.make_source(config.data, reg, seed=0)
  assert src.names == ("sar_l2",) and len(src) == 4
  ds = pipeline.make_dataset(src, registry=reg, batch_size=4, crop_size=32, max_channels=8,
                             seed=0)
  assert set(ds[0]["sensor"].tolist()) == {reg.index("my_sar_hh")}


def test_validate_still_needs_sensors_or_paths():
  validate(micro_config())
  with pytest.raises(ConfigError, match="data.sensors is empty"):
    validate(micro_config(**{"data.sensors": ()}))
  with pytest.raises(ConfigError, match="data.source='arrayrecord' needs data.paths"):
    validate(_config([]))
  with pytest.raises(ConfigError, match="data.source='tfrecord'"):
    validate(micro_config(**{"data.source": "tfrecord"}))


def test_resume_keeps_saved_ids_and_appends_new_sensors(ingested):
  out, _ = ingested
  config = _config([str(out)])
  builtins = default_registry()
  # A checkpoint's registry: another order, a user sensor of its own, and my_sar_hh defined
  # with other statistics (the trained model's) than this run's manifest.
  hh = build_registry(config).get("my_sar_hh").to_dict()
  saved_hh = dict(hh, mean=[0.25], std=[0.15])
  old_user = dict(MY_SAR, name="old_user")
  saved = SensorRegistry.from_dict({"version": 1, "sensors": [
      builtins.get("gaofen3_amp").to_dict(), saved_hh, builtins.get("gaofen2_pms").to_dict(),
      old_user]})
  with pytest.warns(UserWarning, match="'my_sar_hh' is defined differently.*checkpoint's"):
    reg = build_registry(config, saved=saved)
  assert reg.names()[:4] == saved.names()  # saved ids kept
  assert reg.get("my_sar_hh").mean == (0.25,)  # the saved definition wins
  new = [n for n in builtins.names() if n not in saved]
  assert reg.names()[4:] == tuple(new)  # the new ones appended in this run's order
  # Same registry on both sides: no warning, unchanged.
  assert merge_registries(reg, reg) == reg


def test_channel_mismatch_and_bad_sensor_file_are_user_errors(ingested, tmp_path):
  out, _ = ingested
  with pytest.raises(ConfigError, match=r"'my_sar_hh' \(sar_l2\) has 1 channels but "
                     r"model.in_channels.sar_l2 is 2; set --config.model.patch_embed=spectral"):
    build_registry(_config([str(out)], **{"model.in_channels.sar_l2": 2}))
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(dict(MY_SAR, scale="bogus")))
  with pytest.raises(SensorDefinitionError, match=f"{bad}: sensor 'my_sar': field 'scale'"):
    build_registry(micro_config(**{"data.sensor_files": (str(bad),)}))
  with pytest.raises(SensorDefinitionError, match="missing.json: cannot read sensor file"):
    build_registry(micro_config(**{"data.sensor_files": (str(tmp_path / "missing.json"),)}))


def test_ingest_pretrain_linear_probe_with_a_user_band_subset(ingested, tmp_path):
  """Issue 16: GeoTIFF -> ingest (user sensor file, --bands) -> pre-train with data.sensors left
  out -> linear probe of the checkpoint, the sensor's id and band table from the run's registry
  (my_sar_hh is not a built-in: a model built from the built-ins alone has no row for it)."""
  from ringmoe_jax.tools import linear_probe  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  out, _ = ingested
  config = _config([str(out)], **{"model.patch_embed": "spectral", "train.total_steps": 2,
                                  "train.checkpoint_every": 2})
  r = trainer.train(config, str(tmp_path / "run"))
  assert r["step"] == 2 and np.isfinite(r["losses"]).all()
  reg = linear_probe.run_registry(config, str(tmp_path / "run"), 2)
  assert reg.names()[-1] == "my_sar_hh"
  model, _ = linear_probe.load_trained_model(config, str(tmp_path / "run"))
  bands = model.encoder.patch_embed.bands  # one row per registry sensor, the user's included
  assert bands.names == reg.names()
  assert bands.present[reg.index("my_sar_hh")].sum() == 1  # its one (HH) channel
  result = linear_probe.evaluate(config, str(tmp_path / "run"), num_tiles=48)
  assert result["sensors"] == ["my_sar_hh"]
  probe = result["linear_probe"]
  assert set(probe) == {"sar_l2", "mean_accuracy"}, probe
  assert 0.0 <= probe["sar_l2"]["accuracy"] <= 1.0 and probe["sar_l2"]["test"] == 24
