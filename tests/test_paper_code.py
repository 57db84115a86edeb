"""The `*_code` profiles' functions against the ExFaceGAN paper code's own outputs (tests/data/paper_code, made by
make_paper_code_data.py there from the paper code's scripts): its z stream, its labelling pixel path on real
photographs, and which code each of its boundaries moves."""

import hashlib

import numpy as np
import pytest
import torch

from exfacegan.align import MTCNNAligner
from exfacegan.align.pixel_path import jpeg_round_trip
from exfacegan.stages.fit import paired_codes
from exfacegan.stages.sample import latent_codes, paper_normal
from tests.test_mtcnn import mtcnn_weights  # noqa: F401  (fixture)

DATA = "tests/data/paper_code/paper_code.npz"


@pytest.fixture(scope="module")
def paper():
    return dict(np.load(DATA))


@pytest.mark.parametrize("seed_key, z_key", [("seed", "z"), ("other_seed", "z_other")])
def test_z_stream_is_the_paper_codes(paper, seed_key, z_key):
    expected = paper[z_key].astype(np.float32)  # LatsDataset's float64, cast as its generator wrapper casts it
    seed = int(paper[seed_key])
    assert np.array_equal(paper_normal(len(expected), 512, seed), expected)
    codes = latent_codes(len(expected), 512, seed, "paper")
    assert np.array_equal(np.concatenate([codes(np.arange(0, 5)), codes(np.arange(5, len(expected)))]), expected)
    assert not np.array_equal(latent_codes(len(expected), 512, seed, "seeded")(np.arange(len(expected))), expected)


def test_pairing_by_position_is_the_paper_codes(paper):
    found, w, expected = paper["found"], paper["w"], paper["paired_latents"]
    references = np.flatnonzero(found)
    assert len(references) == len(expected) == len(paper["boundary_names"])
    assert np.array_equal(w[paired_codes(references, len(w), "position")], expected)
    # our default moves each reference's own code: the paper code moves another from its first dropped image on
    moved = ~np.all(w[paired_codes(references, len(w), "reference")] == expected, axis=1)
    first_drop = int(np.flatnonzero(~found)[0])
    assert np.array_equal(np.flatnonzero(moved), np.arange(first_drop, len(references)))


@pytest.fixture(scope="module")
def renders(golden_dir, paper):
    """The photographs the paper code was given as uint8 renders: its crops, and the grey image without a face."""
    images = np.load(golden_dir / "mtcnn_images.npz")
    crops = [images[f"img_{i:02d}"][top:bottom, left:right] for i, (top, bottom, left, right) in enumerate(paper["crops"])]
    crops.insert(int(paper["no_face_at"]), np.full((300, 300, 3), 128, np.uint8))
    return [torch.from_numpy(np.ascontiguousarray(c)).permute(2, 0, 1)[None] for c in crops]


PAPER_LABEL_ALIGN = dict(min_face_size=60, detect_size=150, channel_order="bgr", template="arcface_shift8",
                         warp_source="detector_input", detect_jpeg=75, face_jpeg=95)


@pytest.mark.slow
@pytest.mark.usefixtures("mtcnn_weights")
def test_labelling_pixel_path_is_the_paper_codes(paper, renders):
    aligner = MTCNNAligner(**PAPER_LABEL_ALIGN)
    inputs = [aligner.detector_input(image)[0].permute(1, 2, 0).contiguous().numpy() for image in renders]
    # 150 px nearest resize, PIL JPEG q75 and its decoding: byte for byte what the paper code's MTCNN read
    assert [hashlib.sha256(x.tobytes()).hexdigest() for x in inputs] == list(paper["input_sha256"])
    outputs = [aligner(image) for image in renders]
    found = np.array([bool(f[0]) for _, f in outputs])
    assert np.array_equal(found, paper["found"])
    ours = np.stack([((faces[0] * 127.5 + 127.5).round().permute(1, 2, 0)).numpy() for faces, f in outputs if f[0]])
    diff = np.abs(ours - paper["faces"].astype(np.float32))
    # measured: max 4 of 255, mean 0.007, 99.98 % of values within 2 (our float bilinear warp against OpenCV's
    # fixed-point one, which the q95 JPEG then spreads); without the face JPEG mean 1.4, warped from the render 5.8
    assert diff.max() <= 6 and diff.mean() < 0.05, (diff.max(), diff.mean())


def test_jpeg_round_trip_is_pils_decoding_of_pils_file(golden_dir):
    """cv2 and PIL wrote the same bytes at q75 and q95 (jpeg_cv2_vs_pil.json), so one PIL round trip stands for both."""
    image = np.load(golden_dir / "mtcnn_images.npz")["img_11"]
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=75)
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    ours = jpeg_round_trip(torch.from_numpy(image).permute(2, 0, 1)[None], 75)[0].permute(1, 2, 0).numpy()
    assert np.array_equal(ours, expected) and not np.array_equal(ours, image)
