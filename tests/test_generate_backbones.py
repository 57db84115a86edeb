"""For every backbone (the small random networks of conf/gan/*.yaml), a generated image is the rendering of its
manifest's code: the w reaching `generator.synthesis` is the reference's w -/+ u*n, truncated the way the paper
code truncates for that backbone, with u recomputed here from the documented seeding, and the image written is
a fresh rendering + alignment of that code. The stored w is the one the paper code fits on."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from PIL import Image

from exfacegan.gans.latent import Truncation, synthesize
from exfacegan.stages.generate import GenerateSpec, generate
from exfacegan.stages.offsets import OffsetSpec
from exfacegan.stages.sample import sample
from toys import ToyEmbedder

CONF = Path(__file__).resolve().parents[1] / "conf"
# The paper code's truncation per backbone: StyleGAN truncates every rendering (psi 0.7, first 8 ws), the
# sampled w is stored raw; GAN-Control truncates the sampled w once and renders the edits as they are.
PAPER_TRUNCATES_RENDERS = {"stylegan2": True, "stylegan3": True, "gan_control": False}
CONTROLLED = slice(128, 384)  # GAN-Control: expression, orientation, gamma, age, overwritten by the controllers


def _backbone(name):
    node = OmegaConf.load(CONF / "gan" / f"{name}.yaml")
    generator = instantiate(node.small, _convert_="all").eval().requires_grad_(False)
    truncation = Truncation(**OmegaConf.to_container(node.truncation))
    aligner = instantiate(OmegaConf.load(CONF / "align" / "ffhq_template.yaml"))
    return generator, truncation, aligner


def _truncated_ws(generator, w, truncation, at_render):
    """ws [N, num_ws, d] the paper code feeds the synthesis for stored codes w [N, d] (written out here)."""
    ws = w[:, None].repeat(1, generator.num_ws, 1)
    if at_render:
        cutoff = truncation.cutoff or generator.num_ws
        center = generator.mapping.w_avg if truncation.center == "w_avg" else torch.zeros_like(w[0])
        ws[:, :cutoff] = center + truncation.psi * (ws[:, :cutoff] - center)
    return ws


def _u(seed, reference, stream, attempt, dim, low, high):
    """The module docstring's seeding of exfacegan.stages.offsets, restated."""
    return np.random.default_rng([seed, reference, stream, attempt + 1]).uniform(low, high, dim)


@pytest.mark.parametrize("name", sorted(PAPER_TRUNCATES_RENDERS))
def test_generated_images_are_renderings_of_their_manifest_codes(name, tmp_path):
    torch.manual_seed(0)
    generator, truncation, aligner = _backbone(name)
    at_render = PAPER_TRUNCATES_RENDERS[name]
    assert (truncation.at == "render") == at_render

    # The stored w: GAN-Control's is the truncated mapping output (the paper code's neutral sample), StyleGAN's raw.
    latents = np.load(sample(tmp_path / "sample", generator, aligner, ToyEmbedder(), num_samples=3,
                             truncation=truncation, batch_size=3, preview=1).latents)
    mapped = generator.mapping(torch.from_numpy(latents["z"]), None, truncation_psi=1 if at_render else truncation.psi)
    np.testing.assert_allclose(latents["w"], mapped[:, 0].numpy(), rtol=0, atol=1e-5)

    references = latents["w"]
    normals = np.random.default_rng(1).standard_normal(references.shape).astype(np.float32)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    offsets = OffsetSpec(per_class=2, max_off=2.0, seed=5)
    captured = []
    hook = generator.synthesis.register_forward_pre_hook(lambda module, args: captured.append(args[0].clone()))
    try:
        artifacts = generate(tmp_path / "generate", generator, aligner, reference_latents=references,
                             normals=normals, valid=np.array([True, False, True]),
                             spec=GenerateSpec(offsets=offsets, truncation=truncation, batch_size=3))
    finally:
        hook.remove()
    seen = torch.cat(captured).double()
    with open(next((tmp_path / "generate" / "progress").glob("*.csv")), newline="") as f:
        rows = list(csv.DictReader(f))  # one row per render, in render order
    assert len(rows) == len(seen) == 2 * 2 * 2

    for row, ws in zip(rows, seen):
        r, side, attempt = int(row["reference"]), int(row["side"] == "other"), int(row["attempt"])
        u = _u(offsets.seed, r, 0, attempt, references.shape[1], offsets.min_off, offsets.max_off)  # mirror: stream 0
        code = references[r].astype(np.float64) + (1 if side else -1) * u * normals[r]
        expected = _truncated_ws(generator, torch.from_numpy(code)[None], truncation, at_render)[0]
        kept = torch.ones(code.shape[0], dtype=torch.bool)
        if name == "gan_control":
            kept[CONTROLLED] = False
        torch.testing.assert_close(ws[:, kept], expected[:, kept], rtol=0, atol=1e-4)
        assert int(row["class"]) == 2 * r + side

        # (b) the written face is a fresh rendering + alignment of that code (the controllers re-draw the
        # attributes from the seeding documented in exfacegan.stages.offsets: stream 2 + side).
        fresh_ws = expected[None].float()
        if name == "gan_control":
            seed = np.random.default_rng([offsets.seed, r, 2 + side, attempt + 1]).integers(2**62)
            fresh_ws = generator.prepare_ws(fresh_ws, torch.tensor([seed]))
            torch.testing.assert_close(ws[:, CONTROLLED].float(), fresh_ws[0, :, CONTROLLED], rtol=1e-5, atol=1e-4)
        with torch.no_grad():
            face, found = aligner(generator.synthesis(fresh_ws, noise_mode="const"))
        expected_face = (face[0] * 127.5 + 128).clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
        written = np.asarray(Image.open(artifacts.dataset / row["path"]).convert("RGB"))
        assert bool(found[0]) and written.shape == expected_face.shape
        difference = np.abs(written.astype(int) - expected_face.astype(int))
        assert difference.max() <= 1 and (difference > 0).mean() < 1e-3  # float order of a batch of 3 vs 1

    # Mirror: the two sides of a draw use one u, so their codes sum to twice the reference's (any truncation
    # is affine with weights summing to 1, and GAN-Control's kept slices are untruncated).
    by_draw = {(int(row["reference"]), int(row["attempt"]), row["side"]): ws for row, ws in zip(rows, seen)}
    for (r, attempt, side), ws in by_draw.items():
        if side == "same":
            twice = 2 * _truncated_ws(generator, torch.from_numpy(references[r]).double()[None], truncation,
                                      at_render)[0]
            pair = ws + by_draw[(r, attempt, "other")]
            kept = slice(None) if name != "gan_control" else slice(0, 128)
            torch.testing.assert_close(pair[:, kept], twice[:, kept], rtol=0, atol=1e-4)


def test_gan_control_stores_and_moves_the_w_the_paper_code_fits_on(golden_dir):
    """Official outputs: the paper code's GAN-Control neutral sample saves gen_batch's truncated 2-D w (`w_psi07`),
    fits on it, and renders a moved w through the controllers untruncated (`w_psi07_ctrl` keeps its id slice)."""
    from exfacegan.gans.gan_control import Generator
    from exfacegan.gans.gan_control_folder import generator_key_table

    io, weights = np.load(golden_dir / "gan_control_64_io.npz"), np.load(golden_dir / "gan_control_64_weights.npz")
    generator = Generator(size=64, n_mlp=2, channel_multiplier=0.125, channel_max=16).eval()
    mapping = {ours: torch.from_numpy(weights[theirs]) for theirs, ours in generator_key_table(generator).items()
               if ours.startswith("mapping.")}
    generator.load_state_dict(mapping, strict=False)
    generator.mapping.w_avg.copy_(torch.from_numpy(io["w_avg"]))
    truncation = Truncation(**OmegaConf.to_container(OmegaConf.load(CONF / "gan" / "gan_control.yaml").truncation))
    with torch.no_grad():
        stored = truncation.sampled(generator, generator.mapping(torch.from_numpy(io["z"]), None)[:, 0])
    scale = np.abs(io["w_psi07"]).max()
    assert np.abs(stored.numpy() - io["w_psi07"]).max() / scale < 1e-4
    captured = []
    hook = generator.synthesis.register_forward_pre_hook(lambda module, args: captured.append(args[0].clone()))
    try:
        synthesize(generator, torch.from_numpy(io["w_psi07"]), truncation=truncation)
    finally:
        hook.remove()
    kept = np.r_[0:128, 384:512]  # id, hair, other: the slices the controllers leave
    for layer in range(generator.num_ws):
        np.testing.assert_allclose(captured[0][:, layer, kept].numpy(), io["w_psi07_ctrl"][:, kept], rtol=0, atol=1e-6)
