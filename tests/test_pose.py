"""Head pose from five points: exact on projected model points (scipy's rotations as the oracle), and on real
photographs (../shared/golden/mtcnn_images.npz) against the geometry of a mirror and an in-plane rotation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from scipy.spatial.transform import Rotation

from exfacegan.align.pose import MIRROR, align_with_points, head_pose, mean_face

ANGLES = np.array([[30.0, -10.0, 15.0], [-45.0, 20.0, -5.0], [0.0, 0.0, 0.0], [10.0, 35.0, -60.0]])  # yaw, pitch, roll


def _project(angles: np.ndarray, scale: float = 2.5, shift: tuple[float, float] = (300.0, 200.0)) -> np.ndarray:
    """Five image points [N, 5, 2] of the mean face turned by R = Rz(roll) Ry(yaw) Rx(pitch), orthographically."""
    rotation = Rotation.from_euler("ZYX", angles[:, [2, 0, 1]], degrees=True).as_matrix()
    return np.einsum("nij,kj->nki", rotation, mean_face().numpy())[..., :2] * scale + np.array(shift)


def test_angles_of_projected_model_points_are_recovered():
    np.testing.assert_allclose(head_pose(_project(ANGLES)), ANGLES, atol=1e-4)


def test_mirror_negates_yaw_and_roll_and_rotation_adds_to_roll_exactly():
    points = _project(ANGLES)
    mirrored = points[:, list(MIRROR)] * np.array([-1.0, 1.0]) + np.array([639.0, 0.0])  # x -> W - 1 - x
    expected = ANGLES * np.array([-1.0, 1.0, -1.0])
    np.testing.assert_allclose(head_pose(mirrored), expected, atol=1e-4)
    theta = np.radians(12.0)  # clockwise in the image (y down) about an arbitrary centre
    turn = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rotated = (points - 100.0) @ turn.T + 100.0
    np.testing.assert_allclose(head_pose(rotated)[:3], ANGLES[:3] + np.array([0.0, 0.0, 12.0]), atol=1e-4)


def test_missing_faces_and_points_give_nan():
    points = _project(ANGLES[:2])
    pose = head_pose(points, found=np.array([True, False]))
    assert np.isfinite(pose[0]).all() and np.isnan(pose[1]).all()
    points[0, 2, 0] = np.nan
    assert np.isnan(head_pose(points)[0]).all() and np.isfinite(head_pose(points)[1]).all()


def test_aligners_without_landmarks_give_nan_points_and_detecting_ones_align_as_their_forward():
    from exfacegan.align import FFHQTemplateAligner

    images = torch.rand(2, 3, 64, 64) * 2 - 1
    faces, found, points = align_with_points(FFHQTemplateAligner(), images)
    assert found.all() and torch.isnan(points).all() and np.isnan(head_pose(points, found)).all()
    torch.testing.assert_close(faces, FFHQTemplateAligner()(images)[0])


@pytest.fixture(scope="module")
def photos(golden_dir) -> dict[str, np.ndarray]:
    images = np.load(golden_dir / "mtcnn_images.npz")
    names = [str(n) for n in images["names"]]
    return {name: images[f"img_{names.index(name):02d}"] for name in ("astronaut", "grace_hopper")}


@pytest.fixture(scope="module")
def dlib_aligner():
    from exfacegan.align import DlibAligner

    return DlibAligner(upsample=1)


def _pose(aligner, image: np.ndarray) -> np.ndarray:
    faces, found, points = align_with_points(aligner, torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])
    assert found.all()
    torch.testing.assert_close(faces, aligner(torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None])[0])
    return head_pose(points, found)[0]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
def test_a_photo_and_its_mirror_have_opposite_yaw(photos, dlib_aligner, name):
    pose, mirrored = _pose(dlib_aligner, photos[name]), _pose(dlib_aligner, photos[name][:, ::-1])
    assert abs(pose[0] + mirrored[0]) <= 2.0, (pose, mirrored)
    assert abs(pose[2] + mirrored[2]) <= 2.0, (pose, mirrored)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["astronaut", "grace_hopper"])
@pytest.mark.parametrize("angle", [10.0, -10.0, 15.0])
def test_rotating_a_photo_in_plane_changes_roll_by_the_angle(photos, dlib_aligner, name, angle):
    pose = _pose(dlib_aligner, photos[name])
    # PIL turns counter-clockwise by `angle`: roll (clockwise positive) drops by it.
    turned = _pose(dlib_aligner, np.array(Image.fromarray(photos[name]).rotate(angle, resample=Image.BICUBIC)))
    assert turned[2] == pytest.approx(pose[2] - angle, abs=1.0), (pose, turned)
    # Yaw rests on the nose tip's offset alone: 1 px of landmark error is about 3 degrees at these faces' size
    # (measured: dlib's yaw moves by up to 3.0 degrees under these rotations).
    assert turned[0] == pytest.approx(pose[0], abs=4.0), (pose, turned)


class PosedAligner(torch.nn.Module):
    """A detecting aligner double: every image's five points are the mean face turned by POSE (scipy's rotation),
    placed in the image; images whose mean red value is above `drop_above` have no face."""

    POSE = np.array([[20.0, -5.0, 8.0]])

    def __init__(self, drop_above: float = 2.0) -> None:
        super().__init__()
        from exfacegan.align import scaled_template

        self.drop_above, self.size = drop_above, 112
        self.register_buffer("target", scaled_template("arcface", 112), persistent=False)

    def landmarks(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        side = images.shape[-1]
        points = torch.from_numpy(_project(self.POSE, scale=side / 112, shift=(side / 2, side / 2))).float()
        return points.expand(len(images), 5, 2).clone(), images[:, 0].mean((1, 2)) <= self.drop_above


def test_generate_writes_each_face_pose_to_the_manifest_and_sample_to_poses_npy(tmp_path):
    import csv

    from exfacegan.gans.latent import Truncation
    from exfacegan.stages.generate import GenerateSpec, generate
    from exfacegan.stages.offsets import OffsetSpec
    from exfacegan.stages.sample import sample
    from toys import ToyAligner, ToyEmbedder, ToyGenerator

    rng = np.random.default_rng(1)
    w, n = rng.standard_normal((3, 6)).astype(np.float32), rng.standard_normal((3, 6)).astype(np.float32)
    spec = GenerateSpec(offsets=OffsetSpec(per_class=3, max_off=5.0), batch_size=4)
    for name, aligner, expected in (("posed", PosedAligner(), PosedAligner.POSE[0]),
                                    ("plain", ToyAligner(), np.full(3, np.nan))):
        artifacts = generate(tmp_path / name, ToyGenerator(), aligner, reference_latents=w, normals=n, spec=spec)
        with open(artifacts.manifest, newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 3 * 2 * 3
        poses = np.array([[float(row[c]) for c in ("yaw", "pitch", "roll")] for row in rows])
        np.testing.assert_allclose(poses, np.broadcast_to(expected, poses.shape), atol=1e-3)
    found_some = PosedAligner(drop_above=-0.028)
    out = sample(tmp_path / "sample", ToyGenerator(), found_some, ToyEmbedder(), num_samples=10, seed=3,
                 truncation=Truncation(psi=0.5), batch_size=4, preview=4)
    poses, found = np.load(out.poses), np.load(out.latents)["found"]
    assert 0 < found.sum() < len(found)
    np.testing.assert_allclose(poses[found], np.broadcast_to(PosedAligner.POSE, (found.sum(), 3)), atol=1e-3)
    assert np.isnan(poses[~found]).all()


def test_the_report_and_card_show_the_pose_histograms_and_each_identitys_yaw_spread(tmp_path):
    import csv
    import json

    from exfacegan.data.card import dataset_card
    from exfacegan.stages.analyze import analyze
    from test_report import _screenshot_module
    from toys import ToyEmbedder

    rng = np.random.default_rng(0)
    yaw = {0: [10.0, 20.0, 30.0], 1: [-5.0, 5.0, float("nan")], 2: [0.0, 0.0, 12.0], 3: [7.0]}  # 3: no spread
    rows = []
    for cls, values in yaw.items():
        for k, value in enumerate(values):
            path = f"{cls:05d}/{cls:05d}_{k:03d}.png"
            (tmp_path / "dataset" / path).parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 256, (112, 112, 3), dtype=np.uint8)).save(tmp_path / "dataset" / path)
            rows.append({"path": path, "class": cls, "reference": cls, "side": "same", "k": k, "attempt": k,
                         "found": 1, "rejected": "", "yaw": f"{value:.3f}", "pitch": "1.000", "roll": "-2.000"})
    with open(tmp_path / "manifest.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    metrics = analyze(tmp_path / "dataset", tmp_path / "analyze", ToyEmbedder(), manifest_path=tmp_path / "manifest.csv")
    assert metrics["pose_faces"] == 9
    expected = {"00000": np.std([10, 20, 30]), "00001": np.std([-5, 5]), "00002": np.std([0, 0, 12])}
    assert metrics["yaw_spread_per_class"] == pytest.approx(expected)
    assert metrics["yaw_mean"] == pytest.approx(np.mean([10, 20, 30, -5, 5, 0, 0, 12, 7]))
    page = (tmp_path / "analyze" / "report.html").read_text()
    assert _screenshot_module().check_numbers(page, metrics) == []
    assert 'data-metric="yaw_spread_class_median"' in page and 'alt="Head pose of the dataset&#x27;s faces"' in page
    (tmp_path / "config.yaml").write_text("embedder:\n  network: {_target_: exfacegan.embedders.DlibEmbedder}\n")
    (tmp_path / "analyze" / "metrics.json").write_text(json.dumps(metrics))
    card = dataset_card(tmp_path, fmt="folder", labels=np.zeros(9, np.int64), image_encoding="png", usage="", files={})
    assert f"median {np.std([0, 0, 12]):.1f}, lowest {np.std([-5, 5]):.1f}, highest {np.std([10, 20, 30]):.1f}" in card
