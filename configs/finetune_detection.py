r"""Object detection fine-tuning: CenterNet-style head, horizontal or rotated (le90) boxes.

  python -m ringmoe_jax.main --config=configs/finetune_detection.py \
      --config.init_checkpoint=/tmp/ringmoe_tiny --workdir=/tmp/ft_det
  python -m ringmoe_jax.evaluate --config=configs/finetune_detection.py --workdir=/tmp/ft_det

Simulated scenes. `target=buildings` (default): buildings on land in Gaofen-2 optical tiles;
`target=ships`: ships on water in Gaofen-3 SAR amplitude tiles (the SSDD / HRSID case;
`target=ships_slc`: complex SAR-L1; `target=ships_video`: ships in Jilin-1 video frames, the
detector of `python -m ringmoe_jax.track`). `boxes=horizontal` (default; COCO mAP by pycocotools) or
`boxes=rotated` (DOTA-devkit mAP@50). Prints `step=<n> loss=... heat_loss=... box_loss=...
gt_dropped=...`, `eval step=<n> map50=...`; evaluate prints `map50=...`, `map=...`, `map75=...`
(horizontal) or `map50_allpoint=...` (rotated), per-class `ap50/<class>=...`, `gt_dropped=...`.
Variants: size=tiny|14b, mode=full|frozen|adapter, steps=N (300), target=buildings|ships|
ships_slc|ships_video, boxes=horizontal|rotated.
"""
from ringmoe_jax.config.args import parse_arg
from ringmoe_jax.config.finetune import finetune_config
from ringmoe_jax.errors import UserError

TARGETS = {"buildings": (("gaofen2_pms",), ("building",)),
           "ships": (("gaofen3_amp",), ("ship",)),
           "ships_slc": (("gaofen3_slc",), ("ship",)),
           "ships_video": (("jilin1",), ("ship",))}


def get_config(arg=None):
  a = parse_arg(arg, size="tiny", mode="full", steps=300, target="buildings", boxes="horizontal")
  if a["target"] not in TARGETS:
    raise UserError(f"target={a['target']!r}; expected one of {tuple(TARGETS)}")
  if a["boxes"] not in ("horizontal", "rotated"):
    raise UserError(f"boxes={a['boxes']!r}; expected 'horizontal' or 'rotated'")
  views, classes = TARGETS[a["target"]]
  c = finetune_config("detection", views, a)
  c.task.box_classes = classes
  c.task.class_names = classes
  c.task.num_classes = len(classes)
  c.task.rotated = a["boxes"] == "rotated"
  # Tiles of the crop's size: evaluation (centre crop) then keeps every box of a tile, so
  # mAP counts all objects (training's random crops of a larger tile would drop edge boxes).
  c.task.tile_size = int(c.model.img_size)
  # Ground-truth slots per tile (padded; more are dropped and counted), candidates before NMS,
  # detections kept per image (COCO maxDets), score floor, NMS IoU, box-loss weight.
  c.task.update(max_boxes=32 if a["size"] == "tiny" else 256, max_candidates=256,
                max_detections=100 if a["size"] == "tiny" else 300, score_threshold=0.05,
                nms_iou=0.5, box_weight=2.0)
  return c
