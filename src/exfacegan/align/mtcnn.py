"""MTCNN detect-and-align (the ExFaceGAN paper's aligner): our own cascade with facenet-pytorch's weights.

The detector does what facenet-pytorch 2.6.0's `detect_face` does, step for step (each step and
its conventions are in ../shared/golden/README.md): an image pyramid from `min_face_size` and
`factor`, PNet on every scale (area resampling, candidates with probability >= thresholds[0], NMS
0.5 per scale, then 0.7), box regression and squaring; RNet on 24x24 crops (> thresholds[1], NMS
0.7, regression with +1 sizes, squaring); ONet on 48x48 crops (> thresholds[2]) with five
landmarks, a last regression and an NMS on the intersection over the smaller box (0.7). Crops are
cut at the image border, not padded. It is batched over images (and over all candidates of all
scales in the later stages) on the networks' device.

The aligner keeps each image's largest final box (area (x2 - x1) * (y2 - y1)) and warps its five
points to the ArcFace template. Images without a face that passes the three thresholds come back
as zeros with found=False.
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.align.mtcnn_nets import load_mtcnn_nets, mtcnn_weights_dir
from exfacegan.align.mtcnn_ops import area_resample, crop_windows, integral_image, nms, regress, square
from exfacegan.align.pixel_path import WARP_SOURCES, check_jpeg_quality, jpeg_round_trip, warp_pixels
from exfacegan.align.template import FACE_SIZE, align_to_template, estimate_similarity, scaled_template, template_points
from exfacegan.errors import ConfigError
from exfacegan.imaging import check_batch, to_pixels, to_unit_range

CHANNEL_ORDERS = ("rgb", "bgr")


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales m, m f, m f^2, ... (m = 12 / min_face_size) while the scaled shorter side is >= 12 px."""
    scale = 12.0 / min_face_size
    length = min(height, width) * scale
    scales = []
    while length >= 12:
        scales.append(scale)
        scale, length = scale * factor, length * factor
    return scales


def _check_cascade(min_face_size: float, thresholds: tuple[float, float, float], factor: float) -> None:
    if not min_face_size > 0:
        raise ConfigError(f"MTCNN min_face_size must be > 0, got {min_face_size}")
    if len(thresholds) != 3 or not all(0 <= t <= 1 for t in thresholds):
        raise ConfigError(f"MTCNN thresholds must be three probabilities (P-, R-, O-Net), got {list(thresholds)}")
    if not 0 < factor < 1:
        raise ConfigError(f"MTCNN factor (pyramid scale step) must be in (0, 1), got {factor}")


def _check_settings(min_face_size, thresholds, factor, detect_size, channel_order, template, size, weights,
                    warp_source="render", detect_jpeg=None, face_jpeg=None) -> Path:
    _check_cascade(min_face_size, thresholds, factor)
    if warp_source not in WARP_SOURCES:
        raise ConfigError(f"MTCNN warp_source must be one of {WARP_SOURCES}, got {warp_source!r}")
    check_jpeg_quality("detect_jpeg", detect_jpeg)
    check_jpeg_quality("face_jpeg", face_jpeg)
    if detect_size is not None and detect_size < 12:
        raise ConfigError(f"MTCNN detect_size must be null or >= 12 pixels, got {detect_size}")
    if channel_order not in CHANNEL_ORDERS:
        raise ConfigError(f"MTCNN channel_order must be one of {CHANNEL_ORDERS}, got {channel_order!r}")
    if size < 1:
        raise ConfigError(f"aligned face size must be >= 1, got {size}")
    template_points(template)
    return mtcnn_weights_dir(weights)


@dataclass
class Detections:
    """All faces found in a batch, grouped by image and largest box first within an image.

    boxes [M, 4] (x1, y1, x2, y2), probs [M], points [M, 5, 2] (x, y; left eye, right eye, nose,
    left and right mouth corner), image [M] (index in the batch): float32, input pixels.
    """

    boxes: torch.Tensor
    probs: torch.Tensor
    points: torch.Tensor
    image: torch.Tensor

    def select(self, keep: torch.Tensor) -> Detections:
        return Detections(self.boxes[keep], self.probs[keep], self.points[keep], self.image[keep])


def _normalise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


class MTCNNDetector(nn.Module):
    """The three-stage cascade on integer pixel batches [N, 3, H, W] (float or uint8 values 0..255)."""

    def __init__(self, min_face_size: float = 20.0, thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
                 factor: float = 0.709, weights: str | Path | None = None) -> None:
        super().__init__()
        _check_cascade(min_face_size, thresholds, factor)
        self.min_face_size, self.thresholds, self.factor = float(min_face_size), tuple(map(float, thresholds)), float(factor)
        self.nets = load_mtcnn_nets(weights)

    @property
    def device(self) -> torch.device:
        return self.nets.pnet.conv1.weight.device

    def scales(self, height: int, width: int) -> list[float]:
        return pyramid_scales(height, width, self.min_face_size, self.factor)

    def _proposals(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: squared boxes [K, 4] and their image indices [K]."""
        height, width = pixels.shape[-2:]
        candidates = []
        for scale in self.scales(height, width):
            size = (int(height * scale + 1), int(width * scale + 1))
            offsets, prob = self.nets.pnet(_normalise(F.interpolate(pixels, size=size, mode="area")))
            index, y, x = (prob >= self.thresholds[0]).nonzero().unbind(1)
            cell = torch.stack([x, y], 1).float()
            boxes = torch.cat([((2 * cell + 1) / scale).floor(), ((2 * cell + 12) / scale).floor()], 1)
            score, offset = prob[index, y, x], offsets[index, :, y, x]
            keep = nms(boxes, score, index, 0.5)
            candidates.append((boxes[keep], score[keep], offset[keep], index[keep]))
        if not candidates:  # the image is smaller than min_face_size
            return pixels.new_zeros(0, 4), torch.zeros(0, dtype=torch.long, device=pixels.device)
        boxes, score, offset, index = (torch.cat(parts) for parts in zip(*candidates))
        keep = nms(boxes, score, index, 0.7)
        return square(regress(boxes[keep], offset[keep], plus_one=False)), index[keep]

    def _crops(self, table: torch.Tensor, boxes: torch.Tensor, index: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Normalised size x size crops of the boxes that read at least one pixel, and which boxes those are."""
        top, left, rows, cols, nonempty = crop_windows(boxes, table.shape[-2] - 1, table.shape[-1] - 1)
        crops = area_resample(table, index[nonempty], top[nonempty], left[nonempty], rows[nonempty], cols[nonempty], (size, size))
        return _normalise(crops), nonempty

    @torch.no_grad()
    def forward(self, pixels: torch.Tensor) -> Detections:
        """Every face in integer pixel images [N, 3, H, W] (channel order as given to the networks)."""
        pixels = pixels.to(self.device)
        table = integral_image(pixels)
        boxes, index = self._proposals(pixels.float())
        # Stage 2: RNet on the proposals.
        crops, nonempty = self._crops(table, boxes, index, 24)
        offsets, prob = self.nets.rnet(crops) if len(crops) else (crops.new_zeros(0, 4), crops.new_zeros(0))
        passed = prob > self.thresholds[1]
        boxes, index, prob, offsets = boxes[nonempty][passed], index[nonempty][passed], prob[passed], offsets[passed]
        keep = nms(boxes, prob, index, 0.7)
        boxes, index = square(regress(boxes[keep], offsets[keep], plus_one=True)), index[keep]
        # Stage 3: ONet, landmarks, last regression, NMS on the smaller box's area.
        crops, nonempty = self._crops(table, boxes, index, 48)
        offsets, marks, prob = self.nets.onet(crops) if len(crops) else (crops.new_zeros(0, 4), crops.new_zeros(0, 10), crops.new_zeros(0))
        passed = prob > self.thresholds[2]
        boxes, index, prob, offsets, marks = boxes[nonempty][passed], index[nonempty][passed], prob[passed], offsets[passed], marks[passed]
        size = (boxes[:, 2:] - boxes[:, :2] + 1)[:, None, :]
        points = size * marks.view(-1, 2, 5).transpose(1, 2) + boxes[:, None, :2] - 1
        boxes = regress(boxes, offsets, plus_one=True)
        found = Detections(boxes, prob, points, index).select(nms(boxes, prob, index, 0.7, mode="min"))
        area = (found.boxes[:, 2] - found.boxes[:, 0]) * (found.boxes[:, 3] - found.boxes[:, 1])
        by_area = area.argsort(descending=True, stable=True)
        return found.select(by_area[found.image[by_area].argsort(stable=True)])


class MTCNNAligner(nn.Module):
    """MTCNN detection + five landmarks -> faces [N, 3, size, size] on the template, found [N].

    Takes uint8 or [-1, 1] float RGB batches. min_face_size, thresholds, factor: the detector's
    (facenet-pytorch's meanings). detect_size: if set, detection runs on the image resized to
    detect_size x detect_size by nearest neighbour (torch's legacy `interpolate(mode="nearest")`,
    as the paper code resizes its 1024 images to 150), points mapped back; the warp reads the full
    image. channel_order="bgr" feeds the detector BGR (the paper code's labelling path). weights: a
    folder with pnet.pt, rnet.pt, onet.pt; None: the installed facenet-pytorch's data folder.

    The paper code's files between its steps: detect_jpeg (quality) round-trips the detector's input
    (resized, rounded to uint8) through JPEG first; warp_source="detector_input" warps the face from that
    input with plain bilinear interpolation (its `norm_crop` on the 150 px image) instead of from the full
    render with antialiasing ("render"); face_jpeg (quality) round-trips the aligned face through JPEG.
    """

    def __init__(
        self,
        min_face_size: float = 60.0,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        factor: float = 0.709,
        detect_size: int | None = None,
        channel_order: str = "rgb",
        template: str = "arcface",
        size: int = FACE_SIZE,
        weights: str | Path | None = None,
        warp_source: str = "render",
        detect_jpeg: int | None = None,
        face_jpeg: int | None = None,
    ) -> None:
        super().__init__()
        _check_settings(min_face_size, thresholds, factor, detect_size, channel_order, template, size, weights,
                        warp_source, detect_jpeg, face_jpeg)
        self.detect_size, self.channel_order, self.size = detect_size, channel_order, int(size)
        self.warp_source, self.detect_jpeg, self.face_jpeg = warp_source, detect_jpeg, face_jpeg
        self.register_buffer("target", scaled_template(template, self.size), persistent=False)
        self.detector = MTCNNDetector(min_face_size, tuple(thresholds), factor, weights)

    def detector_input(self, images: torch.Tensor) -> torch.Tensor:
        """The uint8 RGB images the detector reads: resized to detect_size (nearest), JPEG round trip if asked."""
        check_batch(images)
        if self.detect_size is not None:  # nearest neighbour only selects pixels: resizing first is the same, and cheaper
            images = F.interpolate(images, size=(self.detect_size, self.detect_size), mode="nearest")
        pixels = to_pixels(images)
        return pixels if self.detect_jpeg is None else jpeg_round_trip(pixels, self.detect_jpeg)

    def _find(self, pixels: torch.Tensor) -> Detections:
        """The detector on uint8 RGB pixels, in the configured channel order; coordinates of `pixels`."""
        return self.detector(pixels.flip(1) if self.channel_order == "bgr" else pixels)

    def detect(self, images: torch.Tensor) -> Detections:
        """Every face in the batch, in input pixel coordinates."""
        height, width = images.shape[-2:]
        side = self.detect_size
        found = self._find(self.detector_input(images))
        if side is None:
            return found
        # Legacy nearest reads input pixel floor(j L / side) for output pixel j: on average j L / side - delta.
        scale = found.boxes.new_tensor([width / side, height / side])
        delta = found.boxes.new_tensor([(1 - math.gcd(width, side) / side) / 2, (1 - math.gcd(height, side) / side) / 2])
        found.points = found.points * scale - delta
        found.boxes = (found.boxes.view(-1, 2, 2) * scale - delta).view(-1, 4)
        return found

    def landmarks(self, images: torch.Tensor, found: Detections | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Five points [N, 5, 2] of each image's largest face (float32, input pixels; zeros where none), found [N]."""
        found = self.detect(images) if found is None else found
        first = torch.ones_like(found.image, dtype=torch.bool)
        first[1:] = found.image[1:] != found.image[:-1]
        points = found.points.new_zeros(len(images), 5, 2)
        points[found.image[first]] = found.points[first]
        present = torch.zeros(len(images), dtype=torch.bool, device=points.device)
        present[found.image[first]] = True
        return points.to(images.device), present.to(images.device)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_unit_range(images)
        if self.warp_source == "render":
            points, found = self.landmarks(images)
            faces = align_to_template(images, points, found, self.target, self.size)
        else:  # the paper code's norm_crop: warp the face from the (small, JPEG-decoded) image it detected on
            pixels = self.detector_input(images)
            points, found = self.landmarks(pixels, self._find(pixels))
            faces = images.new_zeros(len(images), 3, self.size, self.size)
            if found.any():
                matrices = estimate_similarity(points[found].double().cpu(), self.target.double().cpu())
                faces[found] = to_unit_range(warp_pixels(pixels[found.to(pixels.device)], matrices, self.size)).to(faces.device)
        if self.face_jpeg is not None:
            faces = to_unit_range(jpeg_round_trip(to_pixels(faces), self.face_jpeg)) * found[:, None, None, None]
        return faces, found


def check_mtcnn_settings(**settings: Any) -> Path:
    """MTCNNAligner's keyword arguments (e.g. an `align` config node without `_target_`) refused in one
    line (ConfigError) and its weights looked up (CheckpointError), loading nothing: for a config check
    before any network loads. Returns the weights folder."""
    try:
        bound = inspect.signature(MTCNNAligner).bind(**settings)
    except TypeError as error:
        raise ConfigError(f"MTCNN aligner: {error}") from None
    bound.apply_defaults()
    return _check_settings(**bound.arguments)
