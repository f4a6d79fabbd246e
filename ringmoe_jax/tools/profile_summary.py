r"""Where a compiled step spends its time: a JAX profiler trace, summarised per HLO op.

  python -m ringmoe_jax.tools.profile_summary TRACE_DIR [--hlo=step.hlo.txt] [--top=15]

TRACE_DIR is what `jax.profiler.trace(dir, create_perfetto_trace=True)` wrote (the newest
perfetto_trace.json.gz below it), e.g. a training run's `train.profile_steps` trace or
benchmarks/train_step.py's. On XLA:CPU every executed thunk is one trace event named after its
HLO instruction; nested events (the ops inside a while loop) are subtracted from their parent,
so the times below are self times and add up to the profiled op time.

With the compiled module's text (`jax.jit(f).lower(...).compile().as_text()`), ops are grouped
by kind (matmul = any fusion or op containing a dot / convolution; copy; gather / scatter;
sort; reduce; while / loop control; other elementwise fusions) and by the source file of the
JAX code that emitted them (the HLO metadata's innermost user frame), which attributes time to
the model's parts (moe/, models/attention.py, objectives/, optax, ...).
"""
from __future__ import annotations

import collections
import dataclasses
import glob
import gzip
import json
import os
import re

from ringmoe_jax.errors import run_cli

_INSTR = re.compile(r"^\s*(?:ROOT )?%([\w.\-]+) = .*?\s([a-z][\w\-]*)\(")
_CALLS = re.compile(r"calls=%([\w.\-]+)")
_FRAME = re.compile(r"stack_frame_id=(\d+)")
_COMPUTATION = re.compile(r"^%([\w.\-]+) .*\{\s*$")


@dataclasses.dataclass(frozen=True)
class OpInfo:
  kind: str    # matmul, copy, gather/scatter, sort, reduce, loop, elementwise, other
  source: str  # "path/file.py" of the emitting JAX code, or "?"


def find_trace(path: str) -> str:
  """The newest perfetto_trace.json.gz at or below `path`."""
  if os.path.isfile(path):
    return path
  found = sorted(glob.glob(os.path.join(path, "**", "perfetto_trace.json.gz"), recursive=True),
                 key=os.path.getmtime)
  if not found:
    raise FileNotFoundError(f"no perfetto_trace.json.gz under {path!r}: trace with "
                            "jax.profiler.trace(dir, create_perfetto_trace=True)")
  return found[-1]


def op_self_times(trace_path: str, module: str | None = None) -> dict[str, float]:
  """HLO op name -> summed self time in seconds, over every execution in the trace (of the HLO
  module named `module` only, e.g. "jit_train_step", when given)."""
  with gzip.open(find_trace(trace_path), "rt", encoding="utf-8") as f:
    data = json.load(f)
  events = data["traceEvents"] if isinstance(data, dict) else data
  per_thread = collections.defaultdict(list)
  for e in events:
    args = e.get("args", {})
    if e.get("ph") == "X" and "hlo_op" in args and module in (None, args.get("hlo_module")):
      per_thread[e.get("tid")].append((float(e["ts"]), float(e["dur"]), e["args"]["hlo_op"]))
  out: dict[str, float] = collections.defaultdict(float)
  for evs in per_thread.values():
    evs.sort(key=lambda x: (x[0], -x[1]))
    stack: list[list] = []  # [end, name, self time]
    for ts, dur, name in evs:
      while stack and ts >= stack[-1][0]:
        _, n, s = stack.pop()
        out[n] += s
      if stack:
        stack[-1][2] -= dur  # a nested op's time is not its parent's own
      stack.append([ts + dur, name, dur])
    for _, n, s in stack:
      out[n] += s
  return {k: max(v, 0.0) * 1e-6 for k, v in out.items()}


def _kind(opcode: str, body: str) -> str:
  if opcode in ("dot", "convolution") or (opcode == "fusion" and re.search(
      r"\s(dot|convolution)\(", body)):
    return "matmul"
  if opcode == "fusion":
    for kind, pat in (("gather/scatter", r"\s(gather|scatter)\("), ("sort", r"\ssort\("),
                      ("reduce", r"\sreduce(-window)?\("),
                      ("copy", r"^\s*ROOT %\S+ = \S+ (copy|transpose)\(")):
      if re.search(pat, body, re.M):
        return kind
    return "elementwise"
  return {"copy": "copy", "transpose": "copy", "gather": "gather/scatter",
          "scatter": "gather/scatter", "sort": "sort", "reduce": "reduce",
          "reduce-window": "reduce", "while": "loop", "conditional": "loop",
          "call": "loop"}.get(opcode, "other")


def _frames(hlo_text: str) -> dict[int, str]:
  """stack_frame_id -> file name, from the module's FileNames / FileLocations / StackFrames."""
  tables: dict[str, dict[int, str]] = {"FileNames": {}, "FileLocations": {}, "StackFrames": {}}
  section = None
  for line in hlo_text.splitlines():
    head = line.strip()
    if head in tables:
      section = head
      continue
    if not head or head.startswith(("%", "HloModule", "ENTRY")):
      section = None if not head or head.startswith(("%", "ENTRY")) else section
      continue
    if section:
      key, _, rest = head.partition(" ")
      if key.isdigit():
        tables[section][int(key)] = rest
  files = {k: v.strip('"') for k, v in tables["FileNames"].items()}
  loc_file = {k: files.get(int(m.group(1)), "?") for k, v in tables["FileLocations"].items()
              if (m := re.search(r"file_name_id=(\d+)", v))}
  return {k: loc_file.get(int(m.group(1)), "?") for k, v in tables["StackFrames"].items()
          if (m := re.search(r"file_location_id=(\d+)", v))}


def op_infos(hlo_text: str) -> dict[str, OpInfo]:
  """HLO instruction name -> OpInfo, from the compiled module's text."""
  bodies: dict[str, list[str]] = {}
  current = None
  for line in hlo_text.splitlines():
    m = _COMPUTATION.match(line) or (re.match(r"^ENTRY %([\w.\-]+)", line))
    if m:
      current = m.group(1)
      bodies[current] = []
    elif current is not None:
      bodies[current].append(line)
  frames = _frames(hlo_text)

  cache: dict[str, str] = {}

  def body_of(comp: str) -> str:
    """A computation's text with the computations it calls inlined (a YNNPACK fusion wraps
    the fusion that holds the dot). HLO call graphs are acyclic."""
    if comp not in cache:
      lines = bodies.get(comp, [])
      cache[comp] = "\n".join(lines + [body_of(c) for line in lines
                                        for c in _CALLS.findall(line) if c != comp])
    return cache[comp]

  infos = {}
  for lines in bodies.values():
    for line in lines:
      m = _INSTR.match(line)
      if not m:
        continue
      name, opcode = m.groups()
      calls = _CALLS.search(line)
      body = body_of(calls.group(1)) if calls else ""
      frame = _FRAME.search(line) or _FRAME.search(body)
      source = frames.get(int(frame.group(1)), "?") if frame else "?"
      infos[name] = OpInfo(_kind(opcode, body), _short(source))
  return infos


def _short(path: str) -> str:
  """.../site-packages/optax/_src/x.py -> optax/_src/x.py; .../ringmoe_jax/a/b.py -> a/b.py."""
  for anchor in ("/ringmoe_jax/", "/site-packages/", "/benchmarks/", "/tests/"):
    if anchor in path:
      return path.split(anchor, 1)[1]
  return os.path.basename(path) if path != "?" else "?"


def summarize(trace_path: str, hlo_text: str | None = None, top: int = 12) -> str:
  """A text report: total op time, shares by kind and by source file, the top ops."""
  name = re.match(r"HloModule ([\w.\-]+)", hlo_text) if hlo_text else None
  times = op_self_times(trace_path, name.group(1) if name else None)
  total = sum(times.values())
  if not times:
    raise ValueError(f"no HLO op events in {find_trace(trace_path)!r}"
                     + (f" for module {name.group(1)!r}" if name else ""))
  infos = op_infos(hlo_text) if hlo_text else {}
  unknown = OpInfo("?", "?")
  lines = [f"profiled op time {total:.3f} s in {len(times)} HLO ops (self times)"]
  for title, key in (("by kind", lambda i: i.kind), ("by source", lambda i: i.source)):
    if not infos:
      break
    groups = collections.Counter()
    for name, t in times.items():
      groups[key(infos.get(name, unknown))] += t
    lines.append(f"{title}: " + ", ".join(f"{k} {t / total:.0%}" for k, t in
                                          groups.most_common(top) if t / total >= 0.005))
  lines.append("top ops:")
  for op, t in sorted(times.items(), key=lambda x: -x[1])[:top]:
    info = infos.get(op, unknown)
    lines.append(f"  {t:8.3f} s {t / total:5.1%}  {op}  [{info.kind}; {info.source}]")
  return "\n".join(lines)


def main(argv=None):
  import argparse  # pylint: disable=import-outside-toplevel
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("trace", help="trace directory or perfetto_trace.json.gz")
  ap.add_argument("--hlo", help="compiled module text (compiled.as_text())")
  ap.add_argument("--top", type=int, default=15)
  a = ap.parse_args(argv)
  hlo = open(a.hlo, encoding="utf-8").read() if a.hlo else None
  print(summarize(a.trace, hlo, a.top))


if __name__ == "__main__":
  run_cli(main, also=(FileNotFoundError,))  # a bad config / path: one 'error:' line, exit 2
