"""Load `configs/NAME.py[:ARG]` without absl flags (tools, tests, notebooks)."""
from __future__ import annotations

import importlib.util
import os

import ml_collections

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "configs")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """'configs/pretrain_tiny.py:steps=10' (or just 'pretrain_tiny:steps=10') -> ConfigDict."""
  path, _, arg = spec.partition(":")
  if not path.endswith(".py"):
    path = os.path.join(CONFIG_DIR, path + ".py")
  if not os.path.exists(path):
    raise FileNotFoundError(f"config file {path!r} does not exist")
  mod_spec = importlib.util.spec_from_file_location(
      "ringmoe_config_" + os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(mod_spec)
  mod_spec.loader.exec_module(module)
  return module.get_config(arg or None)
