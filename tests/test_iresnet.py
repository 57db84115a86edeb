import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from exfacegan.embedders import (
    IResNet,
    IResNetEmbedder,
    iresnet,
    load_iresnet_embedder,
    random_iresnet_embedder,
)
from exfacegan.errors import CheckpointError, ConfigError, DataError

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def golden(golden_dir):
    weights = np.load(golden_dir / "iresnet_small_weights.npz")
    io = np.load(golden_dir / "iresnet_small_io.npz")
    config = json.loads((golden_dir / "iresnet_small_config.json").read_text())
    state = {k: torch.from_numpy(weights[k]) for k in weights.files}
    return state, torch.from_numpy(io["x"]), torch.from_numpy(io["emb"]), config["init_kwargs"]


def _relative_error(actual: torch.Tensor, reference: torch.Tensor) -> float:
    return float((actual - reference).abs().max() / reference.abs().max())


def test_golden_state_dict_keys_and_shapes_equal_arcface_torch(golden):
    state, _, _, kwargs = golden
    ours = IResNet(**kwargs).state_dict()
    assert list(ours) == list(state)
    assert all(ours[k].shape == state[k].shape for k in state)


def test_golden_output_matches_official_iresnet(golden):
    state, x, reference, kwargs = golden
    network = IResNet(**kwargs).eval()
    network.load_state_dict(state)
    with torch.no_grad():
        assert _relative_error(network(x), reference) <= 1e-4


def test_embedder_normalises_the_golden_output_for_float_and_uint8_input(golden, tmp_path):
    state, x, reference, _ = golden
    path = tmp_path / "backbone.pth"
    torch.save({"module." + k: v for k, v in state.items()}, path)  # as saved from DistributedDataParallel
    embedder = load_iresnet_embedder([1, 1, 1, 1], path)
    assert embedder.embedding_dim == 64
    expected = F.normalize(reference, dim=1)
    from_float = embedder(x)
    assert from_float.dtype == torch.float32
    assert torch.allclose(from_float.norm(dim=1), torch.ones(3), atol=1e-5)
    assert _relative_error(from_float, expected) <= 1e-4

    pixels = (x * 127.5 + 127.5).round().clamp(0, 255).to(torch.uint8)
    from_uint8 = embedder(pixels)
    from_float_again = embedder((pixels.float() - 127.5) / 127.5)
    assert torch.allclose(from_uint8, from_float_again, atol=1e-6)
    assert (from_uint8 * from_float).sum(1).min() > 0.99  # the rounding to uint8 barely matters


def test_named_architectures_have_arcface_torch_depths():
    expected_blocks = {"iresnet18": (2, 2, 2, 2), "iresnet50": (3, 4, 14, 3), "iresnet100": (3, 13, 30, 3)}
    for name, blocks in expected_blocks.items():
        keys = iresnet(name).state_dict().keys()
        for stage, count in enumerate(blocks, start=1):
            assert f"layer{stage}.{count - 1}.conv2.weight" in keys
            assert f"layer{stage}.{count}.conv2.weight" not in keys
            assert f"layer{stage}.0.downsample.0.weight" in keys
            assert f"layer{stage}.1.downsample.0.weight" not in keys
    network = iresnet("r50", num_features=256)
    assert network.fc.weight.shape == (256, 512 * 7 * 7) and network.features.weight.shape == (256,)
    assert not network.features.weight.requires_grad  # arcface_torch freezes it
    with pytest.raises(ConfigError, match="iresnet42"):
        iresnet("iresnet42")


def test_narrow_widths_keep_the_arcface_torch_layout():
    narrow, full = iresnet([1, 1, 1, 1], 128, widths=(16, 32, 64, 128)), iresnet([1, 1, 1, 1], 128)
    assert narrow.state_dict().keys() == full.state_dict().keys()
    # stem 3 -> 16; stage 4: 64 -> 128 channels; head: 128 * 7 * 7 features -> 128
    assert narrow.conv1.weight.shape == (16, 3, 3, 3) and narrow.layer4[0].conv2.weight.shape == (128, 128, 3, 3)
    assert narrow.fc.weight.shape == (128, 128 * 7 * 7)
    assert narrow(torch.zeros(2, 3, 112, 112)).shape == (2, 128)
    with pytest.raises(ConfigError, match="widths"):
        iresnet("iresnet18", widths=(16, 32, 64))


def test_checkpoint_of_another_architecture_names_missing_and_mismatched_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(iresnet("iresnet18", num_features=128).state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_iresnet_embedder("iresnet50", path, num_features=512)
    message = str(error.value)
    assert "\n" not in message
    assert "missing keys: layer1.2.bn1.weight" in message
    assert "features.weight (128,) vs (512,)" in message

    state = iresnet("iresnet18").state_dict()
    state["head.kernel"] = torch.zeros(3)
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="unexpected keys: head.kernel"):
        load_iresnet_embedder("iresnet18", path)


def test_checkpoint_wrapped_in_a_training_dict_loads_and_infers_feature_size(tmp_path):
    network = iresnet("iresnet18", num_features=128)
    torch.nn.init.normal_(network.fc.weight)
    path = tmp_path / "wrapped.pth"
    torch.save({"epoch": 3, "state_dict": network.state_dict()}, path)
    embedder = load_iresnet_embedder("iresnet18", path)
    assert embedder.embedding_dim == 128
    assert torch.equal(embedder.network.fc.weight, network.fc.weight)


def test_missing_or_unreadable_checkpoint_is_one_clear_line(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_iresnet_embedder("iresnet50", tmp_path / "nowhere.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot read") as error:
        load_iresnet_embedder("iresnet50", junk)
    assert "\n" not in str(error.value)
    torch.save([1, 2, 3], junk)
    with pytest.raises(CheckpointError, match="no state dict"):
        load_iresnet_embedder("iresnet50", junk)


def test_random_embedder_is_seeded_and_leaves_the_global_generator_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = random_iresnet_embedder(seed=5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    same = random_iresnet_embedder(seed=5)
    other = random_iresnet_embedder(seed=6)
    assert torch.equal(first.network.fc.weight, same.network.fc.weight)
    assert not torch.equal(first.network.fc.weight, other.network.fc.weight)


def test_embedder_stays_in_eval_mode_resizes_and_rejects_bad_input():
    embedder = random_iresnet_embedder(seed=0)
    embedder.train()
    assert not embedder.network.training
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 112), torch.linspace(-1, 1, 112), indexing="ij")
    smooth = torch.stack([xx * 0.8, yy * 0.5, (xx * yy) * 0.9])[None]
    large = F.interpolate(smooth, size=(224, 224), mode="bilinear", align_corners=False)
    at_112, at_224 = embedder(torch.cat([smooth, smooth.flip(-1)])), embedder(large)
    assert at_224.shape == (1, 64)
    assert (at_112[0] @ at_224[0]) > (at_112[1] @ at_224[0])  # the resized image is the same face
    assert (at_112[0] @ at_224[0]) > 0.99
    assert not embedder.network.bn1.running_mean.any()  # BatchNorm statistics untouched by forward
    with pytest.raises(DataError, match="RGB batches"):
        embedder(torch.zeros(3, 112, 112))
    with pytest.raises(ConfigError, match="precision"):
        IResNetEmbedder(iresnet("iresnet18"), precision="int8")
