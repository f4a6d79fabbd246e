"""Dynamic expert pruning (issue 14): one checkpoint -> a smaller one. plan.py (what is kept, as
data), transforms.py (params / counts), merge.py (experts -> one dense FFN), run.py (workdir in,
workdir out), __main__ (`python -m ringmoe_jax.prune`)."""
from ringmoe_jax.prune.plan import MERGES, METHODS, BlockPlan, PrunePlan, compute_plan, parse_plan

__all__ = ["MERGES", "METHODS", "BlockPlan", "PrunePlan", "compute_plan", "parse_plan"]
