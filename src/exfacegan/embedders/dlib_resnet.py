"""dlib's ResNet face descriptor (128-d, 99.38% on LFW) as an embedder of template-aligned faces.

dlib's descriptor expects a 150x150 chip cut "the way dlib.get_face_chip does it": rotated and
scaled from dlib's 5-point landmarks, with padding 0.25. An ArcFace-template crop is not such a
chip, so each face gets dlib's own chip: the 5-point shape predictor runs inside a fixed box where
the template puts the face (no detection needed), and dlib.get_face_chip cuts the chip from it.
Chips reaching past the crop's border see zeros there.
"""

from __future__ import annotations

import dlib
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from exfacegan.align.dlib_align import dlib_model_path
from exfacegan.errors import ConfigError
from exfacegan.imaging import to_uint8_hwc

# About where dlib's frontal face detector boxes a face aligned to the 112x112 ArcFace template
# (left, top, right, bottom): detections mapped into the template; it only seeds the landmark search.
TEMPLATE_FACE_BOX = (16, 36, 96, 116)
CHIP_SIZE = 150


class DlibEmbedder(nn.Module):
    """Aligned faces [N, 3, H, W] (uint8 or [-1, 1]; the 112 ArcFace template at any scale) -> [N, 128].

    Embeddings are L2-normalised (dlib's raw descriptors are compared by Euclidean distance, 0.6
    being its same-person threshold; normalised, cosine similarity works as for the other embedders).
    num_jitters > 0 averages over that many randomly jittered copies (dlib's option, slower).
    """

    embedding_dim = 128

    def __init__(self, num_jitters: int = 0, padding: float = 0.25) -> None:
        super().__init__()
        if num_jitters < 0 or padding < 0:
            raise ConfigError(f"DlibEmbedder needs num_jitters >= 0 and padding >= 0, got {num_jitters}, {padding}")
        self.num_jitters, self.padding = int(num_jitters), float(padding)
        self._predictor = dlib.shape_predictor(str(dlib_model_path("shape_predictor_5_face_landmarks.dat")))
        self._model = dlib.face_recognition_model_v1(str(dlib_model_path("dlib_face_recognition_resnet_model_v1.dat")))

    def chips(self, images: torch.Tensor) -> np.ndarray:
        """dlib's 150x150 face chips, uint8 [N, 150, 150, 3], of aligned faces."""
        pixels = to_uint8_hwc(images).numpy()
        height, width = pixels.shape[1:3]
        left, top, right, bottom = TEMPLATE_FACE_BOX
        sx, sy = width / 112, height / 112
        box = dlib.rectangle(round(left * sx), round(top * sy), round(right * sx), round(bottom * sy))
        chips = [dlib.get_face_chip(image, self._predictor(image, box), size=CHIP_SIZE, padding=self.padding)
                 for image in pixels]
        return np.stack(chips) if chips else np.zeros((0, CHIP_SIZE, CHIP_SIZE, 3), np.uint8)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        chips = self.chips(images)
        if not len(chips):
            return torch.zeros(0, self.embedding_dim, device=images.device)
        descriptors = self._model.compute_face_descriptor(list(chips), self.num_jitters)
        embeddings = torch.from_numpy(np.array([np.array(d) for d in descriptors], dtype=np.float32))
        return F.normalize(embeddings, dim=1).to(images.device)
