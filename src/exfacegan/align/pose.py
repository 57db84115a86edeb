"""Head pose (yaw, pitch, roll in degrees) from the five face points an aligner found.

The five points (left eye, right eye, nose tip, left and right mouth corner, left/right as seen in the
image) are fitted by a scaled orthographic camera to a mean 3-D five-point face, in closed form and batched:
the least-squares affine map A [2, 3] from the centred model points to the centred image points, whose nearest
scaled rotation (the polar factor of A, by SVD) gives the rotation's first two rows; the third is their cross
product. A perspective fit (OpenCV's solvePnP) would need the camera's focal length, which generated images do
not have; at face distances the two differ by a few degrees.

Conventions (x right, y down in the image; z into it): R = Rz(roll) Ry(yaw) Rx(pitch) maps the model face
(frontal: all angles 0) into the camera. yaw > 0: the nose turns toward the image's left; pitch > 0: the
face looks down; roll > 0: the face turns clockwise in the image. Mirroring an image negates yaw and roll
and keeps pitch exactly (the model is left-right symmetric); rotating an image in its plane by θ clockwise
adds θ to roll and leaves yaw and pitch.

The model: x and y from the ArcFace template (left-right symmetrised), depths from adult anthropometry with
the template's 35.2 px between the eyes taken as 63 mm: the nose tip 20 mm in front of the eyes, the mouth
corners 2 mm behind them. Absolute angles are only as good as these means; signs, mirror symmetry and roll
are not affected by them.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from exfacegan.align.template import ARCFACE_TEMPLATE, align_to_template
from exfacegan.imaging import to_unit_range
from exfacegan.data.manifest import POSE_FIELDS

MM_PER_PIXEL = 63.0 / float(ARCFACE_TEMPLATE[1, 0] - ARCFACE_TEMPLATE[0, 0])
POSE_COLUMNS = tuple(POSE_FIELDS)
MIRROR = (1, 0, 2, 4, 3)  # each point's left-right partner


def mean_face() -> torch.Tensor:
    """The mean 3-D five-point face [5, 3] (float64, template pixels), left-right symmetric, centred."""
    points, partners = ARCFACE_TEMPLATE, ARCFACE_TEMPLATE[list(MIRROR)]
    x = (points[:, 0] - partners[:, 0]) / 2   # the nose tip is its own partner: x = 0
    y = (points[:, 1] + partners[:, 1]) / 2
    depth = torch.tensor([0.0, 0.0, -20.0, 2.0, 2.0], dtype=torch.float64) / MM_PER_PIXEL
    face = torch.stack([x, y, depth], 1)
    return face - face.mean(0)


def head_pose(points: torch.Tensor | np.ndarray, found: torch.Tensor | np.ndarray | None = None) -> np.ndarray:
    """float32 [N, 3] (yaw, pitch, roll) in degrees of five points [N, 5, 2] (any pixel units); NaN rows where
    `found` is False or the points are not finite."""
    pts = torch.as_tensor(np.asarray(points) if not isinstance(points, torch.Tensor) else points).double().cpu()
    ok = torch.isfinite(pts).all(-1).all(-1)
    if found is not None:
        ok &= torch.as_tensor(np.asarray(found) if not isinstance(found, torch.Tensor) else found).bool().cpu()
    pose = torch.full((len(pts), 3), math.nan, dtype=torch.float64)
    if ok.any():
        pose[ok] = _fit(pts[ok])
    return pose.float().numpy()


def _fit(points: torch.Tensor) -> torch.Tensor:
    model = mean_face()                                   # [5, 3], centred
    image = points - points.mean(1, keepdim=True)         # [M, 5, 2]
    affine = (torch.linalg.pinv(model) @ image).transpose(1, 2)  # [M, 2, 3], least squares: image ~ model A^T
    u, _, vh = torch.linalg.svd(affine, full_matrices=False)  # A = U S Vh; nearest scaled rotation rows U Vh
    rows = u @ vh                                          # [M, 2, 3], orthonormal rows
    rotation = torch.cat([rows, torch.linalg.cross(rows[:, 0], rows[:, 1])[:, None]], 1)
    yaw = torch.atan2(-rotation[:, 2, 0], rotation[:, 2, 1:].norm(dim=1))
    pitch = torch.atan2(rotation[:, 2, 1], rotation[:, 2, 2])
    roll = torch.atan2(rotation[:, 1, 0], rotation[:, 0, 0])
    return torch.rad2deg(torch.stack([yaw, pitch, roll], 1))


def align_with_points(aligner: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(faces, found, points [N, 5, 2]) — what `aligner(images)` returns plus the five points it warped from.

    Detecting aligners (MTCNN, dlib) expose `landmarks`; the faces are then warped exactly as their forward
    does. Any other aligner (the FFHQ template, a plain resize) finds no points: they come back NaN.
    """
    if hasattr(aligner, "landmarks") and hasattr(aligner, "target"):
        images = to_unit_range(images)
        points, found = aligner.landmarks(images)
        faces = align_to_template(images, points, found, aligner.target, aligner.size)
        return faces, found.to(images.device), points.float()
    faces, found = aligner(images)
    return faces, found, torch.full((len(images), 5, 2), math.nan)
