"""The shared generator ops (exfacegan.gans.ops) and the module structure of exfacegan.gans."""

import ast
from pathlib import Path

import numpy as np
import pytest
import torch

import exfacegan.gans
from exfacegan.gans.gan_control import Generator as GANControl
from exfacegan.gans.gan_control_controllers import Controller
from exfacegan.gans.ops.bias_act import bias_act
from exfacegan.gans.ops.upfirdn2d import setup_filter, upsample2d
from exfacegan.gans.recorded import records_init_kwargs


def _upfirdn_up(x, kernel, up, pad):
    """NumPy upfirdn2d (up-sampling only), literally: insert zeros, pad/crop, convolve with the flipped kernel."""
    n, c, h, w = x.shape
    z = np.zeros((n, c, h * up, w * up))
    z[:, :, ::up, ::up] = x
    x0, x1, y0, y1 = pad
    z = np.pad(z, ((0, 0), (0, 0), (max(y0, 0), max(y1, 0)), (max(x0, 0), max(x1, 0))))
    z = z[:, :, max(-y0, 0): z.shape[2] - max(-y1, 0), max(-x0, 0): z.shape[3] - max(-x1, 0)]
    kh, kw = kernel.shape
    out = np.zeros((n, c, z.shape[2] - kh + 1, z.shape[3] - kw + 1))
    flipped = kernel[::-1, ::-1] * up * up
    for dy in range(kh):
        for dx in range(kw):
            out += flipped[dy, dx] * z[:, :, dy: dy + out.shape[2], dx: dx + out.shape[3]]
    return out


@pytest.mark.parametrize("up, pad", [(2, (2, 1, 2, 1)), (2, (-1, 3, 0, -2)), (4, (5, -3, 1, 1)), (3, (0, 0, 0, 0))])
def test_upsample2d_with_any_padding_matches_upfirdn(up, pad):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 7, generator=generator, dtype=torch.float64)
    kernel = torch.randn(5, 4, generator=generator, dtype=torch.float64)  # asymmetric: any flip shows
    expected = _upfirdn_up(x.numpy(), kernel.numpy(), up, pad)
    np.testing.assert_allclose(upsample2d(x, kernel, up, pad).numpy(), expected, rtol=1e-10, atol=1e-12)


def test_bias_act_by_hand():
    x = torch.tensor([[-2.0, 0.5], [3.0, -0.25]])
    out = bias_act(x, torch.tensor([1.0, -1.0]), "lrelu", clamp=1.0)
    # x + b = [[-1, -0.5], [4, -1.25]] -> lrelu(0.2) * sqrt(2) -> clamp 1
    expected = torch.tensor([[-0.2 * 2**0.5, -0.1 * 2**0.5], [1.0, -0.25 * 2**0.5]])
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(setup_filter([1, 3, 3, 1]).sum(), torch.tensor(1.0))


def test_gan_control_records_its_constructor_arguments():
    generator = GANControl(size=16, n_mlp=2, channel_multiplier=0.125, mid_dim=8, channel_max=8)
    rebuilt = GANControl(**generator.init_kwargs)
    assert generator.init_kwargs["size"] == 16 and generator.init_kwargs["lr_mlp"] == 0.01  # defaults filled in
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in generator.state_dict().items()}
    controller = Controller(3, 64, n_mlp=2, mid_dim=16)
    assert controller.init_kwargs == {"in_dim": 3, "out_dim": 64, "n_mlp": 2, "mid_dim": 16, "lr_mlp": 0.01}

    @records_init_kwargs
    class Flat:
        def __init__(self, a, b=2, **more):
            pass

    assert Flat(1, c=3).init_kwargs == {"a": 1, "b": 2, "c": 3}  # **kwargs recorded flat: Flat(**init_kwargs) rebuilds


def test_no_gans_module_imports_the_gans_package_itself():
    """`exfacegan.gans` imports its modules; none of them may import it back (no cycle)."""
    package = Path(exfacegan.gans.__file__).parent
    for path in package.rglob("*.py"):
        if path.name == "__init__.py" and path.parent == package:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            imported = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in getattr(node, "names", [])]
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                assert "exfacegan.gans" not in imported, f"{path.relative_to(package)} imports the exfacegan.gans package"
