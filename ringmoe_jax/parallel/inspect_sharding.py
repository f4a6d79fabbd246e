"""The partition spec of every parameter under a sharding preset, as printable plain data.

Used by the golden sharding files in tests/golden/ (regenerate with
`python -m ringmoe_jax.parallel.inspect_sharding --write`) and for reading a config's layout
before renting a pod:  python -m ringmoe_jax.parallel.inspect_sharding --config=pretrain_14b
"""
from __future__ import annotations

import argparse
import os

import jax
from flax import nnx
from jax.sharding import AbstractMesh

from ringmoe_jax.parallel.mesh import MESH_AXES
from ringmoe_jax.parallel.sharding import PRESETS, logical_to_spec

# A 512-chip layout per preset (the paper trained on 512 accelerators): every axis a preset
# uses has size > 1, so a rule that silently loses its axis shows up as a diff.
GOLDEN_MESHES: dict[str, tuple[int, int, int, int]] = {
    "dp": (512, 1, 1, 1),
    "fsdp": (8, 64, 1, 1),
    "fsdp_expert": (4, 32, 4, 1),
    "fsdp_expert_tensor": (2, 32, 4, 2),
}
GOLDEN_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), "tests", "golden")


def param_specs(model_or_abstract, preset: str, mesh_shape=None) -> dict[str, str]:
  """{'encoder/stages/0/0/moe/special/w1': "PartitionSpec('expert', 'fsdp', None)", ...}."""
  mesh = AbstractMesh(tuple(mesh_shape or GOLDEN_MESHES[preset]), MESH_AXES)
  state = nnx.state(model_or_abstract, nnx.Param)
  out = {}
  for path, var in jax.tree_util.tree_leaves_with_path(
      state, is_leaf=lambda x: isinstance(x, nnx.Variable)):
    names = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
    key = "/".join(str(getattr(p, "key", getattr(p, "idx", p))) for p in path)
    out[key] = f"{tuple(var.shape)} {logical_to_spec(names, var.shape, PRESETS[preset], mesh)}"
  return dict(sorted(out.items()))


def golden_text(model_or_abstract, preset: str) -> str:
  specs = param_specs(model_or_abstract, preset)
  header = (f"# pretrain_14b parameters under preset {preset!r}, mesh "
            f"{dict(zip(MESH_AXES, GOLDEN_MESHES[preset]))}\n"
            "# regenerate: python -m ringmoe_jax.parallel.inspect_sharding --write\n")
  return header + "".join(f"{k}: {v}\n" for k, v in specs.items())


def main():
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.model import abstract_model  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--config", default="pretrain_14b")
  ap.add_argument("--preset", default=None, help="one of " + ", ".join(PRESETS))
  ap.add_argument("--write", action="store_true", help="rewrite tests/golden/sharding_*.txt")
  args = ap.parse_args()
  model = abstract_model(load_config(args.config))
  for preset in [args.preset] if args.preset else list(PRESETS):
    text = golden_text(model, preset)
    if args.write:
      with open(os.path.join(GOLDEN_DIR, f"sharding_{preset}.txt"), "w") as f:
        f.write(text)
    else:
      print(text, end="")


if __name__ == "__main__":
  main()
