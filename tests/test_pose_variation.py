"""Pose variation (sampling.pose): the yaw direction learnt in w, its per-reference orthogonalisation, the seeded
yaw targets, and the w they put into the generator's synthesis."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from sklearn.linear_model import LinearRegression

from exfacegan.gans.latent import Truncation
from exfacegan.stages.generate import GenerateSpec, generate
from exfacegan.stages.offsets import OffsetSpec, draw_codes, first_draws
from exfacegan.stages.pose_direction import PoseShift, fit_yaw_direction, orthogonal_directions, pose_shift

CONF = Path(__file__).resolve().parents[1] / "conf"


def _planted(n=3000, dim=48, noise=0.5, seed=0):
    rng = np.random.default_rng(seed)
    truth = rng.standard_normal(dim)
    latents = rng.standard_normal((n, dim))
    return latents, latents @ truth + 7.0 + noise * rng.standard_normal(n), truth


def test_the_direction_is_recovered_from_planted_linear_yaw():
    latents, yaw, truth = _planted()
    yaw[::10] = np.nan  # codes without a face are left out
    model = fit_yaw_direction(latents, yaw)
    cosine = model.direction @ truth / np.linalg.norm(model.direction) / np.linalg.norm(truth)
    assert cosine > 0.99 and model.count == 2700
    ok = np.isfinite(yaw)
    oracle = LinearRegression().fit(latents[ok], yaw[ok])
    np.testing.assert_allclose(model.direction, oracle.coef_ / (oracle.coef_ @ oracle.coef_), rtol=1e-8)
    assert model.r2 == pytest.approx(oracle.score(latents[ok], yaw[ok]), abs=1e-10)
    # one unit along the direction is one degree of predicted yaw
    np.testing.assert_allclose(oracle.predict(latents[:5] + 12.5 * model.direction) - oracle.predict(latents[:5]),
                               12.5, atol=1e-8)


def test_each_reference_direction_is_orthogonal_to_its_normal_and_still_one_degree_per_unit():
    latents, yaw, _ = _planted()
    model = fit_yaw_direction(latents, yaw)
    normals = np.random.default_rng(3).standard_normal((20, latents.shape[1])) * 5  # not unit length
    normals[0] = model.direction * 3  # the yaw direction itself: no orthogonal shift turns the head
    directions = orthogonal_directions(model.direction, normals)
    unit = normals / np.linalg.norm(normals, axis=1, keepdims=True)
    assert np.abs((directions * unit).sum(1)).max() < 1e-6
    beta = LinearRegression().fit(latents, yaw).coef_
    np.testing.assert_allclose(directions[1:] @ beta, 1.0, rtol=1e-6)
    assert not directions[0].any()


def _shift(rng, refs, dim):
    normals = rng.standard_normal((refs, dim))
    direction = rng.standard_normal(dim)
    return normals, PoseShift(orthogonal_directions(direction, normals), rng.uniform(-20, 20, refs))


def test_draws_do_not_depend_on_how_the_references_are_split():
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((6, 16))
    normals, shift = _shift(rng, 6, 16)
    spec = OffsetSpec(per_class=4, max_off=2.0, seed=9, pose={"yaw_range": [-30, 30]})
    draws = first_draws(np.arange(6), spec)
    together = draw_codes(draws, latents, normals, spec, shift)[0]
    apart = np.concatenate([draw_codes(draws[i:i + 3], latents, normals, spec, shift)[0]
                            for i in range(0, len(draws), 3)])
    np.testing.assert_array_equal(together, apart)
    plain = draw_codes(draws, latents, normals, OffsetSpec(per_class=4, max_off=2.0, seed=9))[0]
    assert not np.allclose(together, plain)  # the pose shift is applied ...
    turned = together.astype(np.float64) - plain  # ... along the reference's direction, orthogonal to its normal
    refs = np.array([d.reference for d in draws])
    np.testing.assert_allclose((turned * normals[refs]).sum(1), 0, atol=1e-3)


def _toy_stylegan():
    node = OmegaConf.load(CONF / "gan" / "stylegan2.yaml")
    generator = instantiate(node.small, _convert_="all").eval().requires_grad_(False)
    aligner = instantiate(OmegaConf.load(CONF / "align" / "ffhq_template.yaml"))
    return generator, aligner


def _setup(generator, references=3):
    rng = np.random.default_rng(1)
    latents = rng.standard_normal((references, generator.w_dim)).astype(np.float32)
    normals = rng.standard_normal((references, generator.w_dim)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    sampled = rng.standard_normal((200, generator.w_dim))
    model = fit_yaw_direction(sampled, sampled @ rng.standard_normal(generator.w_dim))
    own_yaw = np.array([5.0, np.nan, -12.0][:references])  # the middle reference has no face: the model predicts
    return latents, normals, model, pose_shift(model, normals, latents, own_yaw)


def test_the_turned_code_reaches_the_synthesis(tmp_path):
    torch.manual_seed(0)
    generator, aligner = _toy_stylegan()
    latents, normals, model, shift = _setup(generator)
    offsets = OffsetSpec(per_class=2, max_off=2.0, seed=5, pose={"yaw_range": [-30.0, 30.0]})
    spec = GenerateSpec(offsets=offsets, truncation=Truncation(psi=1.0), batch_size=4)
    captured = []
    hook = generator.synthesis.register_forward_pre_hook(lambda module, args: captured.append(args[0].clone()))
    try:
        generate(tmp_path / "generate", generator, aligner, reference_latents=latents, normals=normals, spec=spec,
                 pose=shift)
    finally:
        hook.remove()
    seen = torch.cat(captured).double()[:, 0]
    with open(next((tmp_path / "generate" / "progress").glob("*.csv")), newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(seen) == 3 * 2 * 2
    beta = model.direction / (model.direction @ model.direction)
    for row, w in zip(rows, seen):
        r, side, attempt = int(row["reference"]), int(row["side"] == "other"), int(row["attempt"])
        # restated from the documentation: u from stream 0 (mirror), the target yaw from stream 4 + side
        u = np.random.default_rng([5, r, 0, attempt + 1]).uniform(0.0, 2.0, generator.w_dim)
        target = np.random.default_rng([5, r, 4 + side, attempt + 1]).uniform(-30.0, 30.0)
        own = 5.0 if r == 0 else -12.0 if r == 2 else latents[1] @ beta + model.intercept
        n = normals[r].astype(np.float64)
        p = model.direction - (model.direction @ n) * n  # Gram–Schmidt, rescaled to one degree per unit
        code = latents[r] + (1 if side else -1) * u * n + (target - own) * p / (p @ beta)
        torch.testing.assert_close(w, torch.from_numpy(code), rtol=0, atol=1e-4)


def test_pose_variation_does_not_depend_on_sharding_chunking_or_resuming(tmp_path):
    generator, aligner = _toy_stylegan()
    latents, normals, _, shift = _setup(generator)
    offsets = OffsetSpec(per_class=2, max_off=2.0, seed=5, pose={"yaw_range": [-40.0, 10.0]})

    def manifest(folder, offsets=offsets, **spec):
        for shard in range(spec.get("num_shards", 1)):
            generate(folder, generator, aligner, reference_latents=latents, normals=normals, pose=shift,
                     spec=GenerateSpec(offsets=offsets, truncation=Truncation(psi=1.0), **{"shard": shard, **spec}))
        if spec.get("num_shards", 1) > 1:
            from exfacegan.stages.generate import finalize
            finalize(folder)
        with open(folder / "manifest.csv", newline="") as f:
            return [(row["path"], row["sha256"]) for row in csv.DictReader(f)]

    whole = manifest(tmp_path / "whole", references_per_chunk=8, batch_size=12)
    assert manifest(tmp_path / "chunked", references_per_chunk=1, batch_size=12) == whole
    assert manifest(tmp_path / "sharded", references_per_chunk=1, num_shards=2, batch_size=12) == whole
    resumed = tmp_path / "resumed"  # a killed call: one chunk recorded, the others not
    manifest(resumed, references_per_chunk=1, batch_size=12)
    for record in sorted((resumed / "progress").glob("*.csv"))[1:]:
        record.unlink()
    (resumed / "manifest.csv").unlink()
    assert manifest(resumed, references_per_chunk=1, batch_size=12) == whole
    plain = manifest(tmp_path / "plain", OffsetSpec(per_class=2, max_off=2.0, seed=5), references_per_chunk=8,
                     batch_size=12)
    assert [path for path, _ in plain] == [path for path, _ in whole] and plain != whole  # the turn changes images


def test_the_fit_stage_saves_the_direction_per_boundary(tmp_path):
    from exfacegan.label import identity_labels
    from exfacegan.stages.fit import fit
    from exfacegan.stages.pose_direction import load_pose_shift

    rng = np.random.default_rng(3)
    latents = rng.standard_normal((240, 12)).astype(np.float32)
    embeddings = latents @ rng.standard_normal((12, 16)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    refs = np.arange(6) * 5
    labels = identity_labels(embeddings, refs, threshold="median", margin=0.05)
    truth = rng.standard_normal(12)
    poses = np.stack([latents @ truth, np.zeros(240), np.zeros(240)], 1).astype(np.float32)
    poses[5] = np.nan  # reference 1 has no face: its yaw comes from the model
    artifacts = fit(tmp_path, latents, labels, refs, solver="batched", progress=False, poses=poses)
    saved = np.load(artifacts.pose_direction)
    assert saved["r2"] > 0.999 and saved["count"] == 239
    normals = np.load(artifacts.boundaries)["normals"]
    shift = load_pose_shift(artifacts.pose_direction, 6, 12)
    assert np.abs((shift.directions * normals).sum(1)).max() < 1e-6
    np.testing.assert_allclose(shift.reference_yaw, latents[refs] @ truth, rtol=1e-4, atol=1e-4)
    assert fit(tmp_path / "none", latents, labels, refs, solver="batched", progress=False,
               poses=np.full((240, 3), np.nan, np.float32)).pose_direction is None


def test_pose_targets_are_recorded_per_manifest_row(tmp_path):
    from exfacegan.data.artifacts import load_json
    from exfacegan.stages.pose_targets import record_pose_targets

    generator, aligner = _toy_stylegan()
    latents, normals, _, shift = _setup(generator)
    offsets = OffsetSpec(per_class=3, max_off=2.0, seed=2, include_reference=True, pose={"yaw_range": [-20.0, 40.0]})
    artifacts = generate(tmp_path, generator, aligner, reference_latents=latents, normals=normals, pose=shift,
                         spec=GenerateSpec(offsets=offsets, truncation=Truncation(psi=1.0), batch_size=18))
    record_pose_targets(tmp_path, offsets)
    with open(artifacts.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    saved = np.load(tmp_path / "pose_targets.npz")
    expected = [np.nan if int(row["attempt"]) == -1 else np.random.default_rng(
        [2, int(row["reference"]), 4 + (row["side"] == "other"), int(row["attempt"]) + 1]).uniform(-20.0, 40.0)
        for row in rows]
    np.testing.assert_array_equal(saved["target_yaw"], expected)
    np.testing.assert_array_equal(saved["class"], [int(row["class"]) for row in rows])
    stats = load_json(artifacts.stats)
    spread = {c: np.std([t for t, row in zip(expected, rows) if int(row["class"]) == c and np.isfinite(t)])
              for c in range(6)}
    assert stats["pose_target_yaw_range"] == [-20.0, 40.0]
    assert stats["pose_target_yaw_spread_per_class"] == pytest.approx({f"{c:05d}": s for c, s in spread.items()})

    from exfacegan.metrics.pose_report import pose_metrics
    from exfacegan.metrics.report import _pose_section

    metrics = pose_metrics(artifacts.manifest)  # the template aligner: no measured pose, the targets all the same
    assert metrics["target_yaw_spread_class_median"] == pytest.approx(np.median(list(spread.values())))
    metrics = {**metrics, "pose_faces": 1}
    assert "targeted yaw spread per identity" in _pose_section(metrics, {})


def test_pose_variation_enters_the_generate_fingerprint_only_when_set():
    from hydra import compose, initialize_config_dir
    from omegaconf import open_dict

    from exfacegan.app import stage_fingerprints
    from exfacegan.run import CONFIG_DIR

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        base, posed, other, bare = (compose(config_name="config", overrides=["experiment=smoke", "logger=none", *o])
                                    for o in ([], ["sampling.pose.yaw_range=[-30,30]"],
                                              ["sampling.pose.yaw_range=[-30,20]"], []))
    with open_dict(bare):
        del bare.sampling["pose"]
    base, posed, other, bare = map(stage_fingerprints, (base, posed, other, bare))
    assert bare == base  # runs from before the setting keep their stages
    assert all(posed[s] == base[s] for s in ("sample", "label", "fit"))
    assert len({base["generate"], posed["generate"], other["generate"]}) == 3


def test_gan_control_takes_the_range_as_its_orientation_controllers_yaw(tmp_path):
    from exfacegan.stages.pose_targets import record_pose_targets

    node = OmegaConf.load(CONF / "gan" / "gan_control.yaml")
    generator = instantiate(node.small, _convert_="all").eval().requires_grad_(False)
    aligner = instantiate(OmegaConf.load(CONF / "align" / "ffhq_template.yaml"))
    rng = np.random.default_rng(0)
    latents = rng.standard_normal((2, generator.w_dim)).astype(np.float32)
    normals = rng.standard_normal((2, generator.w_dim)).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    before = generator.attribute_ranges

    def yaws(folder, offsets):
        seen = []
        hook = generator.controllers["orientation"].register_forward_pre_hook(
            lambda module, args: seen.append(args[0][:, 0].clone()))
        try:
            artifacts = generate(folder, generator, aligner, reference_latents=latents, normals=normals,
                                 spec=GenerateSpec(offsets=offsets, truncation=Truncation(psi=0.7, at="sample"),
                                                   batch_size=40))
        finally:
            hook.remove()
        return torch.cat(seen).double().numpy(), artifacts

    plain, _ = yaws(tmp_path / "plain", OffsetSpec(per_class=10, max_off=2.0, seed=1))
    offsets = OffsetSpec(per_class=10, max_off=2.0, seed=1, pose={"yaw_range": [-5, 5]})
    narrowed, artifacts = yaws(tmp_path / "narrowed", offsets)
    assert len(narrowed) == len(plain) == 40
    assert np.abs(plain).max() > 5 and np.abs(narrowed).max() <= 5 and len(np.unique(narrowed)) > 3
    np.testing.assert_array_equal(narrowed, np.round(narrowed))  # whole degrees, as the controller is fed
    assert generator.attribute_ranges == before  # restored after rendering
    record_pose_targets(tmp_path / "narrowed", offsets, controlled=True)
    with open(artifacts.manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 40  # the template aligner keeps every image: manifest rows in render order
    np.testing.assert_array_equal(np.load(tmp_path / "narrowed" / "pose_targets.npz")["target_yaw"], narrowed)


@pytest.mark.slow
def test_gan_control_pose_variation_through_the_app_sharded_equals_unsharded(tmp_path):
    """End to end on the small random GAN-Control (its controller needs no landmarks; a StyleGAN direction cannot
    be learnt on random networks, whose images give the detectors no face)."""
    import json
    import subprocess
    import sys

    small = ["experiment=smoke", "logger=none", "gan=gan_control_small", "sample.num_samples=48",
             "label.num_references=4", "sampling.per_class=4", "sampling.pose.yaw_range=[-20,20]", "cache_dir=null"]

    def app(*overrides):
        result = subprocess.run([sys.executable, "-m", "exfacegan.run", *small, *overrides], cwd=tmp_path,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]

    app("stages=[sample,label,fit]", f"run_dir={tmp_path / 'whole'}")
    import shutil
    shutil.copytree(tmp_path / "whole", tmp_path / "sharded")
    app("stages=[generate]", f"run_dir={tmp_path / 'whole'}")
    for shard in (0, 1):
        app("stages=[generate]", "generate.num_shards=2", f"generate.shard={shard}", "generate.references_per_chunk=1",
            f"run_dir={tmp_path / 'sharded'}")
    app("stages=[merge]", f"run_dir={tmp_path / 'sharded'}")
    whole, sharded = tmp_path / "whole" / "generate", tmp_path / "sharded" / "generate"
    assert (whole / "manifest.csv").read_bytes() == (sharded / "manifest.csv").read_bytes()
    targets = np.load(whole / "pose_targets.npz")["target_yaw"]
    np.testing.assert_array_equal(targets, np.load(sharded / "pose_targets.npz")["target_yaw"])
    assert len(targets) == 32 and np.abs(targets).max() <= 20
    stats = json.loads((whole / "stats.json").read_text())
    assert stats["pose_target_yaw_range"] == [-20.0, 20.0] and stats == json.loads((sharded / "stats.json").read_text())
    # `exfacegan verify --regenerate` re-renders classes through the same narrowed controller: the same bytes
    verified = subprocess.run([sys.executable, "-m", "exfacegan.cli.main", "verify", str(tmp_path / "whole"),
                               "--regenerate", "3"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert verified.returncode == 0 and verified.stdout.strip().endswith("all match"), verified.stdout + verified.stderr
