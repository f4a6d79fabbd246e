"""Apply a PrunePlan to parameters (and routing counts): numpy trees in, numpy trees out.

params: the pure dict of a model's nnx.Params ({'encoder': ..., 'decoders': ...} for
pre-training, {'encoder': ..., 'head': ...} for fine-tuning); only the encoder (and the
pre-training decoders) change. A block's MoE lives at encoder/stages/<s>/pairs/<even|odd>/moe
with a leading (L2,) layer axis, or at encoder/stages/<s>/tail/<i>/moe (plan.block_layout).

Per block (plan.BlockPlan):
  special_router kernel (M, D, Es) -> rows of the kept modalities;
  special w1/b1/w2/b2 (M * Es, ...) -> the kept modalities' experts, in their order;
  collab_router kernel (1, D, Ec) -> columns `collab` (a token's softmax and top-k then run
  over the kept experts only); collab experts -> `collab`;
  merge -> shared = merge(members) (the shared FFN one of them), or with `beside`
  fuse(shared FFNs + [merge(routed members)]) (merge.py); routers and routed experts removed;
  shared_only -> routers and routed experts removed.
Outside the blocks: patch embedding kernels / tables and decoders of the kept modalities.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ringmoe_jax.errors import UserError
from ringmoe_jax.prune import merge as merge_lib
from ringmoe_jax.prune.plan import PrunePlan

_EXPERT_KEYS = ("w1", "b1", "w2", "b2")


def _key(tree: Mapping, k):
  """tree's key k, whether it is stored as an int or as its string (Orbax)."""
  for cand in (k, str(k)) + ((int(k),) if isinstance(k, str) and k.isdigit() else ()):
    if cand in tree:
      return cand
  raise KeyError(k)


def _get(tree, path):
  for k in path:
    tree = tree[_key(tree, k)]
  return tree


def _list_select(tree: Mapping, keep: list[int]) -> dict:
  """An nnx.List's pure dict {0: a, 1: b, ...} narrowed to the positions `keep` (renumbered)."""
  return {i: tree[_key(tree, j)] for i, j in enumerate(keep)}


def block_moe(encoder, stage: int, where: list) -> dict[str, dict[str, np.ndarray]]:
  """One block's MoE parameters (numpy, the layer axis of a scanned pair indexed away)."""
  st = _get(encoder, ["stages", stage])
  if where[0] == "pairs":
    moe = _get(st, ["pairs", where[2], "moe"])
    return {k: {n: np.asarray(v)[where[1]] for n, v in sub.items()} for k, sub in moe.items()}
  moe = _get(st, ["tail", where[1], "moe"])
  return {k: {n: np.asarray(v) for n, v in sub.items()} for k, sub in moe.items()}


def transform_block(moe: dict, bp, plan: PrunePlan) -> dict:
  """One block's MoE dict after the plan (see the module docstring)."""
  src = plan.source
  src_mods, es = src["modalities"], int(src["num_special"])
  kept_mods = [m for m in src_mods if m in plan.modalities]
  if bp.merge is not None:
    return _merged_block(moe, bp, src_mods, es)
  out = {}
  if "special" in moe:
    rows = [src_mods.index(m) for m in kept_mods]
    sel = [src_mods.index(m) * es + j for m in kept_mods for j in bp.special[m]]
    out["special_router"] = {"kernel": moe["special_router"]["kernel"][rows]}
    out["special"] = {k: moe["special"][k][sel] for k in _EXPERT_KEYS}
  if "collab" in moe:
    cols = list(bp.collab)
    out["collab_router"] = {"kernel": moe["collab_router"]["kernel"][..., cols]}
    out["collab"] = {k: moe["collab"][k][cols] for k in _EXPERT_KEYS}
  if "shared" in moe:
    out["shared"] = dict(moe["shared"])
  return out


def _expert(moe, member: str, src_mods, es: int) -> tuple:
  kind, *rest = member.split("/")
  idx = src_mods.index(rest[0]) * es + int(rest[1]) if kind == "special" else int(rest[0])
  return tuple(moe[kind][k][idx] for k in _EXPERT_KEYS)


def expected_bias(members: list[str], ffns: list[tuple], weights: list[float]) -> np.ndarray:
  """The output bias a token gets on average: every shared FFN's b2 + per router kind
  (special, collab) the usage-weighted mean b2 of its experts (KC's b2, merge.py)."""
  out = 0.0
  for kind in ("special", "collab"):
    idx = [i for i, m in enumerate(members) if m.startswith(kind + "/")]
    if idx:
      w = np.asarray([weights[i] for i in idx], np.float64)
      w = w / w.sum() if w.sum() > 0 else np.full(len(idx), 1.0 / len(idx))
      out = out + np.tensordot(w, np.stack([np.asarray(ffns[i][3], np.float64) for i in idx]), 1)
  for i, m in enumerate(members):
    if m.startswith("shared/"):
      out = out + np.asarray(ffns[i][3], np.float64)
  return np.asarray(out, np.float64)


def _merged_block(moe, bp, src_mods, es: int) -> dict:
  mg = bp.merge
  if mg["method"] == "shared_only":
    return {"shared": dict(moe["shared"])}
  members = [_expert(moe, m, src_mods, es) for m in mg["members"]]
  dtype = members[0][0].dtype
  b2 = expected_bias(mg["members"], members, mg["weights"]) if mg["method"] == "svd" else None
  try:
    dense = merge_lib.merge(mg["method"], members, mg["weights"], mg.get("ranks"), b2=b2)
  except ValueError as e:
    raise UserError(f"merge={mg['method']}, block {bp.block}: {e}") from None
  if mg.get("beside") and "shared" in moe:
    shared = [tuple(moe["shared"][k][i] for k in _EXPERT_KEYS)
              for i in range(moe["shared"]["w1"].shape[0])]
    dense = merge_lib.fuse(shared + [dense])
  return {"shared": {k: np.asarray(a, dtype)[None] for k, a in zip(_EXPERT_KEYS, dense)}}


def _put_block(encoder: dict, stage: int, where: list, moe: dict, pending: dict) -> None:
  """Write a block's new MoE dict (pairs: collected, stacked once all layers are in)."""
  st = encoder["stages"][_key(encoder["stages"], stage)]
  if where[0] == "tail":
    tail = st["tail"]
    tail[_key(tail, where[1])]["moe"] = moe
  else:
    pending.setdefault((stage, where[2]), {})[where[1]] = moe


def _copy(tree):
  if isinstance(tree, Mapping):
    return {k: _copy(v) for k, v in tree.items()}
  return tree


def apply_plan(params: Mapping[str, Any], plan: PrunePlan) -> dict[str, Any]:
  """Pruned copy of `params` (pure dict, numpy leaves); leaves not touched are shared."""
  out = _copy(params)
  enc = out["encoder"]
  pending: dict = {}
  for bp in plan.blocks:
    moe = transform_block(block_moe(params["encoder"], bp.stage, bp.where), bp, plan)
    _put_block(enc, bp.stage, bp.where, moe, pending)
  for (stage, half), layers in pending.items():
    st = enc["stages"][_key(enc["stages"], stage)]
    pairs = st["pairs"]
    stacked = {k: {n: np.stack([layers[j][k][n] for j in sorted(layers)])
                   for n in sub} for k, sub in layers[0].items()}
    pairs[_key(pairs, half)]["moe"] = stacked
  return apply_outside_blocks(out, plan)


def apply_outside_blocks(params: dict[str, Any], plan: PrunePlan) -> dict[str, Any]:
  """`params` (a copy the caller owns; the blocks may be absent) with the patch embedding and
  decoders narrowed to the kept modalities, in place. The streaming transform (run.py) applies
  it to the parameters outside the blocks, apply_plan to all of them."""
  src_mods = plan.source["modalities"]
  rows = [src_mods.index(m) for m in plan.modalities]
  if rows != list(range(len(src_mods))):
    pe = params["encoder"]["patch_embed"]
    for name in list(pe):
      if name == "kernels":
        pe[name] = _list_select(pe[name], rows)
      else:  # bias / norm tables (M, D), spectral hyper-network weights (M, ...)
        pe[name] = np.asarray(pe[name])[rows]
    if "decoders" in params:
      params["decoders"]["heads"] = _list_select(params["decoders"]["heads"], rows)
  return params


def apply_counts(counts: Mapping[str, Any] | None, plan: PrunePlan) -> dict[str, np.ndarray]:
  """The routing counts {router: (L, E)} of the kept experts (none after a merge)."""
  if not counts or any(bp.merge is not None for bp in plan.blocks):
    return {}
  src_mods, es = plan.source["modalities"], int(plan.source["num_special"])
  out = {}
  if "special" in counts and es:
    rows = []
    for bp in plan.blocks:
      c = np.asarray(counts["special"], np.float32)[bp.block]
      rows.append(c[[src_mods.index(m) * es + j for m in plan.modalities
                     for j in bp.special[m]]])
    out["special"] = np.stack(rows)
  if "collab" in counts and plan.source["num_collab"]:
    c = np.asarray(counts["collab"], np.float32)
    out["collab"] = np.stack([c[bp.block][bp.collab] for bp in plan.blocks])
  return out
