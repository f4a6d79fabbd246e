"""Configuration and input errors through the command lines (issue 16, item 3): one
`error: <what, where, what was expected>` line on stderr, exit status 2, no traceback; an
unexpected exception keeps its traceback. Each case fails before anything compiles."""
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _run(module, *args, timeout=240):
  env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
  return subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


def _assert_user_error(p, *named):
  lines = p.stderr.strip().splitlines()
  assert p.returncode == 2, p.stderr[-3000:]
  assert "Traceback" not in p.stderr, p.stderr[-3000:]
  assert lines and lines[-1].startswith("error: "), p.stderr[-3000:]
  for text in named:
    assert text in lines[-1], lines[-1]


TINY = "configs/pretrain_tiny.py:steps=2,batch=8"


@pytest.mark.parametrize("args,named", [
    # Unknown sensor in data.sensors (the trainer's registry check, before any compilation).
    ([f"--config={TINY}", "--config.data.sensors=('gaofen2_pms','nope')"],
     ["data.sensors", "unknown sensor 'nope'", "registered: gaofen2_pms"]),
    # A field value that validate() refuses.
    ([f"--config={TINY}", "--config.mim.mask_ratio=1.5"], ["mim.mask_ratio=1.5", "(0, 1]"]),
    # A bad config variant (raised by get_config while absl parses --config).
    (["--config=configs/pretrain_tiny.py:physics=bogus"],
     ["--config=configs/pretrain_tiny.py:physics=bogus", "physics='bogus'", "all, paper, none"]),
    # An override of a field the config does not have.
    ([f"--config={TINY}", "--config.train.totl_steps=3"], ["--config.train.totl_steps"]),
], ids=["unknown_sensor", "bad_field_value", "bad_variant", "unknown_field"])
def test_main(tmp_path, args, named):
  _assert_user_error(_run("ringmoe_jax.main", *args, f"--workdir={tmp_path / 'w'}"), *named)


def test_main_bug_in_config_keeps_traceback(tmp_path):
  config = tmp_path / "broken.py"
  config.write_text("def get_config(arg=None):\n  return {}['missing_key']\n")
  p = _run("ringmoe_jax.main", f"--config={config}", f"--workdir={tmp_path / 'w'}")
  assert p.returncode == 1 and "Traceback" in p.stderr and "missing_key" in p.stderr


def test_ingest_missing_input(tmp_path):
  missing = tmp_path / "missing.tif"
  p = _run("ringmoe_jax.data.ingest", "--sensor=gaofen2_pms", f"--output={tmp_path / 'o'}",
           missing)
  _assert_user_error(p, str(missing), "no such file")


def test_tool_bad_variant_and_sensor_cli_bad_file(tmp_path):
  _assert_user_error(_run("ringmoe_jax.tools.inspect", "--config=configs/pretrain_14b.py:size=9b"),
                     "size='9b'", "14b, base, small")
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps({"name": "x", "modality": "radar", "gsd_m": 1, "scale": "linear",
                             "product_level": "GRD", "mean": [0], "std": [1], "bands": [
                                 {"name": "HH", "radar_band": "C", "polarization": "HH",
                                  "center_frequency_ghz": 5.4, "component": "amplitude"}]}))
  _assert_user_error(_run("ringmoe_jax.sensors", "--file", bad),
                     str(bad), "sensor 'x': field 'modality'", "sar_l2")
