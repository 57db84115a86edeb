"""The `*_code` profiles' functions against the ExFaceGAN paper code's own outputs (tests/data/paper_code, made by
make_paper_code_data.py there from the paper code's scripts): its z stream, its labelling pixel path on real
photographs, and which code each of its boundaries moves."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from exfacegan.align import MTCNNAligner
from exfacegan.align.pixel_path import jpeg_round_trip
from exfacegan.stages.fit import paired_codes
from exfacegan.stages.sample import latent_codes, paper_normal
from test_mtcnn import mtcnn_weights  # noqa: F401  (fixture)
from test_validation import BASE, assert_no_stage, assert_one_line, no_networks, run_in_process  # noqa: F401

DATA = Path(__file__).parent / "data" / "paper_code" / "paper_code.npz"


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


# --- the *_code profiles and their settings -------------------------------------------------------------------

def _compose(*overrides: str):
    from hydra import compose, initialize_config_dir

    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name="config", overrides=list(overrides))


def _missing(cfg) -> list[str]:
    from omegaconf import OmegaConf

    return sorted(OmegaConf.missing_keys(cfg))


@pytest.mark.parametrize("experiment, left_to_user", [
    ("paper_sg2_code", set()), ("paper_sg3_code", set()), ("paper_gan_control_code", {"gan.network.source"}),
])
def test_code_profiles_set_every_switch_per_stage(experiment, left_to_user):
    cfg = _compose(f"experiment={experiment}", "logger=none")
    assert set(_missing(cfg)) == left_to_user
    assert cfg.fit.pairing == "position" and cfg.sampling.on_no_face == "drop" and cfg.sampling.per_class == 60
    assert cfg.boundary.order == "independent"
    # labelling: BGR, the paper code's files; generating: RGB, warped from the 150 px image, no JPEG before saving
    assert (cfg.label_align.channel_order, cfg.align.channel_order) == ("bgr", "rgb")
    assert (cfg.label_align.detect_jpeg, cfg.label_align.face_jpeg) == (75, 95)
    assert cfg.align.detect_jpeg is None and cfg.align.face_jpeg is None and cfg.align.detect_size == 150
    assert cfg.align.warp_source == cfg.label_align.warp_source == "detector_input"
    assert cfg.align.template == cfg.label_align.template == "arcface_shift8"
    if experiment == "paper_gan_control_code":  # its labelling files are full-size 512 px renders
        assert cfg.label_align.detect_size is None and cfg.gan.truncation.center == "w_avg"
    else:
        assert cfg.label_align.detect_size == 150 and cfg.sample.z_stream == "paper"
        assert cfg.gan.truncation.center == "zero" and cfg.gan.precision == "fp16"
    expected_gan = {"paper_sg2_code": "stylegan2-ffhq-1024", "paper_sg3_code": "stylegan3-r-ffhq-1024"}
    if experiment in expected_gan:
        assert cfg.gan.network.source == expected_gan[experiment]


def test_paper_profiles_keep_the_correct_method():
    cfg = _compose("experiment=paper_sg2", "logger=none")
    assert cfg.get("label_align") is None and cfg.sample.z_stream == "seeded" and cfg.fit.pairing == "reference"
    assert cfg.align.warp_source == "render" and cfg.align.detect_jpeg is None


def test_the_sample_stage_aligns_with_label_align_and_generate_with_align():
    from exfacegan.align.template import FFHQTemplateAligner, ResizeAligner
    from exfacegan.app import Components, stage_fingerprints

    plain = _compose("experiment=smoke", "logger=none")
    cfg = _compose("experiment=smoke", "logger=none", "align@label_align=none")
    parts = Components(cfg, torch.device("cpu"))
    assert isinstance(parts.label_aligner, ResizeAligner) and isinstance(parts.aligner, FFHQTemplateAligner)
    without = Components(plain, torch.device("cpu"))
    assert without.label_aligner is without.aligner
    assert stage_fingerprints(cfg)["sample"] != stage_fingerprints(plain)["sample"]
    moved = _compose("experiment=smoke", "logger=none", "fit.pairing=position")
    assert stage_fingerprints(moved)["fit"] != stage_fingerprints(plain)["fit"]
    assert stage_fingerprints(moved)["label"] == stage_fingerprints(plain)["label"]


CODE_CASES = {
    "sample.z_stream=numpy": "sample.z_stream",
    "fit.pairing=index": "fit.pairing",
    "align=mtcnn align.warp_source=full": "MTCNN warp_source",
    "align=mtcnn align.detect_jpeg=0": "MTCNN detect_jpeg",
    "align=mtcnn align.face_jpeg=101": "MTCNN face_jpeg",
    "align@label_align=mtcnn label_align.channel_order=grb": "label_align: MTCNN channel_order",
    "align@label_align=mtcnn label_align.detect_size=0": "label_align.detect_size",
    "align@label_align=mtcnn label_align.template=shift": "label_align.template",
    "align@label_align=mtcnn label_align.face_jpeg=true": "label_align: MTCNN face_jpeg",
}


@pytest.mark.parametrize("overrides", list(CODE_CASES))
def test_code_settings_refused_before_any_network_in_one_line(overrides, tmp_path, monkeypatch, capsys, no_networks):
    run = tmp_path / "run"
    status, lines = run_in_process([*BASE, f"run_dir={run}", *overrides.split()], monkeypatch, capsys)
    assert_one_line(status, lines, CODE_CASES[overrides])
    assert_no_stage(run)


def test_fit_stage_stores_the_codes_position_pairing_moves(tmp_path):
    from exfacegan.stages.fit import fit

    rng = np.random.default_rng(0)
    latents = rng.standard_normal((12, 4)).astype(np.float32)
    references = np.array([0, 1, 3, 4])  # code 2 had no face: from boundary 2 on, position pairing moves code r
    labels = np.where(latents[None, :, 0] * (1 + np.arange(4))[:, None] > 0, 1, 0).astype(np.int8)
    labels[np.arange(4), references] = -1
    out = {}
    for pairing in ("reference", "position"):
        path = fit(tmp_path / pairing, latents, labels, references, solver="ridge", pairing=pairing, progress=False)
        out[pairing] = dict(np.load(path.boundaries))
    assert out["reference"]["paired_codes"].tolist() == [0, 1, 3, 4]
    assert out["position"]["paired_codes"].tolist() == [0, 1, 2, 3]
    assert np.array_equal(out["position"]["reference_latents"], latents[[0, 1, 2, 3]])
    assert np.array_equal(out["reference"]["reference_latents"], latents[[0, 1, 3, 4]])
    assert np.array_equal(out["position"]["normals"], out["reference"]["normals"])  # the boundaries stay the same
