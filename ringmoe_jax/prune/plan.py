"""The pruning plan: which experts every block and router keeps, merge groups and ranks, as data.

A plan is computed from a config (shapes only: `jax.eval_shape`, so it runs on pretrain_14b
without allocating it) plus, for `frequency`, the routing counts a checkpoint saved
(meta['routing_counts'], {router: (L, E)}). It is printable (`describe`), saved as
prune_plan.json, and it fully determines the transform (transforms.py): the transform reads
nothing else.

Methods, in this order (each at most once), written `--plan=modality=opt,frequency=0.25,merge=svd`
(a word without '=' continues the list of the previous key: `modality=opt,ms`):
  modality=<m>[,<m2>]  keep those modalities' specialised routers and experts, patch embeddings
                       and decoders; every collaborative and shared expert stays (EP).
  frequency=<f>        keep, per block, the ceil(f * Ec) most-used collaborative experts (at
                       least top_k; ties: the lower id) by the saved routing counts (or
                       those of a calibration pass, calibrate.py); the router
                       keeps those columns only, so tokens choose among the kept experts.
  merge=<method>       each block's experts (the kept modalities' specialised, the kept
                       collaborative and the shared ones) -> one dense FFN of the normal width
                       d_ff (merge.py): svd (KC), sum (KS), average (KA), mcsmoe (MC-SMoE), or
                       shared_only (the shared FFN alone; routed experts dropped). The shared FFN
                       is folded in as one more member (KC: it keeps d_ff / N hidden units like
                       every expert), which gives the paper's ~1.06B for pretrain_14b.
                       `<method>:beside` keeps the shared FFN whole beside the merged experts
                       instead: one dense FFN of width 2 d_ff (its first d_ff hidden units are
                       the shared FFN's; `moe.shared_mlp_ratio`), the exact fusion when a block
                       keeps one collaborative expert and nothing else is routed.

Axes: L blocks (routing-count order: per stage, the scanned pairs' blocks even0, odd0, even1,
..., then the unscanned tail), Es special experts per modality, Ec collaborative experts.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
from typing import Any

import ml_collections
import numpy as np

from ringmoe_jax.errors import UserError
from ringmoe_jax.sensors.modalities import MODALITIES

METHODS = ("modality", "frequency", "merge")  # the order they compose in
MERGES = ("svd", "sum", "average", "mcsmoe", "shared_only")  # each but shared_only: [:beside]


@dataclasses.dataclass
class Step:
  method: str
  value: Any  # modality: tuple of names; frequency: float; merge: method name

  def text(self) -> str:
    v = ",".join(self.value) if self.method == "modality" else self.value
    return f"{self.method}={v}"


def parse_plan(text: str) -> list[Step]:
  """'modality=opt,ms,frequency=0.25,merge=svd' -> [Step, ...] (order and values checked)."""
  steps: list[Step] = []
  for part in filter(None, (p.strip() for p in (text or "").split(","))):
    key, eq, val = part.partition("=")
    if not eq:
      if steps and steps[-1].method == "modality":
        steps[-1].value += (part,)
        continue
      raise UserError(f"--plan={text}: {part!r} is not method=value (methods: "
                      f"{', '.join(METHODS)})")
    if key not in METHODS:
      raise UserError(f"--plan={text}: unknown method {key!r}; expected {', '.join(METHODS)}")
    if any(s.method == key for s in steps):
      raise UserError(f"--plan={text}: {key} given twice")
    if steps and METHODS.index(key) < METHODS.index(steps[-1].method):
      raise UserError(f"--plan={text}: methods compose in the order {', '.join(METHODS)}")
    if key == "modality":
      steps.append(Step(key, (val,)))
    elif key == "frequency":
      try:
        f = float(val)
      except ValueError:
        raise UserError(f"--plan={text}: frequency={val!r} is not a number") from None
      if not 0.0 < f <= 1.0:
        raise UserError(f"--plan={text}: frequency={val} must be a fraction in (0, 1]")
      steps.append(Step(key, f))
    else:
      method, colon, how = val.partition(":")
      if method not in MERGES or (colon and (how != "beside" or method == "shared_only")):
        raise UserError(f"--plan={text}: merge={val!r}; expected one of {', '.join(MERGES)} "
                        "(each but shared_only optionally :beside)")
      steps.append(Step(key, val))
  if not steps:
    raise UserError(f"--plan={text!r}: no method (expected e.g. modality=opt,frequency=0.25,"
                    "merge=svd)")
  for s in steps:
    if s.method == "modality":
      for m in s.value:
        if m not in MODALITIES:
          raise UserError(f"--plan={text}: unknown modality {m!r}; expected one of "
                          f"{', '.join(MODALITIES)}")
  return steps


@dataclasses.dataclass
class BlockPlan:
  """One block's MoE after the plan. `where`: ['pairs', layer, 'even'|'odd'] or ['tail', i]
  inside encoder/stages/<stage>. special: kept modality -> its kept expert ids (0..Es-1);
  collab: kept collaborative ids (source numbering, ascending). merge (after `merge`):
  {'method', 'members': ['special/opt/0', 'collab/2', ...], 'weights': routing-count share of
  each member, 'ranks': hidden units each member keeps (svd), 'hidden': merged FFN width}."""
  block: int
  stage: int
  where: list
  dim: int
  hidden: int
  special: dict[str, list[int]]
  collab: list[int]
  merge: dict[str, Any] | None = None


@dataclasses.dataclass
class PrunePlan:
  plan: str
  steps: list[str]
  source: dict[str, Any]            # the source model's modalities and MoE sizes
  config_overrides: dict[str, Any]  # encoder fields (dotted) of the pruned model
  blocks: list[BlockPlan]
  sizes: list[dict[str, Any]]       # [{'step', 'total_params', 'active_params'}], source first

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=1)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "PrunePlan":
    return cls(**{**d, "blocks": [BlockPlan(**b) for b in d["blocks"]]})

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.config_overrides.get("model.modalities") or self.source["modalities"])

  def describe(self) -> str:
    """Sizes after each step, then one line per block."""
    src = self.source
    lines = [f"prune plan {self.plan!r}: source {len(src['modalities'])} modalities "
             f"({', '.join(src['modalities'])}), {src['num_special']} special experts each, "
             f"{src['num_collab']} collaborative, {src['num_shared']} shared, top_k "
             f"{src['top_k']}, {len(self.blocks)} blocks; routing counts: "
             f"{'yes' if src['counts'] else 'none'}"]
    for s in self.sizes:
      lines.append(f"step {s['step']}: total_params={s['total_params']} "
                   f"({s['total_params'] / 1e9:.3f}B) active_params={s['active_params']} "
                   f"({s['active_params'] / 1e9:.3f}B)")
    lines.append("config: " + " ".join(f"{k}={v}" for k, v in self.config_overrides.items()))
    for b in self.blocks:
      loc = "/".join(str(x) for x in b.where)
      text = (f"block {b.block:2d} (stage {b.stage} {loc}, dim {b.dim}): special "
              + (" ".join(f"{m}{v}" for m, v in b.special.items()) or "-")
              + f" collab {b.collab or '-'}")
      if b.merge:
        mg = b.merge
        text += f" -> {mg['method']} of {len(mg['members'])} experts"
        if mg.get("ranks"):
          text += f" ranks {mg['ranks']}"
      lines.append(text)
    return "\n".join(lines)


def load_config_json(path: str) -> ml_collections.ConfigDict:
  """A config.json written by ringmoe_jax.prune (or a meta['config'] dict) -> ConfigDict."""
  if isinstance(path, str):
    with open(path) as f:
      path = json.load(f)
  return ml_collections.ConfigDict(_tuples(path))


def _tuples(v):
  """JSON lists back to the tuples the configs hold."""
  if isinstance(v, dict):
    return {k: _tuples(x) for k, x in v.items()}
  if isinstance(v, list):
    return tuple(_tuples(x) for x in v)
  return v


def set_fields(config, fields: dict[str, Any]):
  """A copy of `config` with dotted fields set: {'moe.num_collab': 1}."""
  c = copy.deepcopy(config)
  for k, v in fields.items():
    node = c
    *path, last = k.split(".")
    for p in path:
      node = node[p]
    node[last] = tuple(v) if isinstance(v, list) else v
  return c


def block_layout(config) -> list[tuple[int, list]]:
  """[(stage, where)] per block in routing-count order (see the module docstring)."""
  scan = bool(config.get("remat", {}).get("scan_blocks", True))
  out = []
  for i, depth in enumerate(config.model.depths):
    pairs = depth // 2 if scan else 0
    out += [(i, ["pairs", j // 2, "even" if j % 2 == 0 else "odd"]) for j in range(2 * pairs)]
    out += [(i, ["tail", t]) for t in range(depth - 2 * pairs)]
  return out


def source_modalities(config) -> tuple[str, ...]:
  kept = tuple(config.model.get("modalities", ()) or ())
  return tuple(m for m in MODALITIES if m in kept) if kept else MODALITIES


def pruned_config(config, overrides: dict[str, Any], registry=None):
  """The source config with the plan's encoder fields, and data.sensors (pre-training)
  narrowed to the kept modalities' sensors."""
  c = set_fields(config, overrides)
  kept = overrides.get("model.modalities")
  if kept and c.data.get("sensors"):
    registry = _registry(c, registry)
    names = [s for s in c.data.sensors if registry.get(s).modality in kept]
    dropped = [s for s in c.data.sensors if s not in names]
    if dropped and c.get("task", {}).get("name", "pretrain") != "pretrain":
      raise UserError(f"modality={','.join(kept)}: the fine-tuning task's sensors "
                      f"{', '.join(dropped)} are of a modality this plan drops")
    weights = c.data.get("weights")
    if weights:
      c.data.weights = tuple(w for s, w in zip(c.data.sensors, weights) if s in names)
    c.data.sensors = tuple(names)
    mw = c.data.get("modality_weights")
    if isinstance(mw, (dict, ml_collections.ConfigDict)):
      c.data.modality_weights = {m: w for m, w in dict(mw).items() if m in kept}
  return c


def _registry(config, registry):
  if registry is not None:
    return registry
  from ringmoe_jax.objectives.sensor_tables import training_registry  # pylint: disable=import-outside-toplevel
  return training_registry(config)


def model_sizes(config) -> dict[str, int]:
  """total / active parameters of `config`'s pre-training model, shapes only."""
  from ringmoe_jax.tools.inspect import param_summary  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.model import abstract_model  # pylint: disable=import-outside-toplevel
  s = param_summary(config, abstract_model(config))
  return {"total_params": int(s["total_params"]), "active_params": int(s["active_params"])}


def _counts(counts, name: str, num_blocks: int):
  """counts[name] as a (L, E) float64 array, or None."""
  if not counts or name not in counts:
    return None
  c = np.asarray(counts[name], np.float64)
  if c.ndim != 2 or c.shape[0] != num_blocks:
    raise UserError(f"routing counts {name!r} have shape {c.shape}, expected ({num_blocks}, E)")
  return c


def compute_plan(config, plan_text: str, counts: dict[str, Any] | None = None, *,
                 registry=None, require_counts: bool = True, sizes: bool = True) -> PrunePlan:
  """The plan of `plan_text` for `config`'s model.

  counts: {router: (L, E)} tokens routed to each expert (meta['routing_counts']); None: no
    counts (then `frequency` is a UserError, unless require_counts=False: sizes only, the
    first experts stand in for the most used).
  sizes: count total / active parameters after each step (abstract models).
  """
  steps = parse_plan(plan_text)
  mc, moe = config.model, config.moe
  src_mods = source_modalities(config)
  es, ec, sh, k = int(moe.num_special), int(moe.num_collab), int(moe.num_shared), int(moe.top_k)
  layout = block_layout(config)
  nb = len(layout)
  special_c, collab_c = _counts(counts, "special", nb), _counts(counts, "collab", nb)
  have_counts = any(c is not None and c.sum() > 0 for c in (special_c, collab_c))
  blocks = []
  for b, (stage, where) in enumerate(layout):
    dim = int(mc.embed_dim) * 2 ** stage
    blocks.append(BlockPlan(b, stage, where, dim, int(dim * float(mc.mlp_ratio)),
                            {m: list(range(es)) for m in src_mods} if es else {},
                            list(range(ec))))
  overrides: dict[str, Any] = {}
  size_rows = [{"step": "source", **model_sizes(config)}] if sizes else []
  for step in steps:
    if step.method == "modality":
      missing = [m for m in step.value if m not in src_mods]
      if missing:
        raise UserError(f"modality={','.join(step.value)}: the model has no {missing[0]} "
                        f"(its modalities: {', '.join(src_mods)})")
      kept = tuple(m for m in src_mods if m in step.value)
      overrides["model.modalities"] = kept
      for bp in blocks:
        bp.special = {m: v for m, v in bp.special.items() if m in kept}
    elif step.method == "frequency":
      if not ec:
        raise UserError("frequency: the model has no collaborative experts (moe.num_collab=0)")
      if collab_c is None or not collab_c.sum() > 0:
        if require_counts:
          raise UserError("frequency: the checkpoint has no routing counts (meta "
                          "['routing_counts'] missing or all zero: a run that never trained "
                          "its routers); pass --calibration=simulator to count the routing "
                          "of simulator tiles, or train it for some steps first")
      keep = min(ec, max(k, math.ceil(step.value * ec - 1e-9)))
      for bp in blocks:
        row = np.zeros(ec) if collab_c is None else collab_c[bp.block]
        order = np.argsort(-row, kind="stable")  # most used first; ties: lower id
        bp.collab = sorted(int(i) for i in order[:keep])
      overrides["moe.num_collab"] = keep
    else:
      _plan_merge(step.value, blocks, config, src_mods, special_c, collab_c, overrides)
    if sizes:
      size_rows.append({"step": step.text(),
                        **model_sizes(pruned_config(config, overrides, registry))})
  source = {"modalities": list(src_mods), "num_special": es, "num_collab": ec,
            "num_shared": sh, "top_k": k, "mlp_ratio": float(mc.mlp_ratio),
            "shared_mlp_ratio": moe.get("shared_mlp_ratio"), "counts": bool(have_counts)}
  return PrunePlan(plan_text, [s.text() for s in steps], source,
                   {k_: list(v) if isinstance(v, tuple) else v for k_, v in overrides.items()},
                   blocks, size_rows)


def _plan_merge(value: str, blocks, config, src_mods, special_c, collab_c, overrides) -> None:
  method, _, how = value.partition(":")
  beside = how == "beside"
  moe = config.moe
  es, sh, k = int(moe.num_special), int(moe.num_shared), int(moe.top_k)
  ratio = float(config.model.mlp_ratio)
  shared_ratio = float(moe.get("shared_mlp_ratio") or ratio)
  if method == "shared_only":
    if not sh:
      raise UserError("merge=shared_only: the model has no shared FFN (moe.num_shared=0)")
    overrides.update({"moe.num_special": 0, "moe.num_collab": 0})
  elif beside:  # the shared FFN(s) whole + the merged experts: one FFN of their summed width
    overrides.update({"moe.num_special": 0, "moe.num_collab": 0, "moe.num_shared": 1,
                      "moe.shared_mlp_ratio": sh * shared_ratio + ratio})
  else:  # everything folded into one FFN of the normal width
    overrides.update({"moe.num_special": 0, "moe.num_collab": 0, "moe.num_shared": 1,
                      "moe.shared_mlp_ratio": None})
  for bp in blocks:
    members, weights = [], []
    for m, ids in bp.special.items():
      for j in ids:
        members.append(f"special/{m}/{j}")
        col = src_mods.index(m) * es + j
        weights.append(1.0 if special_c is None else float(special_c[bp.block, col]))
    for j in bp.collab:
      members.append(f"collab/{j}")
      weights.append(1.0 if collab_c is None else float(collab_c[bp.block, j]))
    if method != "shared_only" and not beside:
      # A shared FFN sees every token: its count is the block's tokens (a router's counts / K).
      tokens = [c[bp.block].sum() / k for c in (collab_c, special_c) if c is not None]
      for i in range(sh):
        members.append(f"shared/{i}")
        weights.append(float(tokens[0]) if tokens else 1.0)
    if method != "shared_only" and not any(not m.startswith("shared/") for m in members):
      raise UserError(f"merge={value}: block {bp.block} has no routed experts to merge")
    total = sum(weights)
    share = [w / total if total > 0 else 1.0 / len(weights) for w in weights]
    plan = {"method": method, "beside": beside, "members": members, "weights": share,
            "hidden": bp.hidden}
    if method == "svd":
      # d_ff / N hidden units each; the remainder to the most-used members.
      n = len(members)
      ranks = [bp.hidden // n] * n
      for i in np.argsort(-np.asarray(share), kind="stable")[:bp.hidden % n]:
        ranks[int(i)] += 1
      plan["ranks"] = ranks
    bp.merge = plan
    bp.special, bp.collab = {}, []
