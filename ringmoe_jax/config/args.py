"""Parse the `arg` of `get_config(arg)`: 'runlocal,size=base,physics=none' -> dict.

A bare word is a boolean flag (True); key=value pairs keep their string value unless it parses
as an int or float. Unknown keys are rejected by the config that reads them.
"""
from __future__ import annotations

from typing import Any, Iterable

from ringmoe_jax.errors import UserError


class ConfigArgError(UserError):
  """A bad `get_config(arg)` argument (an unknown key, a value outside its choices)."""


def _convert(v: str) -> Any:
  for t in (int, float):
    try:
      return t(v)
    except ValueError:
      pass
  return {"true": True, "false": False}.get(v.lower(), v)


def parse_arg(arg: str | None, **defaults: Any) -> dict[str, Any]:
  """Defaults updated by `arg`; raises ConfigArgError naming any key that has no default."""
  out = dict(defaults)
  for part in filter(None, (p.strip() for p in (arg or "").split(","))):
    key, _, val = part.partition("=")
    if key not in defaults:
      raise ConfigArgError(f"unknown config argument {key!r} in {arg!r}; known: "
                           f"{', '.join(sorted(defaults))}")
    out[key] = _convert(val) if val else True
  return out


def check_choice(args: dict[str, Any], key: str, choices: Iterable[Any]) -> Any:
  """args[key] if it is one of `choices`, else ConfigArgError naming the argument and choices."""
  choices = tuple(choices)
  value = args[key]
  if value not in choices:
    raise ConfigArgError(f"config argument {key}={value!r}; expected one of "
                         f"{', '.join(str(c) for c in choices)}")
  return value
