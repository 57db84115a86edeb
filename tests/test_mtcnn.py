"""MTCNN against facenet-pytorch 2.6.0's own detections (../shared/golden/mtcnn_*), and the aligners' inputs."""

import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exfacegan.align import (
    DlibAligner,
    FFHQTemplateAligner,
    MTCNNAligner,
    ResizeAligner,
    apply_transform,
    estimate_similarity,
    template_points,
)
from exfacegan.align.mtcnn import Detections, check_mtcnn_settings, pyramid_scales
from exfacegan.align.mtcnn_nets import mtcnn_weights_dir
from exfacegan.align.mtcnn_ops import area_resample, integral_image, nms
from exfacegan.errors import CheckpointError, ConfigError

SETTINGS = (60, 20)


@pytest.fixture(scope="session")
def mtcnn_weights():
    """facenet-pytorch 2.6.0's data folder: skipped where absent, but never under CI, where it must exist."""
    try:
        return mtcnn_weights_dir()
    except CheckpointError as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{error} (under CI)")
        pytest.skip(str(error))


needs_weights = pytest.mark.usefixtures("mtcnn_weights")


@pytest.fixture(scope="module")
def golden(golden_dir):
    images = np.load(golden_dir / "mtcnn_images.npz")
    return {f"img_{i:02d}": images[f"img_{i:02d}"] for i in range(13)}, dict(np.load(golden_dir / "mtcnn_golden.npz"))


@pytest.fixture(scope="module")
def aligners(mtcnn_weights):
    return {size: MTCNNAligner(min_face_size=size) for size in SETTINGS}


def _batch(*arrays: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _assert_matches(found, reference: dict, prefix: str) -> None:
    boxes = reference[f"{prefix}_boxes"]
    assert len(found.boxes) == len(boxes), prefix
    if len(boxes):
        assert np.abs(found.boxes.numpy() - boxes).max() < 1.0, prefix
        assert np.abs(found.points.numpy() - reference[f"{prefix}_landmarks"]).max() < 1.0, prefix
        assert np.allclose(found.probs.numpy(), reference[f"{prefix}_probs"], atol=1e-4), prefix


@needs_weights
@pytest.mark.slow
@pytest.mark.parametrize("size", SETTINGS)
def test_every_face_box_landmarks_and_probability_match_facenet_pytorch(golden, aligners, size):
    images, reference = golden
    for index in range(13):
        image = images[f"img_{index:02d}"]
        prefix = f"img_{index:02d}_minface{size}"
        assert pyramid_scales(*image.shape[:2], size, 0.709) == pytest.approx(reference[f"{prefix}_scales"], rel=1e-12)
        _assert_matches(aligners[size].detect(_batch(image)), reference, prefix)


@needs_weights
@pytest.mark.slow
@pytest.mark.parametrize("size", SETTINGS)
def test_a_batch_finds_what_the_reference_batch_finds_per_image(golden, aligners, size):
    images, reference = golden
    indices = reference["batch4_image_indices"]
    found = aligners[size].detect(_batch(*(images[f"img_{i:02d}"] for i in indices)))
    for item in range(len(indices)):
        _assert_matches(found.select(found.image == item), reference, f"batch4_minface{size}_item{item}")


@needs_weights
def test_landmarks_of_the_largest_face_float_and_uint8_alike_and_no_face_found_false(golden, aligners):
    images, reference = golden
    pixels = _batch(images["img_07"], np.full_like(images["img_07"], 128))  # two faces; a flat grey image
    points, found = aligners[60].landmarks(pixels)
    assert found.tolist() == [True, False]
    assert np.abs(points[0].numpy() - reference["img_07_minface60_landmarks"][0]).max() < 1.0  # largest, not most probable
    assert not points[1].any()
    points_float, found_float = aligners[60].landmarks(pixels.float() / 127.5 - 1)
    assert torch.equal(found_float, found) and torch.allclose(points_float, points, atol=1e-4)
    noface = aligners[20].landmarks(_batch(images["img_08"]))
    assert noface[1].tolist() == [False]
    faces, small = aligners[60](_batch(images["img_02"][:50, :50]))  # smaller than min_face_size: no pyramid at all
    assert small.tolist() == [False] and not faces.any()


def _nearest_150_correspondence(length: int, side: int = 150) -> tuple[np.ndarray, np.ndarray, float]:
    """Worked by hand, pixel by pixel: a legacy-nearest resize from `length` to `side` copies input pixel
    floor(j * length / side) to output pixel j, so a point at output pixel centre j sits at input pixel centre
    floor(j * length / side). The straight line through those correspondences has slope length / side and lies
    below j * length / side by the mean fractional part (0.4933 px for 1024 -> 150)."""
    j = np.arange(side)
    source = np.floor(j * length / side)
    return j, source, float(np.mean(j * length / side - source))


@needs_weights
@pytest.mark.parametrize("index", [11, 12])
def test_paper_input_path_nearest_150_maps_points_back_to_the_pixels_the_resize_read(golden, index):
    """detect_size=150 resizes as the paper code's `interpolate(imgs, 150)`: a 1024 image whose legacy-nearest
    150 px version is golden image 11 (12) gives that image's facenet-pytorch detections, mapped to the 1024
    pixels the resize read. The mapping is worked here from the pixel correspondences (not from the aligner's
    formula); leaving out the half-pixel correction (p * 1024 / 150) misses it by 0.49 px."""
    images, reference = golden
    small = torch.from_numpy(images[f"img_{index:02d}"]).permute(2, 0, 1)[None]
    source = torch.clamp(torch.ceil(torch.arange(1024) * 150 / 1024).long(), max=149)
    large = small[:, :, source][:, :, :, source]
    assert torch.equal(F.interpolate(large.float(), size=(150, 150), mode="nearest").byte(), small)
    points, found = MTCNNAligner(detect_size=150).landmarks(large)
    assert found.tolist() == [True]
    detected = reference[f"img_{index:02d}_minface60_landmarks"][0].astype(np.float64)  # facenet-pytorch, 150 px
    j, read, below = _nearest_150_correspondence(1024)
    assert below == pytest.approx(0.49333, abs=1e-5)
    ours = points[0].numpy().astype(np.float64)
    assert np.abs(ours - (detected * 1024 / 150 - below)).max() < 2e-3  # the fitted line, to float32 and golden precision
    piecewise = np.interp(detected, j, read)  # between the pixel centres the resize read
    assert np.abs(ours - piecewise).max() < 0.5  # the line's largest gap to the correspondences is 0.4933 px


@needs_weights
def test_bgr_feeds_the_detector_flipped_channels(aligners, golden):
    images, _ = golden
    image = _batch(images["img_01"])
    bgr = MTCNNAligner(channel_order="bgr").detect(image)
    _assert_matches(aligners[60].detect(image.flip(1)), {f"x_{k}": getattr(bgr, k).numpy() for k in ("boxes", "probs")}
                    | {"x_landmarks": bgr.points.numpy()}, "x")


@needs_weights
def test_aligned_face_shows_the_landmarks_where_the_similarity_transform_puts_them(golden, aligners):
    """The warp is checked by detecting again: on the aligned face (padded, so MTCNN sees some
    context) the five points are where the transform sends the input's points, and its eyes are on
    the template's."""
    images, _ = golden
    for name, template in (("img_01", "arcface"), ("img_03", "arcface_shift8")):
        aligner = MTCNNAligner(template=template)
        pixels = _batch(images[name])
        points, _ = aligner.landmarks(pixels)
        target = template_points(template).float()
        mapped = apply_transform(estimate_similarity(points, target), points)[0]
        faces, found = aligner(pixels.float() / 127.5 - 1)
        assert faces.shape == (1, 3, 112, 112) and found.tolist() == [True]
        assert faces.min() >= -1 - 1e-5 and faces.max() <= 1 + 1e-5
        again, present = aligners[20].landmarks(F.pad(faces, (56, 56, 56, 56)))
        assert present.tolist() == [True]
        assert (again[0] - 56 - mapped).norm(dim=-1).max() < 3.0
        assert (mapped[:2] - target[:2]).norm(dim=-1).max() < 3.0


@needs_weights
def test_settings_are_refused_before_weights_load_and_missing_weights_say_how_to_get_them(tmp_path):
    for bad in ({"channel_order": "rbg"}, {"detect_size": 8}, {"thresholds": [0.6, 0.7]}, {"factor": 1.2},
                {"min_face_size": 0}, {"template": "mtcnn"}):
        with pytest.raises(ConfigError):
            MTCNNAligner(**bad, weights=tmp_path)
    with pytest.raises(CheckpointError, match=r"pnet.pt, rnet.pt, onet.pt missing .*pip install --no-deps facenet-pytorch==2.6.0"):
        MTCNNAligner(weights=tmp_path)
    with pytest.raises(CheckpointError, match="pip install --no-deps facenet-pytorch==2.6.0"):
        check_mtcnn_settings(weights=tmp_path / "absent")  # what a config check calls: nothing loads
    with pytest.raises(ConfigError, match="detect_sise"):
        check_mtcnn_settings(detect_sise=150)
    with pytest.raises(ConfigError, match="channel_order"):
        check_mtcnn_settings(channel_order="rbg", weights=tmp_path / "absent")
    assert check_mtcnn_settings(min_face_size=60, detect_size=150) == mtcnn_weights_dir()
    assert check_mtcnn_settings(detect_size=12) == mtcnn_weights_dir()  # the smallest PNet input is accepted
    with pytest.raises(ConfigError, match="detect_size must be null or >= 12 pixels, got 11"):
        check_mtcnn_settings(detect_size=11)
    (tmp_path / "pnet.pt").write_bytes(b"not a state dict")
    (tmp_path / "rnet.pt").write_bytes(b"")
    (tmp_path / "onet.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="cannot load MTCNN weights"):
        MTCNNAligner(weights=tmp_path)


def test_area_resample_equals_torch_area_interpolation_on_crops():
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (2, 3, 97, 131), generator=generator)
    table = integral_image(pixels)
    crops = [(1, 5, 7, 30, 41), (0, 0, 100, 9, 31), (1, 0, 0, 97, 131), (0, 90, 3, 7, 5)]
    image, top, left, height, width = (torch.tensor(column) for column in zip(*crops))
    for size in ((24, 24), (48, 48), (20, 150)):
        ours = area_resample(table, image, top, left, height, width, size)
        for k, (n, y, x, h, w) in enumerate(crops):
            expected = F.interpolate(pixels[n : n + 1, :, y : y + h, x : x + w].float(), size=size, mode="area")
            assert torch.equal(ours[k : k + 1], expected)


def _greedy_nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str) -> list[int]:
    """Textbook greedy NMS, one box at a time, in float32 like the reference."""
    one = np.float32(1 if mode == "min" else 0)
    x1, y1, x2, y2 = boxes.T
    area = (x2 - x1 + one) * (y2 - y1 + one)
    remaining, kept = list(np.argsort(-scores, kind="stable")), []
    while remaining:
        i, rest = remaining[0], np.array(remaining[1:], dtype=int)
        kept.append(int(i))
        w = np.maximum(np.float32(0), np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]) + one)
        h = np.maximum(np.float32(0), np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]) + one)
        inter = w * h
        overlap = inter / np.minimum(area[i], area[rest]) if mode == "min" else inter / (area[i] + area[rest] - inter)
        remaining = list(rest[overlap <= threshold])
    return kept


@pytest.mark.parametrize("mode", ["iou", "min"])
def test_batched_nms_keeps_what_one_box_at_a_time_greedy_nms_keeps(mode):
    generator = np.random.default_rng(3)
    corners = generator.uniform(0, 60, (300, 2)).astype(np.float32)
    boxes = np.concatenate([corners, corners + generator.uniform(5, 30, (300, 2)).astype(np.float32)], 1)
    scores = generator.uniform(0, 1, 300).astype(np.float32)
    groups = generator.integers(0, 3, 300)
    kept = nms(torch.from_numpy(boxes), torch.from_numpy(scores), torch.from_numpy(groups), 0.5, mode).tolist()
    expected = []
    for group in range(3):
        members = np.flatnonzero(groups == group)
        expected += [members[i] for i in _greedy_nms(boxes[members], scores[members], 0.5, mode)]
    assert sorted(kept) == sorted(expected) and len(expected) < 250
    assert np.all(np.diff(scores[kept]) <= 0)


ALIGNERS = {
    "ffhq_template": FFHQTemplateAligner,
    "none": ResizeAligner,
    "dlib": lambda: DlibAligner(detect_size=320),
    "mtcnn": lambda: MTCNNAligner(min_face_size=40),
}


@pytest.mark.parametrize("name", ALIGNERS)
def test_every_aligner_gives_the_same_faces_for_uint8_and_for_float_images(name, request):
    from skimage.data import astronaut

    if name == "mtcnn":
        request.getfixturevalue("mtcnn_weights")
    aligner = ALIGNERS[name]()
    pixels = torch.from_numpy(astronaut()).permute(2, 0, 1)[None]
    faces_u8, found_u8 = aligner(pixels)
    faces_float, found_float = aligner(pixels.float() / 127.5 - 1)
    assert found_u8.tolist() == found_float.tolist() == [True]
    assert faces_u8.dtype == torch.float32 and faces_u8.abs().max() <= 1 + 1e-5
    assert torch.allclose(faces_u8, faces_float, atol=1e-5)


@needs_weights
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_batch_finds_what_the_reference_finds(golden):
    images, reference = golden
    aligner = MTCNNAligner(min_face_size=20).cuda()
    indices = reference["batch4_image_indices"]
    found = aligner.detect(_batch(*(images[f"img_{i:02d}"] for i in indices)).cuda())
    assert found.boxes.is_cuda
    found = Detections(*(part.cpu() for part in (found.boxes, found.probs, found.points, found.image)))
    for item in range(len(indices)):
        _assert_matches(found.select(found.image == item), reference, f"batch4_minface20_item{item}")


def test_without_facenet_pytorch_installed_the_weights_come_from_its_wheel_through_the_registry(tmp_path, monkeypatch):
    import dataclasses
    import importlib.metadata
    import zipfile

    from exfacegan import weights
    from exfacegan.align import mtcnn_nets

    installed = mtcnn_weights_dir()  # the installed distribution's data folder (make install puts it there)
    wheel = tmp_path / "facenet_pytorch-2.6.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for name in ("pnet", "rnet", "onet"):
            archive.write(installed / f"{name}.pt", f"facenet_pytorch/data/{name}.pt")
    for name in ("pnet", "rnet", "onet"):  # the published member hashes stay; only the archive is local
        entry = weights.REGISTRY[f"mtcnn-{name}"]
        monkeypatch.setitem(weights.REGISTRY, f"mtcnn-{name}", dataclasses.replace(
            entry, url=wheel.as_uri(), sha256=weights.sha256_of(wheel)))

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(mtcnn_nets.importlib.metadata, "distribution", not_installed)
    monkeypatch.setenv("EXFACEGAN_CACHE", str(tmp_path / "cache"))
    folder = mtcnn_weights_dir()
    assert folder.is_relative_to(tmp_path / "cache")
    for name in ("pnet", "rnet", "onet"):
        assert weights.sha256_of(folder / f"{name}.pt") == weights.REGISTRY[f"mtcnn-{name}"].member_sha256
    nets = mtcnn_nets.load_mtcnn_nets()
    reference = torch.load(installed / "onet.pt", weights_only=True)
    assert all(torch.equal(nets["onet"].state_dict()[k], v) for k, v in reference.items())
