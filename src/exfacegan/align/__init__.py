"""Face aligners: images [N, 3, H, W] (uint8 or [-1, 1] floats) -> (faces [N, 3, 112, 112] in [-1, 1], found bool [N])."""

from exfacegan.align.mtcnn import MTCNNAligner
from exfacegan.align.template import (
    ARCFACE_TEMPLATE,
    FACE_SIZE,
    FFHQTemplateAligner,
    ResizeAligner,
    align_to_template,
    apply_transform,
    estimate_similarity,
    ffhq_crop_points,
    ffhq_to_template,
    scaled_template,
    template_points,
    warp_faces,
)
from exfacegan.lazy import lazy_attributes

# dlib is imported only when its aligner is asked for.
__getattr__ = lazy_attributes(__name__, {"DlibAligner": "exfacegan.align.dlib_align"})

__all__ = [
    "ARCFACE_TEMPLATE", "FACE_SIZE", "DlibAligner", "FFHQTemplateAligner", "MTCNNAligner", "ResizeAligner",
    "align_to_template", "apply_transform", "estimate_similarity", "ffhq_crop_points", "ffhq_to_template",
    "scaled_template", "template_points", "warp_faces",
]
