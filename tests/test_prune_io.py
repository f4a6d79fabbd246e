"""The pruning transform's I/O (ringmoe_jax/prune/run.py, calibrate.py): the block-by-block
write, calibration on a dataset of the framework's readers, and the evaluation of a fine-tune of
a pruned run."""
from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from helpers import micro_config
from ringmoe_jax.prune import run, transforms
from ringmoe_jax.prune.__main__ import main as prune_main
from ringmoe_jax.prune.plan import pruned_config

# Stage 2 holds two scanned pairs, so a stacked leaf has two rows (layers) to read one by one.
DEPTHS = (1, 1, 4, 1)
NUM_BLOCKS = sum(DEPTHS)
PLAN = "modality=opt,ms,sar_l2,frequency=0.5"  # the classification task's modalities
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config():
  return micro_config(**{"model.depths": DEPTHS})


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A micro pre-training workdir (7 blocks) at step 3 in the trainer's layout, random
  parameters and routing counts. Its state holds what the transform reads (params, step,
  routing_counts), written by train/checkpoint.Checkpointer as trainer.save writes it; numpy
  values, so nothing is compiled to make it."""
  # pylint: disable=import-outside-toplevel
  from flax import nnx
  from ringmoe_jax.sensors.modalities import MODALITIES
  from ringmoe_jax.tasks import get_task
  from ringmoe_jax.train.checkpoint import Checkpointer
  from ringmoe_jax.train.model import abstract_model
  from ringmoe_jax.train.trainer import build_registry, make_data
  wd = str(tmp_path_factory.mktemp("prune_io") / "src")
  config = _config()
  registry = build_registry(config)
  task = get_task(config, registry)
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda x: (0.05 * rng.standard_normal(x.shape)).astype(x.dtype),
                        nnx.state(abstract_model(config), nnx.Param).to_pure_dict())
  counts = {"special": rng.integers(0, 50, (NUM_BLOCKS, 16)).astype(np.float32),
            "collab": rng.integers(0, 50, (NUM_BLOCKS, 4)).astype(np.float32)}
  state = {"step": np.asarray(3, np.int32), "params": params, "routing_counts": counts}
  meta = {"config": json.loads(config.to_json_best_effort()), "task": task.name,
          "init_checkpoint": None, "sensors": json.loads(registry.to_json()),
          "modalities": list(MODALITIES),
          "routing_counts": {k: v.tolist() for k, v in counts.items()}}
  ckpt = Checkpointer(os.path.join(wd, "checkpoints"), max_to_keep=1, async_save=False)
  ckpt.save(3, state, make_data(config, registry, task).get_state(), meta)
  ckpt.close()
  return wd


def _restore(workdir, abstract):
  """(state, data item, meta) of a run's latest checkpoint restored as `main` restores it
  (train/checkpoint.Checkpointer.restore into `abstract`: ShapeDtypeStructs with shardings)."""
  from ringmoe_jax.train.checkpoint import open_run  # pylint: disable=import-outside-toplevel
  ckpt, step, _ = open_run(workdir)
  try:
    return ckpt.restore(step, abstract)
  finally:
    ckpt.close()


def test_block_by_block_write_equals_one_shot_and_never_holds_the_model(source, tmp_path,
                                                                         monkeypatch):
  """The streamed transform reads the parameters outside the blocks once, then each block
  alone (a scanned pair's layer as one row of its stacked leaves), and writes a checkpoint
  equal bit for bit to the one-shot transform (all params restored, apply_plan, build_state)."""
  reads: list[int] = []
  real_read = run.Source.read

  def recording_read(self, leaves):
    got = real_read(self, leaves)
    reads.append(sum(v.nbytes for v in got.values()))
    return got

  def whole_model(self):
    raise AssertionError("the transform restored every parameter at once")
  monkeypatch.setattr(run.Source, "read", recording_read)
  monkeypatch.setattr(run.Source, "restore_params", whole_model)
  out = str(tmp_path / "pruned")
  plan = run.prune(source, PLAN, out, log=lambda _: None)
  monkeypatch.undo()
  # The one-shot reference: every parameter restored, apply_plan, build_state.
  src = run.Source(source)
  try:
    full = src.restore_params()
    sub_config = pruned_config(src.config, plan.config_overrides, src.registry)
    want = run.build_state(sub_config, src.task(sub_config), transforms.apply_plan(full, plan),
                           transforms.apply_counts(src.counts, plan), src.step)
  finally:
    src.close()
  total = sum(x.nbytes for x in jax.tree.leaves(full))

  # One read outside the blocks, then one per block; every parameter byte read exactly once.
  assert len(reads) == 1 + NUM_BLOCKS and sum(reads) == total, (reads, total)
  outside, blocks = reads[0], reads[1:]
  # Stage 2's four blocks are rows of two pairs' stacked leaves: each read is one layer.
  assert blocks[2] == blocks[3] == blocks[4] == blocks[5] and blocks[2] > 0
  assert max(reads) <= outside + max(blocks) < total, (outside, block_bytes, total)
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          want)
  got, data, meta = _restore(out, abstract)
  flat_got = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(got)))
  flat_want = dict(jax.tree_util.tree_leaves_with_path(jax.device_get(want)))
  assert flat_got.keys() == flat_want.keys()
  for k, v in flat_want.items():
    assert flat_got[k].dtype == v.dtype, jax.tree_util.keystr(k)
    np.testing.assert_array_equal(flat_got[k], v, err_msg=jax.tree_util.keystr(k))
  assert meta["pruned"]["plan"] == PLAN and data is not None
  assert int(got["step"]) == 3


# ------------------------------------------------------------------ calibration on a dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
  """{'ingested': an ingestion output of one 64 x 88 gaofen2_pms (opt) raster: 6 tiles of 40 px;
  'reader': FORMAT:ROOT:SENSOR of a class-folder tree of 6 gaofen3_amp (sar_l2) GeoTIFFs of
  40 px}, written here with the package's own ingest and the readers' file layout. Six tiles
  each: every calibration batch of this file (32 at most) has one shape, one program."""
  from test_ingest import _write_tif  # pylint: disable=import-outside-toplevel
  from test_readers import _write  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data import ingest  # pylint: disable=import-outside-toplevel
  root = tmp_path_factory.mktemp("calibration")
  rng = np.random.default_rng(1)
  raster = _write_tif(root / "pms.tif", rng.integers(1, 255, (3, 64, 88)).astype(np.uint16))
  ingest.ingest([raster], ["gaofen2_pms"], str(root / "ingested"), size=40, stride=24)
  for c in ("field", "forest"):
    for i in range(3):
      _write(str(root / "sar" / c / f"{i}.tif"),
             rng.uniform(0.1, 2.0, (1, 40, 40)).astype(np.float32))
  return {"ingested": str(root / "ingested"), "reader": f"class_folders:{root / 'sar'}:gaofen3_amp",
          "root": root}


def test_calibration_on_ingested_and_reader_datasets_counts_every_tile(source, datasets):
  """Each dataset's tiles, counted in eval mode per block and router in meta['routing_counts']'
  layout: every token top_k times in the collaborative router, and in the special router of
  its own modality's experts only (opt: columns 0-3, sar_l2: 12-15)."""
  from ringmoe_jax.prune import calibrate  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.prune import plan as plan_lib  # pylint: disable=import-outside-toplevel
  src = run.Source(source)
  try:
    config, registry, task = src.config, src.registry, src.task()
    model = calibrate.bind(config, task, src.restore_params())
  finally:
    src.close()
  grid = config.model.img_size // config.model.patch_size
  tokens = np.array([grid ** 2 // 4 ** stage for stage, _ in plan_lib.block_layout(config)])
  k = config.moe.top_k
  for name, tiles, cols in (("ingested", 6, slice(0, 4)), ("reader", 6, slice(12, 16))):
    batches = calibrate.dataset_batches(config, registry, datasets[name], 4)
    assert sum(len(b["modality"]) for b in batches) == tiles, name
    counts = calibrate.routing_counts(model, batches)
    assert counts["collab"].shape == (NUM_BLOCKS, 4) and counts["special"].shape == (NUM_BLOCKS, 16)
    np.testing.assert_array_equal(counts["collab"].sum(1), tiles * tokens * k)
    np.testing.assert_array_equal(counts["special"][:, cols].sum(1), tiles * tokens * k)
    assert counts["special"].sum() == counts["special"][:, cols].sum(), name
  # --calibration_batches caps the tiles: one batch of 2 holds two of the six.
  assert [len(b["modality"]) for b in calibrate.dataset_batches(
      config, registry, datasets["ingested"], 1, batch_size=2)] == [2]


def test_calibration_dataset_bad_input_messages(source, datasets):
  from ringmoe_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.prune import calibrate  # pylint: disable=import-outside-toplevel
  root = datasets["root"]
  with pytest.raises(UserError, match=r"/nowhere does not exist; expected one of simulator"):
    prune_main([f"--checkpoint={source}", "--plan=frequency=0.5", f"--output={root / 'x'}",
                f"--calibration={root / 'nowhere'}"])
  with pytest.raises(UserError, match=r"/gone does not exist"):
    calibrate.check_calibration(f"class_folders:{root / 'gone'}:gaofen3_amp", 1)
  with pytest.raises(UserError, match="FORMAT:ROOT:SENSOR"):
    calibrate.check_calibration(f"class_folders:{root / 'sar'}", 1)
  assert not os.path.exists(root / "x")
  src = run.Source(source)
  try:
    config, registry = src.config, src.registry
  finally:
    src.close()
  # A sub-model of one modality: the other modalities' tiles name what it has.
  ms_only = pruned_config(config, {"model.modalities": ["ms"]}, registry)
  with pytest.raises(UserError, match="sensor 'gaofen2_pms' is opt but this model has only ms"):
    calibrate.dataset_batches(ms_only, registry, datasets["ingested"], 1)
  # Empty datasets: an ingestion that kept no tile (all nodata), a class folder without images.
  from test_ingest import _write_tif  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.data import ingest  # pylint: disable=import-outside-toplevel
  blank = _write_tif(root / "blank.tif", np.zeros((3, 64, 64), np.uint16))
  ingest.ingest([blank], ["gaofen2_pms"], str(root / "no_tiles"), size=40, stride=24)
  with pytest.raises(UserError, match=r"--calibration=.*no_tiles: no tile shards"):
    calibrate.dataset_batches(config, registry, str(root / "no_tiles"), 1)
  (root / "empty" / "field").mkdir(parents=True)
  with pytest.raises(UserError, match=r"--calibration=class_folders:.*empty: no records"):
    calibrate.dataset_batches(config, registry, f"class_folders:{root / 'empty'}:gaofen3_amp", 1)
  (root / "not_ingested").mkdir()
  with pytest.raises(UserError, match="no manifest"):
    calibrate.dataset_batches(config, registry, str(root / "not_ingested"), 1)


# ------------------------------------------------------------- evaluating a pruned fine-tune


def test_evaluate_cli_on_a_fine_tune_of_a_pruned_run(source, datasets, tmp_path, capsys):
  """Prune (KC merge, its routing weights calibrated on the reader dataset), fine-tune the
  pruned encoder one step through the trainer (init_checkpoint + the plan's config_overrides,
  as the README says), then `python -m ringmoe_jax.evaluate` on that run in a subprocess: its
  eval.json and printed metrics are finite and equal the trainer's own evaluation."""
  import subprocess  # pylint: disable=import-outside-toplevel
  import sys  # pylint: disable=import-outside-toplevel
  from helpers import micro_finetune_config  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.train import trainer  # pylint: disable=import-outside-toplevel
  from threadpoolctl import threadpool_limits  # pylint: disable=import-outside-toplevel
  pruned = str(tmp_path / "pruned")
  # One BLAS thread for KC's SVDs: on the shared 2-core machine, with the other core busy (a
  # second pytest worker), OpenBLAS's two threads made each SVD ~100x slower (4 s, measured).
  with threadpool_limits(1, user_api="blas"):
    plan = prune_main([f"--checkpoint={source}", f"--plan={PLAN},merge=svd",
                       f"--output={pruned}", f"--calibration={datasets['reader']}",
                       "--calibration_batches=1"])
  assert f"calibration={datasets['reader']}" in capsys.readouterr().out
  # The reader's tiles are all sar_l2: the members' weights come from its counts (the special
  # experts of opt and ms received no token, so they weigh nothing in KC's bias).
  for bp in plan.blocks:
    w = dict(zip(bp.merge["members"], bp.merge["weights"]))
    assert all(w[m] == 0 for m in w if m.startswith(("special/opt/", "special/ms/")))
    assert sum(w[m] for m in w if m.startswith("special/sar_l2/")) > 0
  # A frozen encoder: the smallest training program to compile (the pruned encoder is read the
  # same way in every mode).
  ft = micro_finetune_config("classification", "mode=frozen", **{
      "init_checkpoint": pruned, "model.depths": DEPTHS, "train.total_steps": 1,
      "train.eval_every": 1, **plan.config_overrides})
  result = trainer.train(ft, str(tmp_path / "ft"))
  assert result["step"] == 1 and np.isfinite(result["losses"][-1])
  config_json = tmp_path / "ft_config.json"
  config_json.write_text(ft.to_json_best_effort())
  proc = subprocess.run(
      [sys.executable, "-m", "ringmoe_jax.evaluate",
       f"--config={os.path.join(REPO, 'configs', 'pruned.py')}:{config_json}",
       f"--workdir={tmp_path / 'ft'}"], cwd=REPO, capture_output=True, text=True, timeout=300,
      check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  with open(tmp_path / "ft" / "eval.json") as f:
    saved = json.load(f)
  assert saved["step"] == 1 and saved["task"] == "classification"
  printed = dict(line.split("=", 1) for line in proc.stdout.split() if "=" in line)
  main = saved["main_metric"]
  assert np.isfinite(saved["metrics"][main]) and np.isfinite(float(printed[main]))
  for k, v in result["eval"].items():  # undefined metrics (one class absent) are null in both
    if v is None or not np.isfinite(v):
      assert saved["metrics"][k] is None, k
    else:
      assert np.isclose(saved["metrics"][k], v) and np.isclose(float(printed[k]), v), k
