"""The ArcFace 5-point template, batched similarity transforms, and landmark-free aligners.

Points are (x, y) in pixel-centre coordinates (pixel (0, 0) has its centre at 0, as OpenCV and
the ArcFace template use). A matrix [2, 3] maps source pixel coordinates to template coordinates.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine
from torch import nn

from exfacegan.errors import ConfigError, DataError
from exfacegan.imaging import to_unit_range

FACE_SIZE = 112

# Left eye, right eye, nose tip, left and right mouth corner (left/right as seen in the image).
ARCFACE_TEMPLATE = torch.tensor(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=torch.float64,
)
# The paper's training code aligns to the ArcFace template moved 8 pixels to the left.
TEMPLATE_SHIFTS = {"arcface": 0.0, "arcface_shift8": -8.0}


def template_points(template: str = "arcface") -> torch.Tensor:
    """The five template points [5, 2] (float64) of a 112x112 face: `arcface` or `arcface_shift8`."""
    if template not in TEMPLATE_SHIFTS:
        raise ConfigError(f"unknown face template {template!r}; choose one of {sorted(TEMPLATE_SHIFTS)}")
    points = ARCFACE_TEMPLATE.clone()
    points[:, 0] += TEMPLATE_SHIFTS[template]
    return points


def estimate_similarity(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares similarity transforms (rotation, uniform scale, translation; no reflection).

    source [N, K, 2] or [K, 2], target [N, K, 2] or [K, 2] -> matrices [N, 2, 3] with
    `target ~ M[:, :, :2] @ source + M[:, :, 2]`, minimising the summed squared error (Umeyama's
    solution restricted to proper rotations). Computed in float64, returned in source's dtype.
    """
    src, dst = torch.broadcast_tensors(*(p.to(torch.float64) for p in (source, target)))
    if src.ndim == 2:
        src, dst = src[None], dst[None]
    if src.shape[-1] != 2 or src.shape[-2] < 2:
        raise DataError(f"need at least two (x, y) points per image, got shape {tuple(source.shape)}")
    src_mean, dst_mean = src.mean(1, keepdim=True), dst.mean(1, keepdim=True)
    p, q = src - src_mean, dst - dst_mean
    norm = (p**2).sum((1, 2)).clamp_min(1e-12)
    a = (p * q).sum((1, 2)) / norm  # s*cos(theta)
    b = (p[..., 0] * q[..., 1] - p[..., 1] * q[..., 0]).sum(1) / norm  # s*sin(theta)
    linear = torch.stack([torch.stack([a, -b], -1), torch.stack([b, a], -1)], -2)
    shift = dst_mean[:, 0] - (linear @ src_mean[:, 0, :, None])[..., 0]
    dtype = source.dtype if source.is_floating_point() else torch.float32
    return torch.cat([linear, shift[..., None]], -1).to(dtype)


def apply_transform(matrices: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Map points [N, K, 2] (or [K, 2], shared) through matrices [N, 2, 3] -> [N, K, 2]."""
    return points @ matrices[..., :2].transpose(-1, -2) + matrices[..., None, :, 2]


def warp_faces(images: torch.Tensor, matrices: torch.Tensor, size: int = FACE_SIZE) -> torch.Tensor:
    """Warp images [N, C, H, W] by matrices [N, 2, 3] into [N, C, size, size], zero outside.

    Strong downscaling (e.g. a 1024 image to a 112 face) is first done by an antialiased resize, so
    the bilinear warp does not alias; the matrices are adjusted for it.
    """
    matrices = matrices.to(images.device, torch.float32)
    scale = matrices[:, :, :2].det().abs().sqrt().max().item()  # largest face scale in the batch
    height, width = images.shape[-2:]
    if scale < 0.75:
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        images = F.interpolate(images, size=(new_h, new_w), mode="bilinear", antialias=True, align_corners=False)
        # pixel centres: x_old = (x_new + 0.5) * (W / new_w) - 0.5
        sx, sy = width / new_w, height / new_h
        resize = images.new_tensor([[sx, 0.0, 0.5 * sx - 0.5], [0.0, sy, 0.5 * sy - 0.5], [0.0, 0.0, 1.0]])
        matrices = matrices @ resize
    return warp_affine(images, matrices, dsize=(size, size), mode="bilinear", padding_mode="zeros", align_corners=True)


def scaled_template(template: str = "arcface", size: int = FACE_SIZE) -> torch.Tensor:
    """The template points [5, 2] (float32) of a size x size face (pixel centres scaled with the face)."""
    return ((template_points(template) + 0.5) * (size / FACE_SIZE) - 0.5).float()


def align_to_template(images: torch.Tensor, points: torch.Tensor, found: torch.Tensor, target: torch.Tensor,
                      size: int = FACE_SIZE) -> torch.Tensor:
    """Faces [N, 3, size, size] from [-1, 1] images [N, 3, H, W]: those with found [N] warped by the
    similarity transform from their five points [N, 5, 2] to `target` [5, 2]; the others zeros."""
    faces = images.new_zeros(len(images), 3, size, size, dtype=torch.float32)
    found = found.to(images.device)
    if found.any():
        matrices = estimate_similarity(points[found.to(points.device)].double().cpu(), target.double().cpu()).float()
        faces[found] = warp_faces(images[found].float(), matrices, size)
    return faces


def ffhq_crop_points(points: torch.Tensor) -> torch.Tensor:
    """Where five face points [..., 5, 2] land in an FFHQ-aligned image, in [0, 1] image units.

    The FFHQ recipe (NVIDIA's ffhq-dataset): from eye centres and mouth corners, the crop is a
    square centred at eye_avg + 0.1 * eye_to_mouth, of side 2 * max(2 |eye_to_eye|, 1.8 |eye_to_mouth|),
    oriented along eye_to_eye minus the eye_to_mouth vector turned by 90 degrees.
    Input and output are continuous coordinates (pixel corners at integers).
    """
    eye_left, eye_right, _, mouth_left, mouth_right = points.unbind(-2)
    eye_avg, mouth_avg = (eye_left + eye_right) / 2, (mouth_left + mouth_right) / 2
    eye_to_eye, eye_to_mouth = eye_right - eye_left, mouth_avg - eye_avg
    x_axis = eye_to_eye - torch.stack([-eye_to_mouth[..., 1], eye_to_mouth[..., 0]], -1)
    half_side = torch.maximum(eye_to_eye.norm(dim=-1) * 2.0, eye_to_mouth.norm(dim=-1) * 1.8)
    x_axis = x_axis / x_axis.norm(dim=-1, keepdim=True) * half_side[..., None]
    y_axis = torch.stack([-x_axis[..., 1], x_axis[..., 0]], -1)
    centre = eye_avg + 0.1 * eye_to_mouth
    offset = points - centre[..., None, :]
    u = (offset * x_axis[..., None, :]).sum(-1) / half_side[..., None] ** 2
    v = (offset * y_axis[..., None, :]).sum(-1) / half_side[..., None] ** 2
    return torch.stack([u, v], -1) * 0.5 + 0.5


def ffhq_to_template(resolution: int, template: str = "arcface", size: int = FACE_SIZE) -> torch.Tensor:
    """The fixed matrix [2, 3] from an FFHQ-aligned image of `resolution` pixels to the template face.

    The template face itself is taken as the face that FFHQ aligned, so its points are located in
    the FFHQ image by the FFHQ recipe. `size` rescales the 112x112 template (e.g. 224).
    """
    continuous = template_points(template) + 0.5  # pixel centres -> continuous coordinates
    in_ffhq = ffhq_crop_points(continuous) * resolution - 0.5
    target = continuous * (size / FACE_SIZE) - 0.5
    return estimate_similarity(in_ffhq, target)[0]


class FFHQTemplateAligner(nn.Module):
    """Aligns FFHQ-aligned images (StyleGAN FFHQ outputs) to the 112x112 template by one fixed transform.

    No detection: every image counts as found. Any square resolution works; the matrix is built
    for the resolution of the batch.
    """

    def __init__(self, template: str = "arcface", size: int = FACE_SIZE) -> None:
        super().__init__()
        template_points(template)
        self.template, self.size = template, int(size)

    def matrix(self, resolution: int) -> torch.Tensor:
        return ffhq_to_template(resolution, self.template, self.size).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_unit_range(images)
        height, width = images.shape[-2:]
        if height != width:
            raise DataError(f"FFHQ-aligned images are square, got {height}x{width}; use align=dlib for other images")
        matrices = self.matrix(height).to(images.device).expand(len(images), 2, 3)
        faces = warp_faces(images, matrices, self.size)
        return faces, torch.ones(len(images), dtype=torch.bool, device=images.device)


class ResizeAligner(nn.Module):
    """No alignment: resizes whole images to size x size (antialiased bilinear); all found."""

    def __init__(self, size: int = FACE_SIZE) -> None:
        super().__init__()
        self.size = int(size)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        faces = to_unit_range(images)
        if faces.shape[-2:] != (self.size, self.size):
            faces = F.interpolate(faces, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        return faces, torch.ones(len(images), dtype=torch.bool, device=images.device)
