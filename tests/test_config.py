"""Every config imports, validates and builds abstractly; invalid values name their field."""
import glob
import os
import subprocess
import sys

import pytest

from ringmoe_jax.config.load import CONFIG_DIR, load_config
from ringmoe_jax.config.validate import ConfigError, validate
from ringmoe_jax.train.model import abstract_model, count_params

# configs/pruned.py reads a pruned workdir's config.json (its argument): tested in test_prune.py.
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                 if os.path.basename(p) != "pruned.py")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_builds_abstractly(name):
  c = load_config(name)
  validate(c)
  assert count_params(abstract_model(c)) > 0


def test_pretrain_14b_has_the_papers_parameter_count():
  c = load_config("pretrain_14b")
  model = abstract_model(c)
  encoder = count_params(model.encoder)
  assert abs(encoder - 14.7e9) / 14.7e9 < 0.01, encoder  # paper: 14.7B (14.75B by arithmetic)
  assert c.model.embed_dim == 448 and tuple(c.model.depths) == (2, 2, 18, 2)
  assert tuple(c.model.num_heads) == (14, 28, 56, 112) and c.model.window_size == 12


def test_variant_args_and_unknown_arg():
  assert load_config("pretrain_tiny:steps=7,batch=16").train.total_steps == 7
  assert load_config("pretrain_tiny:dense").moe.num_special == 0
  with pytest.raises(ValueError, match="unknown config argument 'nope'"):
    load_config("pretrain_tiny:nope=1")


@pytest.mark.parametrize("field,value,message", [
    ("moe.top_k", 5, r"moe.top_k=5 is larger than moe.num_special=4"),
    ("model.window_size", 5, r"model.window_size=5 does not divide the 16x16 map of stage 0"),
    ("mim.mask_ratio", 1.5, r"mim.mask_ratio=1.5"),
    ("mim.mask_cell", 6, r"mim.mask_cell=6 px must be a multiple of model.patch_size=4"),
    ("model.num_heads", (3, 4, 8, 16), r"model.num_heads\[0\]=3 does not divide"),
    ("optim.schedule_steps", -1, r"optim.schedule_steps=-1 must be >= 0"),
])
def test_invalid_values_name_the_field(field, value, message):
  c = load_config("pretrain_tiny")
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ConfigError, match=message):
    validate(c)


@pytest.mark.parametrize("key,value,message", [
    ("box_classes", (), r"task.box_classes is empty"),
    ("max_boxes", 0, r"task.max_boxes=0 must be >= 1"),
    ("max_detections", 1000, r"task.max_detections=1000 must be in \[1, task.max_candidates"),
    ("nms_iou", 0.0, r"task.nms_iou=0.0 must be in \(0, 1\]"),
    ("score_threshold", 1.0, r"task.score_threshold=1.0 must be in \[0, 1\)"),
])
def test_invalid_detection_fields_name_the_field(key, value, message):
  c = load_config("finetune_detection:boxes=rotated")
  c.task[key] = value
  with pytest.raises(ConfigError, match=message):
    validate(c)


def test_window_larger_than_map_when_shrinking_is_off():
  c = load_config("pretrain_tiny")
  c.model.allow_window_shrink = False
  with pytest.raises(ConfigError, match="larger than the 2x2 map of stage 3"):
    validate(c)


def test_unknown_modality():
  c = load_config("pretrain_tiny")
  c.mim.targets.lidar = "pixels"
  with pytest.raises(ConfigError, match="unknown modality 'lidar'"):
    validate(c)


def test_main_rejects_invalid_override_before_compiling(tmp_path):
  """The entry point applies --config.x=y overrides and fails on validation, naming the field."""
  r = subprocess.run(
      [sys.executable, "-m", "ringmoe_jax.main", "--config=configs/pretrain_tiny.py",
       f"--workdir={tmp_path}", "--config.moe.top_k=9"],
      cwd=os.path.dirname(CONFIG_DIR), capture_output=True, text=True, timeout=120,
      env={**os.environ, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"})
  assert r.returncode != 0
  assert "moe.top_k=9 is larger than moe.num_special=4" in r.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def test_schedule_steps_fixes_the_learning_rate_schedule_whatever_total_steps():
  from ringmoe_jax.train.optim import learning_rate  # pylint: disable=import-outside-toplevel
  c = load_config("pretrain_tiny")
  c.optim.update(warmup_steps=2, schedule_steps=0)
  lr = lambda total: [float(learning_rate(c.optim, 32, total)(s)) for s in range(12)]
  assert lr(12) != lr(40)  # the default follows train.total_steps
  c.optim.schedule_steps = 12
  assert lr(12) == lr(40) and lr(40)[2] > lr(40)[11] > 0
