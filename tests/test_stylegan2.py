import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exfacegan.errors import ConfigError, DataError
from exfacegan.gans import build_generator, random_generator
from exfacegan.gans.ops.upfirdn2d import fir_filter2d, setup_filter, upsample2d
from exfacegan.gans.stylegan2 import Generator

GOLDEN = ["sg2_64", "sg2_64_cond"]
TRUNCATIONS = {"psi1": (1, None), "psi07": (0.7, None), "psi05cut4": (0.5, 4)}


def _relative_error(actual: torch.Tensor, reference: np.ndarray) -> float:
    return float(np.abs(actual.detach().numpy() - reference).max() / np.abs(reference).max())


@pytest.fixture(scope="module", params=GOLDEN)
def golden(request, golden_dir):
    name = request.param
    config = json.loads((golden_dir / f"{name}_config.json").read_text())
    weights = np.load(golden_dir / f"{name}_weights.npz")
    io = np.load(golden_dir / f"{name}_io.npz")
    generator = Generator(**config["init_kwargs"]).eval()
    generator.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    return generator, weights, io


def test_state_dict_keys_equal_official(golden):
    generator, weights, _ = golden
    state = generator.state_dict()
    assert list(state) == list(weights.files)
    assert all(tuple(state[k].shape) == weights[k].shape for k in weights.files)


@pytest.mark.parametrize("tag", TRUNCATIONS)
def test_mapping_matches_official(golden, tag):
    generator, _, io = golden
    psi, cutoff = TRUNCATIONS[tag]
    with torch.no_grad():
        ws = generator.mapping(torch.from_numpy(io["z"]), torch.from_numpy(io["c"]), truncation_psi=psi, truncation_cutoff=cutoff)
    assert ws.shape == io[f"ws_{tag}"].shape
    assert _relative_error(ws, io[f"ws_{tag}"]) <= 1e-4


@pytest.mark.parametrize("fused", [None, True, False])
@pytest.mark.parametrize("channels_last", [True, False])
def test_synthesis_matches_official(golden, fused, channels_last):
    generator, _, io = golden
    generator.synthesis.channels_last = channels_last
    with torch.no_grad():
        for tag in TRUNCATIONS:
            images = generator.synthesis(torch.from_numpy(io[f"ws_{tag}"]), noise_mode="const", fused_modconv=fused)
            assert images.dtype == torch.float32 and images.is_contiguous()
            assert _relative_error(images, io[f"img_{tag}"]) <= 1e-4, tag
        images = generator.synthesis(torch.from_numpy(io["ws_psi1"]), noise_mode="none", fused_modconv=fused)
        assert _relative_error(images, io["img_psi1_nonoise"]) <= 1e-4
    generator.synthesis.channels_last = True


def test_generator_call_is_mapping_then_synthesis(golden):
    generator, _, io = golden
    with torch.no_grad():
        images = generator(torch.from_numpy(io["z"]), torch.from_numpy(io["c"]), truncation_psi=0.5, truncation_cutoff=4)
    assert _relative_error(images, io["img_psi05cut4"]) <= 1e-4


def test_single_image_batches_match_full_batch(golden):
    # Batch 1 takes the per-sample-weight path; it must agree with the batched result.
    generator, _, io = golden
    ws = torch.from_numpy(io["ws_psi07"])
    with torch.no_grad():
        singles = torch.cat([generator.synthesis(ws[i : i + 1]) for i in range(ws.shape[0])])
    assert _relative_error(singles, io["img_psi07"]) <= 1e-4


def test_random_noise_differs_from_const_and_follows_the_seed(golden):
    generator, _, io = golden
    ws = torch.from_numpy(io["ws_psi1"])
    with torch.no_grad():
        torch.manual_seed(1)
        first = generator.synthesis(ws, noise_mode="random")
        torch.manual_seed(1)
        again = generator.synthesis(ws, noise_mode="random")
    assert torch.equal(first, again)
    assert _relative_error(first, io["img_psi1"]) > 1e-3


def _upfirdn_reference(x: np.ndarray, taps: np.ndarray, up: int, pad0: int, pad1: int, gain: float) -> np.ndarray:
    """Zero insertion, padding and a true 2-D convolution, written out in NumPy."""
    n, c, h, w = x.shape
    upsampled = np.zeros((n, c, h * up, w * up), dtype=np.float64)
    upsampled[:, :, ::up, ::up] = x
    padded = np.pad(upsampled, ((0, 0), (0, 0), (pad0, pad1), (pad0, pad1)))
    kernel = np.outer(taps, taps) / np.outer(taps, taps).sum() * gain
    k = kernel.shape[0]
    out_h, out_w = padded.shape[2] - k + 1, padded.shape[3] - k + 1
    out = np.zeros((n, c, out_h, out_w))
    flipped = kernel[::-1, ::-1]
    for dy in range(k):
        for dx in range(k):
            out += flipped[dy, dx] * padded[:, :, dy : dy + out_h, dx : dx + out_w]
    return out


@pytest.mark.parametrize("taps", [[1, 3, 3, 1], [1, 2, 1], [1, 4, 6, 4, 1], [2, 1, 5, 3]])
def test_upsample2d_matches_upfirdn_definition(taps):
    x = torch.randn(2, 3, 5, 6, dtype=torch.float64)
    fir = setup_filter(taps).to(torch.float64)
    k = len(taps)
    expected = _upfirdn_reference(x.numpy(), np.asarray(taps, dtype=np.float64), 2, (k + 1) // 2, (k - 2) // 2, 4)
    np.testing.assert_allclose(upsample2d(x, fir).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_separable_fir_equals_2d_fir():
    x = torch.randn(2, 4, 9, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    fir = setup_filter([1, 3, 3, 1]).to(torch.float64)
    bias = torch.randn(4, dtype=torch.float64)
    for padding in [(1, 1, 1, 1), (2, 1, 0, 2)]:
        separable = fir_filter2d(x, fir, padding, gain=4, bias=bias, separable=True)
        full = fir_filter2d(x, fir, padding, gain=4, bias=bias, separable=False)
        torch.testing.assert_close(separable, full)


def test_loaded_non_separable_filter_is_honoured(golden):
    generator, _, _ = golden
    layer = generator.synthesis.b8.conv0
    state = {k: v.clone() for k, v in layer.state_dict().items()}
    skewed = torch.tensor([[1.0, 0, 0, 0], [0, 3, 0, 0], [0, 0, 3, 0], [0, 0, 0, 1]]) / 8
    x = torch.randn(1, layer.in_channels, 4, 4)
    w = torch.randn(1, layer.w_dim)
    try:
        layer.load_state_dict({**state, "resample_filter": skewed})
        assert not layer.fir_separable
        with torch.no_grad():
            honoured = layer(x, w, noise_mode="none")
            layer.fir_separable = True  # what a stale flag would compute
            stale = layer(x, w, noise_mode="none")
        assert not torch.allclose(honoured, stale, atol=1e-3)
    finally:
        layer.load_state_dict(state)
    assert layer.fir_separable


def test_official_ada_kwargs_form():
    # StyleGAN2-ADA pickles pass synthesis options as one dict and name more mapping options.
    kwargs = dict(
        z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
        mapping_kwargs=dict(num_layers=2, embed_features=None, layer_features=None, activation="lrelu", lr_multiplier=0.01, w_avg_beta=0.995),
        synthesis_kwargs=dict(channel_base=256, channel_max=16, num_fp16_res=0, conv_clamp=None, architecture="skip",
                              resample_filter=[1, 3, 3, 1], use_noise=True, activation="lrelu"),
    )
    generator = build_generator("stylegan2", **kwargs)
    assert generator.num_ws == 6
    with torch.no_grad():
        images = generator(torch.randn(2, 16), None, truncation_psi=0.7)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()


def test_random_generator_is_deterministic():
    kwargs = dict(z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, mapping_kwargs={"num_layers": 2},
                  channel_base=64, channel_max=8, num_fp16_res=0, conv_clamp=256)
    state = torch.get_rng_state()
    first = random_generator("stylegan2", seed=3, **kwargs).state_dict()
    assert torch.equal(state, torch.get_rng_state())
    second = random_generator("stylegan2", seed=3, **kwargs).state_dict()
    other = random_generator("stylegan2", seed=4, **kwargs).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert not torch.equal(first["synthesis.b4.const"], other["synthesis.b4.const"])
    assert first["mapping.w_avg"].abs().sum() > 0


def test_bad_inputs_give_clear_errors(golden):
    generator, _, io = golden
    with pytest.raises(DataError, match="ws has shape"):
        generator.synthesis(torch.zeros(1, generator.num_ws + 1, generator.w_dim))
    with pytest.raises(DataError, match="noise_mode"):
        generator.synthesis(torch.from_numpy(io["ws_psi1"]), noise_mode="fixed")
    with pytest.raises(DataError, match="z has shape"):
        generator.mapping(torch.zeros(2, generator.z_dim + 1), torch.from_numpy(io["c"])[:2])
    if generator.c_dim:
        with pytest.raises(DataError, match="c has shape"):
            generator.mapping(torch.from_numpy(io["z"]), None)
    with pytest.raises(ConfigError, match="unknown StyleGAN2 synthesis options"):
        build_generator("stylegan2", z_dim=8, c_dim=0, w_dim=8, img_resolution=8, img_channels=3, channel_bsae=64)
    with pytest.raises(ConfigError, match="unknown generator architecture"):
        build_generator("stylegan9")


def test_reduced_precision_is_cuda_only(golden):
    generator, _, io = golden
    generator.synthesis.precision = "fp16"
    try:
        with torch.no_grad():
            images = generator.synthesis(torch.from_numpy(io["ws_psi1"]))
        assert images.dtype == torch.float32
        assert _relative_error(images, io["img_psi1"]) <= 1e-4
    finally:
        generator.synthesis.precision = "fp32"
    with pytest.raises(ConfigError):
        generator.synthesis.precision = "fp8"


def test_fused_and_shared_modconv_agree_under_autograd():
    generator = random_generator("stylegan2", seed=0, z_dim=8, c_dim=0, w_dim=8, img_resolution=16, img_channels=3,
                                 mapping_kwargs={"num_layers": 2}, channel_base=128, channel_max=8, num_fp16_res=0, conv_clamp=256)
    ws = torch.randn(1, generator.num_ws, 8, requires_grad=True)
    fused = generator.synthesis(ws, fused_modconv=True)
    shared = generator.synthesis(ws, fused_modconv=False)
    torch.testing.assert_close(fused, shared, rtol=1e-4, atol=1e-5)
    (grad,) = torch.autograd.grad(fused.square().sum(), ws)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert F.mse_loss(fused, shared) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("up", [1, 2])
def test_reduced_precision_modulated_conv_agrees_with_fp32(dtype, up):
    # The fp16 pre-normalisation of weights and styles must cancel in the demodulation.
    from exfacegan.gans.modulated_conv import modulated_conv2d

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 8, 8, 8, generator=generator)
    weight = torch.randn(4, 8, 3, 3, generator=generator)
    styles = torch.randn(2, 8, generator=generator) * 30
    fir = setup_filter()
    for fused in (True, False):
        reference = modulated_conv2d(x, weight, styles, up=up, padding=1, resample_filter=fir, fused=fused, bias=torch.ones(4))
        reduced = modulated_conv2d(x.to(dtype), weight, styles, up=up, padding=1, resample_filter=fir, fused=fused, bias=torch.ones(4))
        assert reduced.dtype == dtype
        assert _relative_error(reduced.float(), reference.numpy()) < 1e-2


def test_mapping_and_synthesis_are_differentiable(golden):
    generator, _, io = golden
    z = torch.from_numpy(io["z"]).requires_grad_(True)
    ws = generator.mapping(z, torch.from_numpy(io["c"]), truncation_psi=0.7)
    images = generator.synthesis(ws)
    (grad,) = torch.autograd.grad(images.square().mean(), z)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    assert _relative_error(images.detach(), io["img_psi07"]) <= 1e-4
