"""Size a config without allocating it: parameters (total, per expert kind, active per token,
one modality's sub-model) and analytic forward FLOPs per tile.

  python -m ringmoe_jax.tools.inspect --config=configs/pretrain_14b.py[:size=base]

Prints `key=value` lines (`total_params=...`, `active_params=...`, ...). The model is built with
`jax.eval_shape` only, so the 14.7B config is counted in seconds on a laptop.

Definitions (RINGMOE.md):
  active_params   parameters one token passes through: everything except the experts its
                  routers did not select (top-k of one modality's Es special experts, top-k
                  of the Ec collaborative ones, all shared FFNs, all non-expert parameters).
  submodel_params one modality's sub-model ("EP" pruning): that modality's special experts +
                  all collaborative + shared + everything else (its router included).
  flops_per_tile  forward multiply-adds x 2 for one img_size tile: patch embedding, attention
                  projections (qkv, out), attention scores and values inside windows, MoE
                  routers (every router group is evaluated), the selected expert FFNs
                  (top-k special + top-k collab + shared, each 2 matmuls D<->4D), patch merging,
                  the SimMIM decoder of one modality. Not counted: norms, softmax, GELU, the
                  CPB position-bias MLP (per window size, not per token), dispatch/combine.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

import jax
from flax import nnx

from ringmoe_jax.errors import run_cli
from ringmoe_jax.models.attention import effective_window
from ringmoe_jax.objectives.targets import target_channels
from ringmoe_jax.sensors.modalities import MODALITIES

EXPERT_KINDS = ("special", "collab", "shared")


def param_breakdown(model) -> dict[str, int]:
  """{'special', 'collab', 'shared', 'routers', 'other', 'total'} parameter counts."""
  out = {k: 0 for k in EXPERT_KINDS + ("routers", "other")}
  state = nnx.state(model, nnx.Param)
  for path, leaf in jax.tree_util.tree_leaves_with_path(state):
    keys = [str(getattr(p, "key", getattr(p, "idx", p))) for p in path]
    n = math.prod(leaf.shape)
    if "moe" in keys:
      kind = keys[keys.index("moe") + 1]
      out[kind if kind in EXPERT_KINDS else "routers" if kind.endswith("_router")
          else "other"] += n
    else:
      out["other"] += n
  out["total"] = sum(out.values())
  return out


def param_summary(config, model=None) -> dict[str, int]:
  """Breakdown plus active_params and submodel_params (definitions in the module doc)."""
  if model is None:
    from ringmoe_jax.train.model import abstract_model  # pylint: disable=import-outside-toplevel
    model = abstract_model(config)
  b = param_breakdown(model)
  # The model's own modality count (a modality sub-model of ringmoe_jax.prune has fewer).
  moe, m = config.moe, model.encoder.moe_cfg.num_modalities
  k = moe.top_k
  special_active = b["special"] * k // (m * moe.num_special) if moe.num_special else 0
  collab_active = b["collab"] * k // moe.num_collab if moe.num_collab else 0
  rest = b["total"] - b["special"] - b["collab"]
  return {"total_params": b["total"],
          "active_params": rest + special_active + collab_active,
          "submodel_params": rest + b["collab"] + (b["special"] // m if moe.num_special else 0),
          **{f"params_{kind}": b[kind] for kind in EXPERT_KINDS + ("routers", "other")}}


def forward_flops_per_tile(config) -> dict[str, float]:
  """Analytic forward FLOPs (2 x multiply-adds) of one tile, per term (module doc)."""
  mc, moe = config.model, config.moe
  kept = tuple(mc.get("modalities", ())) or MODALITIES  # a modality sub-model has fewer
  m = len(kept)
  grid = mc.img_size // mc.patch_size
  cin = max(int(mc.in_channels[x]) for x in kept)
  t = {"patch_embed": 2.0 * grid * grid * mc.patch_size ** 2 * cin * mc.embed_dim,
       "attn_proj": 0.0, "attn_scores": 0.0, "router": 0.0, "experts": 0.0, "merge": 0.0}
  experts_per_token = (k := moe.top_k) * bool(moe.num_special) + k * bool(moe.num_collab)
  shared_ratio = moe.get("shared_mlp_ratio") or mc.mlp_ratio  # shared FFN width / dim
  router_width = m * moe.num_special + moe.num_collab
  for i, depth in enumerate(mc.depths):
    c = mc.embed_dim * 2 ** i
    n = (grid // 2 ** i) ** 2  # tokens
    ws, _ = effective_window(grid // 2 ** i, grid // 2 ** i, mc.window_size, 0)
    hidden = int(c * mc.mlp_ratio)
    t["attn_proj"] += depth * 2.0 * n * c * 4 * c  # qkv (3C) + proj (C)
    t["attn_scores"] += depth * 2.0 * 2 * n * ws * ws * c  # QK^T and AV
    t["router"] += depth * 2.0 * n * c * router_width
    t["experts"] += depth * experts_per_token * 2.0 * 2 * n * c * hidden
    t["experts"] += depth * moe.num_shared * 2.0 * 2 * n * c * int(c * shared_ratio)
    if i < len(mc.depths) - 1:
      t["merge"] += 2.0 * (n // 4) * 4 * c * 2 * c
  c_last = mc.embed_dim * 2 ** (len(mc.depths) - 1)
  n_last = (grid // 2 ** (len(mc.depths) - 1)) ** 2
  stride = mc.patch_size * 2 ** (len(mc.depths) - 1)
  ko = max(target_channels(config.mim.targets[x], int(mc.in_channels[x])) for x in kept)
  t["decoder"] = 2.0 * n_last * c_last * stride * stride * ko
  t["total"] = sum(t.values())
  return t


def main(argv=None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/pretrain_14b.py",
                  help="configs/NAME.py[:ARG] (ringmoe_jax.config.load.load_config), or the "
                  "config.json of a workdir written by ringmoe_jax.prune")
  args = ap.parse_args(argv)
  if args.config.endswith(".json"):
    from ringmoe_jax.prune.plan import load_config_json  # pylint: disable=import-outside-toplevel
    config = load_config_json(args.config)
  else:
    from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
    config = load_config(args.config)
  out: dict[str, Any] = param_summary(config)
  flops = forward_flops_per_tile(config)
  out["flops_per_tile"] = int(flops["total"])
  for key, val in out.items():
    print(f"{key}={val}")
  print("# flops_per_tile terms (forward, 2 x MACs, GFLOP): " + ", ".join(
      f"{k}={v / 1e9:.2f}" for k, v in flops.items() if k != "total"))
  print(f"# total {out['total_params'] / 1e9:.3f}B, active {out['active_params'] / 1e9:.3f}B, "
        f"one modality's sub-model {out['submodel_params'] / 1e9:.3f}B, forward "
        f"{flops['total'] / 1e12:.3f} TFLOP per {config.model.img_size}px tile")
  return out


if __name__ == "__main__":
  run_cli(main, also=(FileNotFoundError,))  # a bad config / path: one 'error:' line, exit 2
