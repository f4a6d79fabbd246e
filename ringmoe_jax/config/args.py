"""Parse the `arg` of `get_config(arg)`: 'runlocal,size=base,physics=none' -> dict.

A bare word is a boolean flag (True); key=value pairs keep their string value unless it parses
as an int or float. Unknown keys are rejected by the config that reads them.
"""
from __future__ import annotations

from typing import Any


def _convert(v: str) -> Any:
  for t in (int, float):
    try:
      return t(v)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(v.lower(), v)


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """Defaults updated by `arg`; raises ValueError naming any key that has no default."""
  out = dict(defaults)
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, _, val = part.partition("=")
    if key not in defaults:
      raise ValueError(f"unknown config argument {key!r}; known: {', '.join(sorted(defaults))}")
    out[key] = _convert(val) if val else True
  return out
