import math

import numpy as np
import pytest
import skimage.data as skdata
import skimage.transform
import torch
import torch.nn.functional as F
from PIL import Image

from exfacegan.align import (
    FFHQTemplateAligner,
    ResizeAligner,
    apply_transform,
    estimate_similarity,
    template_points,
    warp_faces,
)
from exfacegan.errors import ConfigError, DataError

torch.set_num_threads(2)


def _similarity(angle: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    return torch.stack([torch.stack([cos, -sin, shift[:, 0]], -1), torch.stack([sin, cos, shift[:, 1]], -1)], -2)


def test_similarity_estimate_recovers_known_transforms_in_a_batch():
    generator = torch.Generator().manual_seed(0)
    n = 16
    truth = _similarity(
        torch.rand(n, generator=generator, dtype=torch.float64) * 6 - 3,
        torch.rand(n, generator=generator, dtype=torch.float64) * 3 + 0.1,
        torch.randn(n, 2, generator=generator, dtype=torch.float64) * 50,
    )
    source = torch.randn(n, 5, 2, generator=generator, dtype=torch.float64) * 30
    estimate = estimate_similarity(source, apply_transform(truth, source))
    assert estimate.shape == (n, 2, 3)
    assert torch.allclose(estimate, truth, atol=1e-9)


def test_similarity_estimate_is_the_least_squares_fit_skimage_finds():
    generator = torch.Generator().manual_seed(1)
    source = torch.randn(4, 5, 2, generator=generator, dtype=torch.float64) * 40 + 100
    target = template_points() + torch.randn(4, 5, 2, generator=generator, dtype=torch.float64) * 3
    ours = estimate_similarity(source, target)
    for index in range(4):
        reference = skimage.transform.estimate_transform("similarity", source[index].numpy(), target[index].numpy())
        assert np.allclose(ours[index].numpy(), reference.params[:2], atol=1e-8)


def test_warp_moves_pixels_where_the_matrix_says_also_when_downscaling():
    image = torch.zeros(2, 3, 1024, 1024)
    image[:, :, 300:310, 600:610] = 1.0  # a square whose centre is (604.5, 304.5)
    shrink = torch.tensor([[0.1, 0.0, 3.0], [0.0, 0.1, 5.0]])
    shift = torch.tensor([[1.0, 0.0, -550.0], [0.0, 1.0, -250.0]])
    faces = torch.cat([warp_faces(image[:1], shrink[None], 112), warp_faces(image[1:], shift[None], 112)])
    assert faces.shape == (2, 3, 112, 112)
    grid = torch.arange(112, dtype=torch.float32)
    for face, expected in zip(faces[:, 0], [(63.45, 35.45), (54.5, 54.5)]):
        mass = face.sum()
        centre = ((face.sum(0) * grid).sum() / mass, (face.sum(1) * grid).sum() / mass)
        assert centre == pytest.approx(expected, abs=0.05)
    assert float(faces[1, 0].sum()) == pytest.approx(100.0, rel=1e-4)  # no scaling: no loss


def _ffhq_quad(points: np.ndarray) -> np.ndarray:
    """NVIDIA's FFHQ crop quad from five points (eyes, nose, mouth corners), written from the recipe."""
    eye_left, eye_right, _, mouth_left, mouth_right = points
    eye_avg = (eye_left + eye_right) * 0.5
    eye_to_eye = eye_right - eye_left
    mouth_avg = (mouth_left + mouth_right) * 0.5
    eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    x /= np.hypot(*x)
    x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _blob_images(points: np.ndarray, size: int, sigma: float) -> list[Image.Image]:
    yy, xx = np.mgrid[:size, :size]
    return [Image.fromarray(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma**2)).astype(np.float32), "F")
            for x, y in points]


def _centroids(faces: torch.Tensor) -> torch.Tensor:
    grid = torch.arange(faces.shape[-1], dtype=torch.float64)
    weights = faces[:, 0].double().clamp_min(0)
    weights = weights * (weights > 0.2 * weights.amax((1, 2), keepdim=True))
    mass = weights.sum((1, 2))
    return torch.stack([(weights.sum(1) * grid).sum(1) / mass, (weights.sum(2) * grid).sum(1) / mass], -1)


@pytest.mark.parametrize("resolution, template", [(256, "arcface"), (512, "arcface"), (384, "arcface_shift8")])
def test_ffhq_aligner_puts_ffhq_aligned_landmarks_on_the_template(resolution, template):
    # A face with the template's geometry, placed rotated and scaled in a photo, FFHQ-aligned by
    # the FFHQ recipe (PIL quad transform, as NVIDIA's script does), then aligned by our fixed matrix.
    template_face = template_points("arcface").numpy()
    angle, scale, shift = 0.3, 2.5, np.array([180.0, 140.0])
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]]) * scale
    in_photo = template_face @ rotation.T + shift
    quad = (_ffhq_quad(in_photo) + 0.5).flatten()
    ffhq = [blob.transform((resolution, resolution), Image.QUAD, tuple(quad), Image.BILINEAR)
            for blob in _blob_images(in_photo, 600, sigma=2.0 * scale)]
    images = torch.from_numpy(np.stack([np.asarray(b) for b in ffhq]))[:, None].expand(-1, 3, -1, -1)
    faces, found = FFHQTemplateAligner(template)(images * 2 - 1)
    assert faces.shape == (5, 3, 112, 112) and found.all()
    expected = template_points(template)
    assert torch.allclose(_centroids(faces + 1), expected, atol=0.5)


def test_ffhq_aligner_and_resize_aligner_reject_bad_input_and_templates():
    with pytest.raises(ConfigError, match="arcface"):
        FFHQTemplateAligner("mtcnn")
    with pytest.raises(DataError, match="square"):
        FFHQTemplateAligner()(torch.zeros(1, 3, 64, 80))
    faces, found = ResizeAligner()(torch.rand(2, 3, 64, 80) * 2 - 1)
    assert faces.shape == (2, 3, 112, 112) and found.tolist() == [True, True]
    with pytest.raises(DataError, match="batches"):
        ResizeAligner()(torch.zeros(3, 64, 64))


@pytest.fixture(scope="module")
def astronaut() -> torch.Tensor:
    return torch.from_numpy(skdata.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1


@pytest.fixture(scope="module")
def dlib_aligner():
    from exfacegan.align import DlibAligner

    return DlibAligner()


def test_dlib_aligner_puts_the_astronauts_eyes_on_the_template(astronaut, dlib_aligner):
    from exfacegan.align import DlibAligner

    noise = torch.rand(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)) * 2 - 1
    faces, found = dlib_aligner(torch.cat([astronaut, noise, astronaut.flip(-1)]))
    assert faces.shape == (3, 3, 112, 112)
    assert found.tolist() == [True, False, True]
    assert not faces[1].any()
    eyes = template_points()[:2]

    # The detected points, mapped by the estimated transform.
    points, _ = dlib_aligner.landmarks(astronaut)
    mapped = apply_transform(dlib_aligner.matrices(points).double(), points)[0]
    assert (mapped[:2] - eyes).abs().max() < 4.0

    # Landmarks found afresh on the aligned crops (doubled, so the detector sees a large enough face).
    again, found_again = DlibAligner(upsample=1).landmarks(F.interpolate(faces[[0, 2]], scale_factor=2, mode="bilinear"))
    assert found_again.all()
    assert ((again[:, :2] + 0.5) / 2 - 0.5 - eyes).abs().max() < 4.0


def test_dlib_aligner_size_bound_and_detection_size(astronaut, dlib_aligner):
    from exfacegan.align import DlibAligner

    assert DlibAligner(min_face_size=150).landmarks(astronaut)[1].tolist() == [False]
    full, _ = dlib_aligner.landmarks(astronaut)
    small, found = DlibAligner(detect_size=256, upsample=1).landmarks(astronaut)
    assert found.all()
    assert (small - full).abs().max() < 3.0  # landmarks found at half size, in full-size pixels


def test_dlib_embedder_tells_the_astronaut_from_other_faces(astronaut, dlib_aligner):
    from exfacegan.align import DlibAligner
    from exfacegan.embedders import DlibEmbedder

    faces, found = dlib_aligner(torch.cat([astronaut, astronaut.flip(-1)]))
    lfw = torch.from_numpy(skdata.lfw_subset()[:6]).float()  # 25x25 grey LFW faces of other people
    lfw = F.interpolate(lfw[:, None].expand(-1, 3, -1, -1), size=(150, 150), mode="bicubic").clamp(0, 1) * 2 - 1
    others, others_found = DlibAligner(upsample=1, min_face_size=20)(lfw)
    assert found.all() and others_found.sum() >= 3
    embedder = DlibEmbedder()
    assert embedder.embedding_dim == 128
    embeddings = embedder(torch.cat([faces, others[others_found]]))
    assert embeddings.shape == (2 + int(others_found.sum()), 128) and embeddings.dtype == torch.float32
    assert torch.allclose(embeddings.norm(dim=1), torch.ones(len(embeddings)), atol=1e-5)
    similarity = embeddings @ embeddings[0]
    assert similarity[1] > similarity[2:].max() + 0.05
    as_uint8 = ((faces[:1] + 1) * 127.5).round().to(torch.uint8)
    assert torch.allclose(embedder(as_uint8), embedder((as_uint8.float() - 127.5) / 127.5), atol=1e-6)


@pytest.mark.slow
def test_dlib_cnn_detector_finds_the_same_landmarks(astronaut, dlib_aligner):
    from exfacegan.align import DlibAligner

    noise = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(1)) * 2 - 1
    points, found = DlibAligner(detector="cnn").landmarks(astronaut)
    assert found.tolist() == [True]
    assert (points - dlib_aligner.landmarks(astronaut)[0]).abs().max() < 3.0
    assert DlibAligner(detector="cnn").landmarks(noise)[1].tolist() == [False]
    with pytest.raises(ConfigError, match="detector"):
        DlibAligner(detector="mtcnn")
