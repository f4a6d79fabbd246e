"""Multi-object tracking metrics: CLEAR-MOT and identity metrics (motmetrics) and HOTA.

`TrackingMetrics` collects, per sequence and frame, ground truth (ids, boxes) and hypotheses
(ids, boxes); boxes xyxy pixels (rotated (N, 5) le90 boxes are scored by their horizontal
envelope, as MOT txt stores them). compute() -> flat {name: float}:

  mota, motp, idf1, idp, idr, precision, recall, id_switches, false_positives, misses,
  fragmentations, mostly_tracked, partially_tracked, mostly_lost  (motmetrics, all sequences
      pooled as its 'OVERALL' row; a gt and a hypothesis may match when IoU >= 0.5, i.e.
      distance 1 - IoU <= 0.5 as `motmetrics.distances.iou_matrix(..., max_iou=0.5)`).
      motp is motmetrics' convention: the mean DISTANCE 1 - IoU of the matches (0 is perfect);
      TrackEval's MOTP is the mean IoU (= 1 - motp).
  hota, deta, assa, detre, detpr, assre, asspr, loca  (HOTA, Luiten et al. 2021, as TrackEval
      computes it: per alpha in 0.05, 0.10, ..., 0.95 a Hungarian matching per frame that
      maximises the global alignment score times the IoU, kept where IoU >= alpha; DetA =
      TP / (TP + FN + FP), AssA = mean over TPs of the matched pair's TPA / (TPA + FNA + FPA),
      HOTA_alpha = sqrt(DetA * AssA); each reported value is the mean over the 19 alphas.
      Sequences combine as TrackEval's: TP / FN / FP summed, AssA / LocA weighted by TP.)
      No MOT17-style preprocessing (distractor classes, zero-marked boxes): score what you give.
  num_frames, num_sequences, num_gt (boxes), num_gt_ids, num_predictions (boxes).

Why HOTA is implemented here: TrackEval (PyPI 1.3.0) pulls in OpenCV, Pillow, pycocotools and
matplotlib for its dataset readers; its HOTA is ~80 lines of numpy, reproduced (and checked
against it) below. motmetrics' `iou_matrix` calls `np.asfarray`, removed in numpy 2, so the
distance matrix is built from its `boxiou` with the same threshold.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment

from ringmoe_jax.tracking.bytetrack import envelope

MAX_IOU_DISTANCE = 0.5  # motmetrics: distance 1 - IoU above this never matches
ALPHAS = np.arange(0.05, 0.99, 0.05)  # TrackEval's 19 localisation thresholds
_EPS = np.finfo(np.float64).eps

# motmetrics metric -> our key.
_MM_KEYS = {"mota": "mota", "motp": "motp", "idf1": "idf1", "idp": "idp", "idr": "idr",
            "precision": "precision", "recall": "recall", "num_switches": "id_switches",
            "num_false_positives": "false_positives", "num_misses": "misses",
            "num_fragmentations": "fragmentations", "mostly_tracked": "mostly_tracked",
            "partially_tracked": "partially_tracked", "mostly_lost": "mostly_lost",
            "num_frames": "num_frames", "num_objects": "num_gt",
            "num_unique_objects": "num_gt_ids", "num_predictions": "num_predictions"}


def _ids(x) -> np.ndarray:
  return np.asarray(x).astype(np.int64).reshape(-1)


def _boxes(x) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return envelope(x.reshape(0, 4) if x.size == 0 else x)


def box_iou_xyxy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """(N, 4), (M, 4) xyxy -> (N, M) IoU by motmetrics' `boxiou` (on x, y, w, h)."""
  from motmetrics.distances import boxiou  # pylint: disable=import-outside-toplevel
  if len(a) == 0 or len(b) == 0:
    return np.zeros((len(a), len(b)))
  xywh = lambda x: np.concatenate([x[:, :2], x[:, 2:] - x[:, :2]], axis=1)
  return np.asarray(boxiou(xywh(a)[:, None], xywh(b)[None]), np.float64)


class TrackingMetrics:
  """Accumulator of tracking results; metrics: module doc.

  update(gt_ids, gt_boxes, hyp_ids, hyp_boxes, sequence=...) adds one frame of a sequence
  (frames in call order); merge(other) adds another accumulator's sequences (a sequence name
  in both is an error); reset(); compute(per_sequence=False).
  """

  def __init__(self):
    self.reset()

  def reset(self) -> None:
    # sequence -> frames [(gt_ids (N,), gt_boxes (N, 4), hyp_ids (M,), hyp_boxes (M, 4))]
    self.sequences: dict[str, list[tuple[np.ndarray, ...]]] = {}

  def update(self, gt_ids, gt_boxes, hyp_ids, hyp_boxes, sequence: str = "seq") -> None:
    """One frame: ids (N,) int, boxes (N, 4) xyxy or (N, 5) le90; ids unique per frame."""
    frame = (_ids(gt_ids), _boxes(gt_boxes), _ids(hyp_ids), _boxes(hyp_boxes))
    where = f"sequence {sequence!r}, frame {len(self.sequences.get(sequence, [])) + 1}"
    for name, ids, boxes in (("ground truth", *frame[:2]), ("hypothesis", *frame[2:])):
      if len(ids) != len(boxes):
        raise ValueError(f"{where}: {len(ids)} {name} ids but {len(boxes)} boxes")
      if len(np.unique(ids)) != len(ids):
        raise ValueError(f"{where}: {name} ids repeat in one frame: {ids.tolist()}")
    self.sequences.setdefault(str(sequence), []).append(frame)

  def update_tracks(self, gt_ids, gt_boxes, outputs, sequence: str = "seq") -> None:
    """One frame with hypotheses as a ByteTracker frame output [TrackOutput]."""
    hyp_ids = [o.track_id for o in outputs]
    hyp_boxes = [envelope(np.asarray(o.box, np.float64).reshape(1, -1))[0] for o in outputs]
    self.update(gt_ids, gt_boxes, hyp_ids, np.asarray(hyp_boxes).reshape(-1, 4), sequence)

  def merge(self, other: "TrackingMetrics") -> "TrackingMetrics":
    both = set(self.sequences) & set(other.sequences)
    if both:
      raise ValueError(f"merge: sequences {sorted(both)} are in both accumulators")
    self.sequences.update(other.sequences)
    return self

  def compute(self, per_sequence: bool = False) -> dict[str, float]:
    """Flat {name: float} over all sequences (keys: module doc); per_sequence adds
    '<sequence>/<name>' for each sequence."""
    names = list(self.sequences)
    if not names:
      raise ValueError("TrackingMetrics.compute: no frames were added")
    ious = {s: [box_iou_xyxy(f[1], f[3]) for f in self.sequences[s]] for s in names}
    mm_rows = _motmetrics(self.sequences, ious)
    hota_rows = {s: hota_sequence([f[0] for f in self.sequences[s]],
                                  [f[2] for f in self.sequences[s]], ious[s]) for s in names}
    out = dict(mm_rows["OVERALL"])
    out.update(_hota_summary(combine_hota(list(hota_rows.values()))))
    out["num_sequences"] = float(len(names))
    if per_sequence:
      for s in names:
        row = dict(mm_rows[s])
        row.update(_hota_summary(hota_rows[s]))
        out.update({f"{s}/{k}": v for k, v in row.items()})
    return out


def _motmetrics(sequences, ious) -> dict[str, dict[str, float]]:
  """CLEAR-MOT / identity metrics per sequence and 'OVERALL' (all sequences pooled)."""
  import motmetrics as mm  # pylint: disable=import-outside-toplevel
  # motmetrics and pandas warn about dtypes and deprecations on every call: not the user's.
  with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
    warnings.simplefilter("ignore")
    accs = []
    for s, frames in sequences.items():
      acc = mm.MOTAccumulator(auto_id=True)
      for (gt_ids, _, hyp_ids, _), iou in zip(frames, ious[s]):
        dist = 1.0 - iou
        acc.update(gt_ids.tolist(), hyp_ids.tolist(),
                   np.where(dist > MAX_IOU_DISTANCE, np.nan, dist))
      accs.append(acc)
    host = mm.metrics.create()
    table = host.compute_many(accs, metrics=list(_MM_KEYS), names=list(sequences),
                              generate_overall=True)
  rows = {}
  for name, row in table.iterrows():
    rows[str(name)] = {key: float(row[m]) for m, key in _MM_KEYS.items()}
  return rows


# ---------------------------------------------------------------------------------------------
# HOTA (TrackEval's algorithm on numpy arrays)


def hota_sequence(gt_ids: list[np.ndarray], hyp_ids: list[np.ndarray],
                  similarity: list[np.ndarray]) -> dict[str, np.ndarray]:
  """HOTA sums of one sequence: per frame gt ids (N_t,), hypothesis ids (M_t,), similarity
  (N_t, M_t) in [0, 1] (IoU). -> {tp, fn, fp, assa, assre, asspr, loca}: (19,) per alpha."""
  na = len(ALPHAS)
  res = {k: np.zeros(na) for k in ("tp", "fn", "fp", "assa", "assre", "asspr", "loca")}
  num_gt = sum(len(g) for g in gt_ids)
  num_hyp = sum(len(h) for h in hyp_ids)
  if num_gt == 0 or num_hyp == 0:
    res["fn"][:], res["fp"][:], res["loca"][:] = num_gt, num_hyp, 1.0
    return res
  # Contiguous 0..K-1 ids over the sequence.
  g_uni, g_inv = np.unique(np.concatenate(gt_ids), return_inverse=True)
  h_uni, h_inv = np.unique(np.concatenate(hyp_ids), return_inverse=True)
  g_idx = np.split(g_inv, np.cumsum([len(g) for g in gt_ids])[:-1])
  h_idx = np.split(h_inv, np.cumsum([len(h) for h in hyp_ids])[:-1])

  # Global alignment: soft (similarity-weighted) co-occurrence of each gt id and hypothesis id.
  potential = np.zeros((len(g_uni), len(h_uni)))
  gt_count = np.zeros((len(g_uni), 1))
  hyp_count = np.zeros((1, len(h_uni)))
  for g, h, sim in zip(g_idx, h_idx, similarity):
    denom = sim.sum(0)[None, :] + sim.sum(1)[:, None] - sim
    sim_iou = np.divide(sim, denom, out=np.zeros_like(sim), where=denom > _EPS)
    potential[g[:, None], h[None, :]] += sim_iou
    gt_count[g] += 1
    hyp_count[0, h] += 1
  alignment = potential / (gt_count + hyp_count - potential)

  matches = np.zeros((na, len(g_uni), len(h_uni)))
  for g, h, sim in zip(g_idx, h_idx, similarity):
    if len(g) == 0 or len(h) == 0:
      res["fp"] += len(h)
      res["fn"] += len(g)
      continue
    rows, cols = linear_sum_assignment(-(alignment[g[:, None], h[None, :]] * sim))
    matched_sim = sim[rows, cols]
    for a, alpha in enumerate(ALPHAS):
      ok = matched_sim >= alpha - _EPS
      k = int(ok.sum())
      res["tp"][a] += k
      res["fn"][a] += len(g) - k
      res["fp"][a] += len(h) - k
      if k:
        res["loca"][a] += matched_sim[ok].sum()
        matches[a, g[rows[ok]], h[cols[ok]]] += 1

  tp = np.maximum(1, res["tp"])
  for a in range(na):
    m = matches[a]
    res["assa"][a] = np.sum(m * m / np.maximum(1, gt_count + hyp_count - m)) / tp[a]
    res["assre"][a] = np.sum(m * m / np.maximum(1, gt_count)) / tp[a]
    res["asspr"][a] = np.sum(m * m / np.maximum(1, hyp_count)) / tp[a]
  res["loca"] = np.maximum(1e-10, res["loca"]) / np.maximum(1e-10, res["tp"])
  return res


def combine_hota(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Sequences' hota_sequence results -> one (TrackEval's combine_sequences)."""
  out = {k: sum(p[k] for p in parts) for k in ("tp", "fn", "fp")}
  tp = np.maximum(1.0, out["tp"])
  for k in ("assa", "assre", "asspr"):
    out[k] = sum(p[k] * p["tp"] for p in parts) / tp
  out["loca"] = (np.maximum(1e-10, sum(p["loca"] * p["tp"] for p in parts))
                 / np.maximum(1e-10, out["tp"]))
  return out


def hota_final(res: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Sums -> per-alpha (19,) hota, deta, assa, detre, detpr, assre, asspr, loca."""
  tp, fn, fp = res["tp"], res["fn"], res["fp"]
  deta = tp / np.maximum(1, tp + fn + fp)
  return {"hota": np.sqrt(deta * res["assa"]), "deta": deta, "assa": res["assa"],
          "detre": tp / np.maximum(1, tp + fn), "detpr": tp / np.maximum(1, tp + fp),
          "assre": res["assre"], "asspr": res["asspr"], "loca": res["loca"]}


def _hota_summary(res: dict[str, np.ndarray]) -> dict[str, float]:
  """Mean over the alphas of each HOTA quantity (what TrackEval reports as HOTA, DetA, ...)."""
  return {k: float(np.mean(v)) for k, v in hota_final(res).items()}
