"""Multi-object tracking on satellite video, host side (numpy): detections -> tracks -> metrics.

kalman.py     KalmanFilter: constant velocity on (cx, cy, w, h, vx, vy, vw, vh), ByteTrack's
              noise weights with pixel floors for tiny targets; batched initiate / predict /
              update.
bytetrack.py  ByteTracker + ByteTrackConfig (two-pass association of high / low score boxes,
              IoU or normalised centre cost, lost-track buffer, min_hits activation); boxes
              (N, 4) xyxy or (N, 5) le90 rotated (tracked by their horizontal envelope).
              Box helpers: envelope, iou_matrix, center_distance, linear_assignment.
mot_io.py     MOT Challenge txt read (MotTable; bad lines -> UserError naming file and line) /
              write (`frame,id,x,y,w,h,score,-1,-1,-1`), read_sequence_folder (frame files in
              name order + a rasterio loader).
metrics.py    TrackingMetrics: MOTA, MOTP, IDF1, ID switches, precision / recall (motmetrics,
              IoU >= 0.5) and HOTA / DetA / AssA / LocA (TrackEval's algorithm, own numpy).

Runtime dependencies: numpy, scipy; motmetrics for TrackingMetrics.compute; rasterio for
read_sequence_folder's loader.
"""
from ringmoe_jax.tracking.bytetrack import (ByteTrackConfig, ByteTracker, TrackOutput,
                                            center_distance, envelope, iou_matrix,
                                            linear_assignment, outputs_to_arrays)
from ringmoe_jax.tracking.kalman import KalmanFilter
from ringmoe_jax.tracking.metrics import TrackingMetrics, hota_sequence
from ringmoe_jax.tracking.mot_io import (MotTable, read_mot_txt, read_sequence_folder,
                                         write_mot_txt)

__all__ = ["ByteTrackConfig", "ByteTracker", "TrackOutput", "KalmanFilter", "TrackingMetrics",
           "MotTable", "read_mot_txt", "write_mot_txt", "read_sequence_folder", "envelope",
           "iou_matrix", "center_distance", "linear_assignment", "outputs_to_arrays",
           "hota_sequence"]
