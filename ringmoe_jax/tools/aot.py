"""Ahead-of-time compile the real training step for a fake mesh of N CPU devices.

  python -m ringmoe_jax.tools.aot --config=configs/pretrain_14b.py --devices=512
  python -m ringmoe_jax.tools.aot --devices=256 --set=model.patch_embed=spectral

`--set=KEY=VALUE` (repeatable) overrides one config field before validation, as
`--config.KEY=VALUE` does for `main`; VALUE is a Python literal or else a string.

Nothing of the model is allocated: the state is `jax.ShapeDtypeStruct`s with the shardings the
trainer would use (StateBuilder on an abstract model), the batch is the pipeline's batch at the
configured global batch size. The step is lowered and compiled for a CPU mesh of N fake devices
(the same GSPMD partitioning a TPU/GPU mesh of that shape gets), then prints:

  compile_seconds=<float>     lowering + compilation
  per_device_bytes=<int>      argument + output + temp - alias, from compiled.memory_analysis()
  memory breakdown            argument (parameters, optimiser state, batch), output, temp
                              (activations and collectives' buffers), alias (donated state)
  involuntary_remat_warnings=<int>
                              XLA's "Involuntary full rematerialization" warnings (each one is a
                              sharding XLA could not keep: it replicates a tensor to recompute it)

Per-device bytes are XLA:CPU's buffer assignment; a TPU's differs in layout and fusion but not
in what is resident (parameters, optimiser state, saved activations).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from typing import Any

from ringmoe_jax.errors import run_cli

REMAT_WARNING = "Involuntary full rematerialization"


def _fake_devices(n: int) -> None:
  """Before jax initialises its backend: n CPU devices."""
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()
           if not f.startswith("--xla_force_host_platform_device_count")]
  os.environ["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={n}"])
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_num_cpu_devices", n)


class _CaptureFd2:
  """Capture the process's file descriptor 2 (XLA's C++ logging) into a string."""

  def __enter__(self):
    sys.stderr.flush()
    self._tmp = tempfile.TemporaryFile(mode="w+b")
    self._saved = os.dup(2)
    os.dup2(self._tmp.fileno(), 2)
    return self

  def __exit__(self, *exc):
    sys.stderr.flush()
    os.dup2(self._saved, 2)
    os.close(self._saved)
    self._tmp.seek(0)
    self.text = self._tmp.read().decode(errors="replace")
    self._tmp.close()


def example_batch(config) -> dict[str, Any]:
  """One small batch from the config's task pipeline (pre-training: one co-registration group):
  its keys, dtypes and per-example shapes."""
  from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.trainer import build_registry  # pylint: disable=import-outside-toplevel
  task = get_task(config)
  n = max(1, int(config.data.get("co_registered", 1))) if task.name == "pretrain" else 1
  return task.make_dataset(config, build_registry(config), "train", batch_size=n)[0]


def compile_step(config, *, batch_size: int | None = None) -> dict[str, Any]:
  """Lower + compile the train step of `config` (any task) on all jax.devices(); nothing
  allocated.

  Returns compile_seconds, memory (bytes per device: argument, output, temp, alias, total),
  the captured XLA log and the number of involuntary-remat warnings in it.
  """
  import jax  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.config.validate import validate  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.mesh import make_mesh  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.parallel.sharding import batch_sharding, rules_for  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tasks import get_task  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.setup import make_builder  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train.step import batch_spec, make_train_step  # pylint: disable=import-outside-toplevel

  validate(config)
  b = config.data.batch_size if batch_size is None else batch_size
  mesh = make_mesh(config.mesh)
  task = get_task(config)
  setup = make_builder(config, task, mesh, rules_for(config))
  builder = setup.builder
  step = make_train_step(builder, config, task=task, trainable=setup.trainable)
  batch = {k: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=batch_sharding(mesh, len(s.shape)))
           for k, s in batch_spec(example_batch(config), b).items()}
  t0 = time.perf_counter()
  with _CaptureFd2() as cap, jax.set_mesh(mesh):
    compiled = step.lower(builder.abstract, batch).compile()
  seconds = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  memory = {"argument": int(mem.argument_size_in_bytes), "output": int(mem.output_size_in_bytes),
            "temp": int(mem.temp_size_in_bytes), "alias": int(mem.alias_size_in_bytes),
            "generated_code": int(mem.generated_code_size_in_bytes)}
  memory["total"] = memory["argument"] + memory["output"] + memory["temp"] - memory["alias"]
  return {"compile_seconds": seconds, "memory": memory, "mesh": dict(mesh.shape),
          "xla_log": cap.text, "involuntary_remat_warnings": cap.text.count(REMAT_WARNING),
          "global_batch": b}


def apply_overrides(config, sets) -> None:
  """Apply 'a.b.c=value' strings to `config` in place; the field must exist."""
  import ast  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  for item in sets or ():
    key, eq, raw = item.partition("=")
    if not eq or not key:
      raise UserError(f"--set={item!r}; expected KEY=VALUE, e.g. model.patch_embed=spectral")
    *parents, leaf = key.split(".")
    node = config
    path = parents + [leaf]
    for i, name in enumerate(path):
      if name not in node:
        raise UserError(f"--set={item!r}: config has no field {'.'.join(path[:i + 1])!r}")
      if i < len(parents):
        node = node[name]
    try:
      value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
      value = raw
    node[leaf] = value


def main(argv=None) -> dict[str, Any]:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--config", default="configs/pretrain_14b.py")
  ap.add_argument("--devices", type=int, required=True, help="fake CPU devices (mesh size)")
  ap.add_argument("--batch", type=int, default=None, help="global batch (default: config's)")
  ap.add_argument("--remat", default=None, help="override config.remat.policy")
  ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                  help="override a config field (repeatable), e.g. model.patch_embed=spectral")
  args = ap.parse_args(argv)
  _fake_devices(args.devices)
  from ringmoe_jax.config.load import load_config  # pylint: disable=import-outside-toplevel
  config = load_config(args.config)
  if args.remat:
    config.remat.policy = args.remat
  apply_overrides(config, args.set)
  r = compile_step(config, batch_size=args.batch)
  if r["xla_log"].strip():
    sys.stderr.write(r["xla_log"])
  m = r["memory"]
  gib = lambda x: x / 2**30
  print(f"mesh={r['mesh']} global_batch={r['global_batch']} remat={config.remat.policy}")
  print(f"compile_seconds={r['compile_seconds']:.2f}")
  print(f"per_device_bytes={m['total']}")
  print(f"# per device: argument {gib(m['argument']):.3f} GiB (parameters, optimiser state, "
        f"batch) + output {gib(m['output']):.3f} GiB + temp {gib(m['temp']):.3f} GiB "
        f"(activations, collectives) - alias {gib(m['alias']):.3f} GiB (donated state) = "
        f"{gib(m['total']):.3f} GiB")
  print(f"involuntary_remat_warnings={r['involuntary_remat_warnings']}")
  return r


if __name__ == "__main__":
  run_cli(main, also=(FileNotFoundError,))  # a bad config / path: one 'error:' line, exit 2
