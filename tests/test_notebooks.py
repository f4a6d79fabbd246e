"""The notebooks (notebooks/*.ipynb) run top to bottom on the micro configs (issue 15 item 2),
and the plot helpers write their PNGs (item 3).

Each notebook runs in its own kernel (nbclient), with a cell injected after its `parameters`
cell: tiny step counts and the micro configs' fields as dotted overrides (the same programs
as the other tests compile, so the session's persistent compilation cache serves them; the
kernel inherits this process's XLA flags: 8 fake CPU devices). Notebook 01 runs once per module
(pre-training + one fine-tuning task) and its WORKDIR feeds the other three. A cell error fails
the test; each test also checks what its notebook writes.
"""
from __future__ import annotations

import json
import os
import pathlib

import numpy as np
import pytest
from helpers import micro_config, micro_finetune_config

from ringmoe_jax.config.load import load_config
from ringmoe_jax.errors import UserError

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOKS = REPO / "notebooks"
SEG = "segmentation:fusion=off"


def _flat(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[prefix + k] = v
  return out


def overrides(base, target) -> dict:
  """The dotted fields where `target` differs from `base` (both ConfigDicts), for the
  notebooks' make_config (ConfigDict.update_from_flattened_dict: every field must exist)."""
  b, t = _flat(base.to_dict()), _flat(target.to_dict())
  missing = sorted(set(t) - set(b))
  assert not missing, f"the micro config adds fields the notebook cannot set: {missing}"
  return {k: v for k, v in t.items() if b[k] != v and k != "train.total_steps"}


def tiny_params(workdir) -> dict:
  return {"WORKDIR": str(workdir), "PRETRAIN_STEPS": 2, "FINETUNE_STEPS": 2,
          # Capacity dispatch: a smaller pre-training step to compile than the dropless loop.
          "PRETRAIN_OVERRIDES": overrides(load_config("pretrain_tiny"),
                                          micro_config(**{"moe.dispatcher": "capacity"})),
          "FINETUNE_OVERRIDES": overrides(load_config("finetune_segmentation:fusion=off"),
                                          micro_finetune_config("segmentation", "fusion=off"))}


def execute(name: str, **params):
  """Runs notebooks/<name>.ipynb with `params` assigned after its parameters cell; -> the
  executed notebook. Any cell's error raises (nbclient's CellExecutionError)."""
  nbformat = pytest.importorskip("nbformat")
  nbclient = pytest.importorskip("nbclient")
  pytest.importorskip("ipykernel")
  book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
  at = [i for i, c in enumerate(book.cells) if "parameters" in c.metadata.get("tags", [])]
  assert len(at) == 1, f"{name}: expected one cell tagged 'parameters'"
  unknown = set(params) - set(_assigned(book.cells[at[0]].source))
  assert not unknown, f"{name}: no parameters {sorted(unknown)}"
  book.cells.insert(at[0] + 1, nbformat.v4.new_code_cell(
      "\n".join(f"{k} = {v!r}" for k, v in params.items())))
  # The kernel imports this checkout's package (not another installed one), with this
  # process's XLA flags and compilation cache.
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(
      [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])}
  nbclient.NotebookClient(book, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": params["WORKDIR"]}}).execute(env=env)
  return book


def _assigned(source: str) -> list[str]:
  return [line.split("=")[0].strip() for line in source.splitlines()
          if "=" in line and not line.startswith((" ", "#"))]


def outputs(book) -> str:
  return "\n".join(o.get("text", "") for c in book.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_notebooks_are_stored_without_outputs_and_install_only_in_colab():
  nbformat = pytest.importorskip("nbformat")
  names = sorted(p.stem for p in NOTEBOOKS.glob("*.ipynb"))
  assert names == ["01_pretrain_finetune", "02_routing_analysis", "03_scene_prediction",
                   "04_pruning"]
  for name in names:
    book = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4)
    nbformat.validate(book)
    code = [c for c in book.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), name
    first = code[0].source
    assert 'if "google.colab" in sys.modules:' in first and "pip install" in first, name


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
  """Notebook 01 on the micro configs: pre-training, then segmentation fine-tuned from it (the
  from-scratch comparison is off: the same program again); -> (its WORKDIR, the notebook)."""
  pytest.importorskip("matplotlib")
  workdir = tmp_path_factory.mktemp("notebooks")
  book = execute("01_pretrain_finetune", TASKS=[SEG], COMPARE_SCRATCH=False,
                 **tiny_params(workdir))
  return workdir, book


def test_01_pretrain_finetune_table(pretrained):
  workdir, book = pretrained
  with open(workdir / "metrics_table.json") as f:
    rows = json.load(f)
  assert [r["task"] for r in rows] == [SEG] and rows[0]["metric"] == "miou"
  assert 0 <= rows[0]["pretrained"] <= 1 and "scratch" not in rows[0]
  assert (workdir / "pretrain_curves.png").stat().st_size > 1000
  assert "encoder from " in outputs(book) and "miou" in outputs(book)


def test_02_routing_analysis(pretrained):
  workdir, _ = pretrained
  book = execute("02_routing_analysis", SHARING_BATCHES=1,
                 **{k: v for k, v in tiny_params(workdir).items() if k != "FINETUNE_STEPS"
                    and k != "FINETUNE_OVERRIDES"})
  assert (workdir / "routing.png").stat().st_size > 1000
  assert (workdir / "dropped.png").stat().st_size > 1000
  text = outputs(book)
  assert "sharing opt~ms=" in text and "most alike:" in text and "mean dropped fraction" in text


def test_03_scene_prediction(pretrained):
  workdir, book = pretrained
  book = execute("03_scene_prediction", SCENE_SIZE=72, OVERLAP=8, **tiny_params(workdir))
  assert (workdir / "overlay.png").stat().st_size > 1000
  assert "nodata kept: True" in outputs(book)


def test_04_pruning(pretrained):
  workdir, _ = pretrained
  # frequency alone: merge=svd's numpy SVDs cost ~17 s here.
  params = {k: v for k, v in tiny_params(workdir).items() if not k.startswith("FINETUNE")}
  execute("04_pruning", PLANS_14B=["modality=opt,frequency=0.25,merge=svd"],
          PLANS_TINY=["frequency=0.5"], PROBE_TILES=64, **params)
  with open(workdir / "pruning_scores.json") as f:
    got = json.load(f)
  total_14b = [row[1] for row in got["sizes_14b"]["modality=opt,frequency=0.25,merge=svd"]]
  assert 14.7 < total_14b[0] < 14.85 and 1.0 < total_14b[-1] < 1.1  # billions
  tiny = got["tiny"]
  assert tiny["frequency=0.5"]["params"] < tiny["full"]["params"]
  assert tiny["frequency=0.5"]["modalities"] == tiny["full"]["modalities"]
  assert all(0 <= s["accuracy"] <= 1 and s["retained"] >= 0 for s in tiny.values())


# ------------------------------------------------------------------------------------ plots


def _png(path) -> bool:
  with open(path, "rb") as f:
    return f.read(8) == b"\x89PNG\r\n\x1a\n" and os.path.getsize(path) > 1000


def test_routing_figure_and_sharing(tmp_path):
  pytest.importorskip("matplotlib")
  from ringmoe_jax.tools import plots, routing_report  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  counts = {"collab": rng.integers(0, 50, (5, 4)), "special": rng.integers(0, 50, (5, 16))}
  per = rng.integers(1, 50, (4, 5, 4)).astype(float)
  per[1] = per[0] * 3                             # ms uses the experts exactly as opt does
  sim = routing_report.modality_sharing(per)
  np.testing.assert_allclose(sim, sim.T)
  assert sim[0, 1] == pytest.approx(1.0) and np.all(np.diag(sim) == 1) and sim.min() >= 0
  path = plots.routing_figure(counts, str(tmp_path / "r.png"),
                              modalities=("opt", "ms", "sar_l1", "sar_l2"), similarity=sim)
  assert _png(path)


def test_plot_metrics_curves_and_missing_keys(tmp_path, capsys):
  pytest.importorskip("matplotlib")
  from ringmoe_jax.tools import plot_metrics  # pylint: disable=import-outside-toplevel
  with open(tmp_path / "metrics.jsonl", "w") as f:
    for step in range(1, 6):
      f.write(json.dumps({"step": step, "loss": 5.0 / step, "grad_norm": "nan",
                          "routing": {"collab": {"dropped_fraction": [0.0, 0.1 * step]}}})
              + "\n")
    f.write('{"step": 6, "loss"')                 # torn last line: skipped
  plotted = plot_metrics.main([f"--workdir={tmp_path}", f"--output={tmp_path / 'c.png'}"])
  assert plotted == ["loss", "grad_norm", "routing/collab/dropped_fraction"]
  assert _png(tmp_path / "c.png") and "plot=" in capsys.readouterr().out
  with pytest.raises(UserError, match="they hold: .*loss"):
    plot_metrics.plot_metrics(str(tmp_path), str(tmp_path / "x.png"), ["nope"])


def test_prediction_overlay_from_geotiffs(tmp_path):
  pytest.importorskip("matplotlib")
  rasterio = pytest.importorskip("rasterio")
  from ringmoe_jax.tools import plots  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  prof = dict(driver="GTiff", height=40, width=50, crs="EPSG:32633",
              transform=rasterio.transform.from_origin(0, 0, 10, 10))
  with rasterio.open(tmp_path / "in.tif", "w", count=3, dtype="float32", nodata=0, **prof) as d:
    d.write(rng.uniform(1, 200, (3, 40, 50)).astype(np.float32))
  classes = rng.integers(0, 7, (1, 40, 50)).astype(np.uint8)
  classes[:, :5] = 255
  with rasterio.open(tmp_path / "p.tif", "w", count=1, dtype="uint8", nodata=255, **prof) as d:
    d.write(classes)
  assert _png(plots.prediction_overlay(str(tmp_path / "in.tif"), str(tmp_path / "p.tif"),
                                       str(tmp_path / "o.png"), class_names=("a", "b")))
  with pytest.raises(UserError, match="one uint8 class band"):
    plots.prediction_overlay(str(tmp_path / "p.tif"), str(tmp_path / "in.tif"),
                             str(tmp_path / "o2.png"))


def test_missing_matplotlib_names_the_extra(monkeypatch):
  import sys  # pylint: disable=import-outside-toplevel
  from ringmoe_jax.tools import plots  # pylint: disable=import-outside-toplevel
  monkeypatch.setitem(sys.modules, "matplotlib", None)       # import matplotlib -> ImportError
  with pytest.raises(UserError, match=r'pip install -e "\.\[plots\]"'):
    plots.pyplot()
