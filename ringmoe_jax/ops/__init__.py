"""Array operations shared by the task heads (jnp, jittable, static shapes; numpy ports where the
host needs them).

boxes.py  box conventions (horizontal xyxy, rotated le90), conversions, IoU (horizontal, exact
          rotated polygon IoU in jnp and numpy), GIoU loss, ProbIoU loss.
nms.py    per-class greedy NMS (horizontal, rotated) with padded outputs, top-K detections.
"""
