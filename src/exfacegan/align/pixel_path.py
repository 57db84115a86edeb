"""The paper code's image files between its steps, as torch ops: JPEG round trips and a warp from stored pixels.

The paper code writes each StyleGAN image as a 150x150 JPEG (PIL, quality 75) and its aligned faces as JPEG
(OpenCV, quality 95), and warps the face from the image it detected on (OpenCV `warpAffine`, bilinear, no
antialiasing). `MTCNNAligner` applies these when its `detect_jpeg`, `face_jpeg` and `warp_source` ask for them.
"""

from __future__ import annotations

import io

import numpy as np
import torch
from kornia.geometry.transform import warp_affine
from PIL import Image

from exfacegan.errors import ConfigError

WARP_SOURCES = ("render", "detector_input")


def check_jpeg_quality(key: str, quality: int | None) -> None:
    if quality is not None and (isinstance(quality, bool) or not isinstance(quality, int) or not 1 <= quality <= 100):
        raise ConfigError(f"MTCNN {key} must be null or a JPEG quality in [1, 100], got {quality!r}")


def jpeg_round_trip(pixels: torch.Tensor, quality: int) -> torch.Tensor:
    """uint8 RGB [N, 3, H, W] encoded as JPEG at `quality` (libjpeg defaults: 4:2:0, no optimisation) and decoded."""
    array = pixels.permute(0, 2, 3, 1).contiguous().cpu().numpy()
    decoded = []
    for image in array:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
        decoded.append(np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")))
    return torch.from_numpy(np.stack(decoded)).permute(0, 3, 1, 2).to(pixels.device)


def warp_pixels(pixels: torch.Tensor, matrices: torch.Tensor, size: int) -> torch.Tensor:
    """uint8 faces [N, 3, size, size]: uint8 images [N, 3, H, W] warped by matrices [N, 2, 3] (pixel centres) with
    plain bilinear interpolation, zero outside, rounded: OpenCV's `warpAffine` (no antialiasing), in floating point
    where OpenCV rounds positions to 1/32 px and weights to 15 bits (so a value may differ by 1)."""
    warped = warp_affine(pixels.float(), matrices.to(pixels.device, torch.float32), dsize=(size, size),
                         mode="bilinear", padding_mode="zeros", align_corners=True)
    return warped.round().clamp(0, 255).to(torch.uint8)
