"""StyleGAN3 generator: golden equality with the official code, state_dict keys, and the fast
filtered leaky ReLU against a direct formulation (zero insertion, padding, full convolution)."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exfacegan.errors import ConfigError, DataError
from exfacegan.gans.ops.filtered_lrelu import design_lowpass_filter, filtered_lrelu
from exfacegan.gans.stylegan3 import Generator

GOLDEN = ["sg3t_64", "sg3r_64"]


def upfirdn2d_direct(x, taps, up=1, down=1, padding=(0, 0, 0, 0), gain=1.0):
    """upfirdn2d written out: insert zeros, pad, convolve with the (flipped) 2-D filter, subsample."""
    batch, channels, height, width = x.shape
    if taps is None:
        taps = torch.ones(1)
    kernel = torch.outer(taps, taps) if taps.ndim == 1 else taps
    zeros = torch.zeros(batch, channels, height * up, width * up, dtype=x.dtype)
    zeros[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = padding
    zeros = F.pad(zeros, [max(x0, 0), max(x1, 0), max(y0, 0), max(y1, 0)])
    zeros = zeros[:, :, max(-y0, 0) : zeros.shape[2] - max(-y1, 0), max(-x0, 0) : zeros.shape[3] - max(-x1, 0)]
    weight = (kernel * gain).flip([0, 1])[None, None].repeat(channels, 1, 1, 1)
    return F.conv2d(zeros, weight, groups=channels)[:, :, ::down, ::down]


def filtered_lrelu_direct(x, fu, fd, bias, up, down, padding, gain, slope, clamp):
    x = x + bias.view(1, -1, 1, 1)
    x = upfirdn2d_direct(x, fu, up=up, padding=padding, gain=up**2)
    x = F.leaky_relu(x, slope) * gain
    x = x.clamp(-clamp, clamp)
    return upfirdn2d_direct(x, fd, down=down)


def load_golden(golden_dir, name):
    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
    generator = Generator(**kwargs).eval()
    weights = np.load(golden_dir / f"{name}_weights.npz")
    generator.load_state_dict({key: torch.from_numpy(weights[key]) for key in weights.files})
    return generator, weights, np.load(golden_dir / f"{name}_io.npz")


def rel_err(ours: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(ours - ref).max() / np.abs(ref).max())


@pytest.mark.parametrize("name", GOLDEN)
def test_state_dict_keys_are_official(golden_dir, name):
    kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
    weights = np.load(golden_dir / f"{name}_weights.npz")
    state = Generator(**kwargs).state_dict()
    assert sorted(state) == sorted(weights.files)
    assert all(tuple(state[key].shape) == weights[key].shape for key in weights.files)


@pytest.mark.parametrize("name", GOLDEN)
def test_golden_equality(golden_dir, name):
    generator, _, io = load_golden(golden_dir, name)
    z, c = torch.from_numpy(io["z"]), torch.from_numpy(io["c"])
    with torch.no_grad():
        for tag, psi, cutoff in [("psi1", 1, None), ("psi07", 0.7, None), ("psi05cut4", 0.5, 4)]:
            ws = generator.mapping(z, c, truncation_psi=psi, truncation_cutoff=cutoff)
            assert rel_err(ws.numpy(), io[f"ws_{tag}"]) <= 1e-4
            image = generator.synthesis(torch.from_numpy(io[f"ws_{tag}"]), noise_mode="const")
            assert image.dtype == torch.float32 and image.is_contiguous()
            assert rel_err(image.numpy(), io[f"img_{tag}"]) <= 1e-4
        image = generator.synthesis(torch.from_numpy(io["ws_psi1"]), noise_mode="none")
        assert rel_err(image.numpy(), io["img_psi1_nonoise"]) <= 1e-4
        assert rel_err(generator(z, c).numpy(), io["img_psi1"]) <= 1e-4


@pytest.mark.parametrize("name", GOLDEN)
def test_fast_paths_agree_with_golden(golden_dir, name, monkeypatch):
    """Channel chunking and NCHW layout give the same images as the default path."""
    generator, _, io = load_golden(golden_dir, name)
    ws = torch.from_numpy(io["ws_psi07"])
    generator.synthesis.channels_last = False
    with torch.no_grad():
        assert rel_err(generator.synthesis(ws).numpy(), io["img_psi07"]) <= 1e-4
    generator.synthesis.channels_last = True
    monkeypatch.setattr("exfacegan.gans.ops.filtered_lrelu.TMP_BUDGET_BYTES", 1 << 16)
    with torch.no_grad():
        assert rel_err(generator.synthesis(ws).numpy(), io["img_psi07"]) <= 1e-4


def test_stored_filters_match_our_design(golden_dir):
    """The buffers we design at construction equal the official ones (loaded from the golden)."""
    for name in GOLDEN:
        kwargs = json.loads((golden_dir / f"{name}_config.json").read_text())["init_kwargs"]
        weights = np.load(golden_dir / f"{name}_weights.npz")
        state = Generator(**kwargs).state_dict()
        for key in weights.files:
            if key.endswith("_filter"):
                np.testing.assert_allclose(state[key].numpy(), weights[key], atol=1e-6)


CASES = [
    # up, down, padding, up taps, down taps, radial down, slope, clamp
    (2, 2, (9, 8, 9, 8), 12, 12, False, 0.2, 256.0),
    (4, 2, (-6, -9, -6, -9), 24, 12, False, 0.2, 0.5),
    (2, 2, (-11, -12, -11, -12), 12, 12, False, 0.2, 1.0),
    (2, 2, (9, 8, 9, 8), 12, 12, True, 0.2, 0.3),
    (4, 2, (-6, -9, -6, -9), 24, 12, True, 0.2, 256.0),
    (2, 2, (3, 2, 5, 4), 12, 12, False, 0.2, 0.3),
]


@pytest.mark.parametrize("case", CASES)
def test_filtered_lrelu_equals_direct(case):
    up, down, padding, up_taps, down_taps, radial, slope, clamp = case
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 5, 23, 23, generator=generator)
    bias = torch.randn(5, generator=generator)
    # Asymmetric random filters, so that any flip or offset mistake shows.
    fu = torch.randn(up_taps, generator=generator) / up_taps
    fd = torch.randn(down_taps, down_taps, generator=generator) / down_taps if radial else torch.randn(down_taps, generator=generator) / down_taps
    expected = filtered_lrelu_direct(x, fu, fd, bias, up, down, padding, np.sqrt(2), slope, clamp)
    for layout in (torch.contiguous_format, torch.channels_last):
        got = filtered_lrelu(
            x.contiguous(memory_format=layout), fu, fd, bias, up=up, down=down, padding=padding,
            gain=float(np.sqrt(2)), slope=slope, clamp=clamp,
        )
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    chunked = filtered_lrelu(x, fu, fd, bias, up=up, down=down, padding=padding, clamp=clamp, slope=slope, tmp_budget_bytes=1)
    torch.testing.assert_close(chunked, expected, atol=1e-5, rtol=1e-5)


def test_radial_filter_is_symmetric_and_normalised():
    taps = design_lowpass_filter(12, cutoff=20, width=10, fs=64, radial=True)
    assert taps.shape == (12, 12)
    torch.testing.assert_close(taps, taps.t())
    torch.testing.assert_close(taps.sum(), torch.tensor(1.0))
    assert design_lowpass_filter(1, cutoff=20, width=10, fs=64) is None


SMALL = dict(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3, channel_base=256, channel_max=16)


def test_deterministic_and_batch_independent():
    torch.manual_seed(1)
    generator = Generator(**SMALL).eval()
    z = torch.randn(3, 16)
    with torch.no_grad():
        first, second = generator(z), generator(z)
        alone = generator(z[1:2])
    assert torch.equal(first, second)
    assert first.shape == (3, 3, 16, 16) and generator.num_ws == 16
    torch.testing.assert_close(alone, first[1:2], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(first[0], first[1])


def test_conditional_mapping_and_errors():
    generator = Generator(**{**SMALL, "c_dim": 4}).eval()
    z, c = torch.randn(2, 16), torch.eye(4)[:2]
    ws = generator.mapping(z, c, truncation_psi=0.5, truncation_cutoff=3)
    assert ws.shape == (2, 16, 16)
    torch.testing.assert_close(ws[:, 5], ws[:, 15])
    assert not torch.allclose(ws[:, 0], ws[:, 5])
    with pytest.raises(DataError):
        generator.mapping(z, None)
    with pytest.raises(DataError):
        generator.synthesis(torch.randn(2, 15, 16))
    with pytest.raises(ConfigError):
        Generator(**SMALL, no_such_option=1)
    with pytest.raises(ConfigError):
        Generator(**SMALL, precision="fp8")


def test_update_emas_tracks_magnitudes():
    generator = Generator(**SMALL)
    before = {name: getattr(generator.synthesis, name).magnitude_ema.clone() for name in generator.synthesis.layer_names}
    generator(torch.randn(2, 16), update_emas=True)
    layer = generator.synthesis.layer_names[0]
    assert not torch.equal(getattr(generator.synthesis, layer).magnitude_ema, before[layer])
    assert torch.count_nonzero(generator.mapping.w_avg) > 0


def test_gradients_flow_and_cpu_precision_stays_fp32(monkeypatch):
    import exfacegan.precision

    monkeypatch.setattr(exfacegan.precision, "cpu_has_native_bf16", lambda: False)
    torch.manual_seed(2)
    generator = Generator(**SMALL)
    ws = generator.mapping(torch.randn(2, 16), None)
    generator.synthesis(ws).square().mean().backward()
    layer = getattr(generator.synthesis, generator.synthesis.layer_names[3])
    assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) > 0
    for precision in ("fp16", "bf16"):
        reduced = Generator(**SMALL, precision=precision)
        reduced.load_state_dict(generator.state_dict())
        with torch.no_grad():
            # fp16 never runs on the CPU; bf16 only where the CPU has native bf16 (patched off here).
            assert torch.equal(reduced.synthesis(ws), generator.synthesis(ws))
