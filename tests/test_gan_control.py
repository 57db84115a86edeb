import json
import shutil

import pytest
import torch

from exfacegan.errors import CheckpointError, DataError
from exfacegan.gans.gan_control import GROUPS, Generator, small_random_gan_control
from exfacegan.gans.gan_control_controllers import AttributeRanges, random_attributes
from exfacegan.gans.gan_control_folder import generator_key_table, load_gan_control, write_gan_control_folder
from exfacegan.gans.latent import Truncation, synthesize

ID = slice(*GROUPS["id"])


@pytest.fixture(scope="module")
def generator():
    return small_random_gan_control(seed=1)


@pytest.fixture(scope="module")
def folder(generator, tmp_path_factory):
    return write_gan_control_folder(tmp_path_factory.mktemp("gan_control") / "model", generator)


def _z(n, seed=0):
    return torch.randn(n, 512, generator=torch.Generator().manual_seed(seed))


def _render(g, z, seeds, noise_mode="const"):
    ws = g.prepare_ws(g.mapping(z, None, truncation_psi=0.7), seeds)
    return g.synthesis(ws, noise_mode=noise_mode)


def test_written_folder_has_the_released_layout(folder):
    assert (folder / "generator" / "args.json").is_file()
    checkpoint = torch.load(next((folder / "generator" / "checkpoint").glob("*.pt")), weights_only=True)
    assert {"style.id.1.weight", "input.input", "conv1.conv.modulation.bias", "convs.0.conv.blur.kernel",
            "to_rgbs.0.upsample.kernel", "noises.noise_0", "to_rgb1.bias"} <= set(checkpoint["g_ema"])
    for group in ("age", "expression", "gamma", "hair", "orientation"):
        controller_dir = folder / f"{group}_loss"
        args = json.loads((controller_dir / "args.json").read_text())
        assert {"in_dim", "mid_dim", "n_mlp", "lr_mlp"} <= set(args["model_config"])
        state = torch.load(next((controller_dir / "checkpoint").glob("*.pt")), weights_only=True)["controller"]
        assert "fc_stack.0.weight" in state


@torch.no_grad()
def test_folder_loads_back_with_identical_outputs(generator, folder):
    loaded = load_gan_control(folder)
    assert sorted(loaded.controllers) == sorted(generator.controllers)
    torch.testing.assert_close(loaded.expressions, generator.expressions, rtol=0, atol=0)
    torch.testing.assert_close(loaded.mapping.w_avg, generator.mapping.w_avg, rtol=0, atol=0)
    z, seeds = _z(3), torch.tensor([5, 6, 7])
    for noise_mode in ("const", "none"):
        torch.testing.assert_close(_render(loaded, z, seeds, noise_mode), _render(generator, z, seeds, noise_mode), rtol=0, atol=0)


@torch.no_grad()
def test_shapes_and_interface(generator):
    assert (generator.z_dim, generator.w_dim, generator.c_dim) == (512, 512, 0)
    assert (generator.num_ws, generator.img_resolution, generator.img_channels) == (10, 64, 3)
    ws = generator.mapping(_z(2), None)
    assert ws.shape == (2, 10, 512)
    images = generator.synthesis(ws, noise_mode="const")
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
    assert generator(_z(2)).shape == (2, 3, 64, 64)
    assert generator.mapping.w_avg.shape == (512,) and generator.mapping.w_avg.abs().sum() > 0
    truncated = generator.mapping(_z(2), None, truncation_psi=0.0, truncation_cutoff=4)
    torch.testing.assert_close(truncated[:, :4], generator.mapping.w_avg.expand(2, 4, 512))
    torch.testing.assert_close(truncated[:, 4:], ws[:, 4:])
    with pytest.raises(DataError, match="noise_mode"):
        generator.synthesis(ws, noise_mode="fixed")
    with pytest.raises(DataError, match=r"\[N, 512\]"):
        generator.mapping(torch.zeros(2, 64), None)


def test_released_size_matches_gan_control_layout():
    released = Generator()  # 512x512, channel multiplier 2, seven latent groups
    assert released.num_ws == 16 and released.img_resolution == 512
    table = generator_key_table(released)
    assert {"convs.13.activate.bias", "to_rgbs.6.conv.weight", "noises.noise_14", "style.other.8.bias"} <= set(table)
    assert "convs.14.conv.weight" not in table and "style.other.9.weight" not in table
    ours = released.state_dict()
    assert ours[table["convs.0.conv.weight"]].shape == (1, 512, 512, 3, 3)  # 8x8
    assert ours[table["convs.13.conv.weight"]].shape == (1, 64, 64, 3, 3)  # 512x512: 32 * 2 channels
    assert ours[table["style.id.1.weight"]].shape == (256, 128)
    assert ours[table["style.age.8.weight"]].shape == (64, 256)


@torch.no_grad()
def test_same_seeds_give_the_same_images_whatever_the_batching(generator):
    w = generator.mapping(_z(4), None)[:, 0]
    seeds = torch.tensor([3, 1, 4, 1_000_000_000_007])
    truncation = Truncation(psi=0.7)
    whole = synthesize(generator, w, truncation=truncation, seeds=seeds)
    again = synthesize(generator, w, truncation=truncation, seeds=seeds)
    halves = torch.cat([synthesize(generator, w[:2], truncation=truncation, seeds=seeds[:2]),
                        synthesize(generator, w[2:], truncation=truncation, seeds=seeds[2:])])
    torch.testing.assert_close(again, whole, rtol=0, atol=0)
    torch.testing.assert_close(halves, whole, rtol=1e-4, atol=1e-5 * whole.abs().max().item())  # batch-size rounding only
    other = synthesize(generator, w, truncation=truncation, seeds=seeds + 1)
    assert (other - whole).abs().amax((1, 2, 3)).min() > 1e-3


@torch.no_grad()
def test_other_attributes_keep_the_identity_group_and_change_the_image(generator):
    ws = generator.mapping(_z(4), None, truncation_psi=0.7)
    first = generator.prepare_ws(ws, torch.arange(4))
    second = generator.prepare_ws(ws, torch.arange(4) + 100)
    for name in ("id", "hair", "other"):  # no controller randomises these
        part = slice(*GROUPS[name])
        torch.testing.assert_close(first[..., part], ws[..., part], rtol=0, atol=0)
        torch.testing.assert_close(second[..., part], ws[..., part], rtol=0, atol=0)
    for name in ("orientation", "age", "gamma", "expression"):
        part = slice(*GROUPS[name])
        assert (first[..., part] - ws[..., part]).abs().amax((1, 2)).min() > 0  # every image overwritten
        assert not torch.equal(first[..., part], second[..., part])  # and redrawn with other seeds
    images = generator.synthesis(first), generator.synthesis(second)
    assert (images[0] - images[1]).abs().amax((1, 2, 3)).min() > 1e-3


@torch.no_grad()
def test_age_alone_changes_only_the_age_slice(generator):
    ws = generator.mapping(_z(2), None)
    controller = generator.controllers["age"]
    young, old = (controller(torch.full((2, 1), age)) for age in (20.0, 70.0))
    start, stop = GROUPS["age"]
    edited = ws.clone()
    edited[..., start:stop] = old[:, None]
    ws[..., start:stop] = young[:, None]
    torch.testing.assert_close(edited[..., ID], ws[..., ID], rtol=0, atol=0)
    assert (generator.synthesis(edited) - generator.synthesis(ws)).abs().amax((1, 2, 3)).min() > 1e-3


def test_random_attributes_follow_the_paper_script_ranges():
    bank = torch.arange(20.0).view(10, 2)
    attributes = random_attributes(torch.arange(4000), AttributeRanges(), bank)
    yaw, pitch, roll = attributes["orientation"].T
    assert yaw.min() == -50 and yaw.max() == 50 and torch.equal(yaw, yaw.round())
    assert pitch.min() == -10 and pitch.max() == 10 and torch.all(roll == 0)
    assert attributes["age"].min() == 10 and attributes["age"].max() == 80
    gamma = attributes["gamma"]
    assert gamma.shape == (4000, 27)
    torch.testing.assert_close(gamma[:, 0::9], torch.full((4000, 3), 0.6 * 0.28209479177387814))
    assert torch.all(gamma[:, 4:9] == 0) and torch.all(gamma[:, 1] == 0)  # bands 0-1 only, no light along y
    lights = {tuple(row) for row in (gamma[:, [3, 2]] / (0.6 * 0.4886025119029199)).round().int().tolist()}
    assert lights == {(1, 0), (-1, 0), (0, 1), (0, -1), (0, 0)}  # -x, +x, +z, -z, ambient only
    assert {tuple(row) for row in attributes["expression"].tolist()} == {tuple(row) for row in bank.tolist()}
    part = random_attributes(torch.arange(10, 20), AttributeRanges(), bank)
    for name, value in part.items():
        torch.testing.assert_close(value, attributes[name][10:20], rtol=0, atol=0)


def test_latest_step_is_loaded(generator, folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "model")
    checkpoints = copy / "generator" / "checkpoint"
    (checkpoints / "010000.pt").rename(checkpoints / "10000.pt")
    older = torch.load(checkpoints / "10000.pt", weights_only=True)
    older["g_ema"]["to_rgb1.bias"] = older["g_ema"]["to_rgb1.bias"] + 5.0
    torch.save(older, checkpoints / "9000.pt")  # after "10000" in string order, before it by step
    loaded = load_gan_control(copy)
    torch.testing.assert_close(loaded.synthesis.torgbs[0].bias, generator.synthesis.torgbs[0].bias)


def _one_line(error):
    assert "\n" not in str(error.value)
    return str(error.value)


def _edit_generator_checkpoint(folder, tmp_path, edit):
    copy = shutil.copytree(folder, tmp_path / "model")
    (path,) = (copy / "generator" / "checkpoint").glob("*.pt")
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)
    return copy


def test_missing_folder_or_files_are_refused(folder, tmp_path):
    with pytest.raises(CheckpointError, match="does not exist") as error:
        load_gan_control(tmp_path / "nowhere")
    _one_line(error)
    copy = shutil.copytree(folder, tmp_path / "model")
    (copy / "generator" / "args.json").unlink()
    with pytest.raises(CheckpointError, match="args.json is missing") as error:
        load_gan_control(copy)
    _one_line(error)
    shutil.rmtree(copy / "generator" / "checkpoint")
    (copy / "generator" / "args.json").write_text((folder / "generator" / "args.json").read_text())
    with pytest.raises(CheckpointError, match="no <step>.pt") as error:
        load_gan_control(copy)
    _one_line(error)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c.pop("g_ema"), "no 'g_ema'"),
    (lambda c: c["g_ema"].__setitem__("convs.0.conv.weight", torch.zeros(1, 8, 8, 3, 3)), "'convs.0.conv.weight' has shape"),
    (lambda c: c["g_ema"].pop("style.age.2.bias"), "lacks key 'style.age.2.bias'"),
    (lambda c: c["g_ema"].__setitem__("mapping.fc0.weight", torch.zeros(3)), "unexpected key 'mapping.fc0.weight'"),
])
def test_foreign_or_mismatched_generator_checkpoint_names_the_key(folder, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message) as error:
        load_gan_control(_edit_generator_checkpoint(folder, tmp_path, edit))
    _one_line(error)


def test_args_json_of_another_shape_is_refused(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "model")
    args_path = copy / "generator" / "args.json"
    args = json.loads(args_path.read_text())
    args["model_config"]["size"] = 128  # the checkpoint holds a 64x64 network
    args_path.write_text(json.dumps(args))
    with pytest.raises(CheckpointError, match="lacks key 'convs.8") as error:
        load_gan_control(copy)
    _one_line(error)


def test_corrupt_files_and_mismatched_controllers_are_refused(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "model")
    (age_checkpoint,) = (copy / "age_loss" / "checkpoint").glob("*.pt")
    state = torch.load(age_checkpoint, weights_only=True)
    state["controller"]["fc_stack.0.weight"] = torch.zeros(32, 2)
    torch.save(state, age_checkpoint)
    with pytest.raises(CheckpointError, match="'fc_stack.0.weight' has shape") as error:
        load_gan_control(copy)
    _one_line(error)
    age_checkpoint.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as error:
        load_gan_control(copy)
    _one_line(error)


def test_prepare_ws_without_controllers_changes_nothing():
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        bare = Generator(size=32, n_mlp=2, mid_dim=16, channel_max=16, channel_multiplier=0.125)
    ws = torch.randn(2, bare.num_ws, 512)
    assert bare.prepare_ws(ws, torch.tensor([1, 2])) is ws
    with pytest.raises(DataError, match="one seed per image"):
        bare.prepare_ws(ws, torch.tensor([1]))


# A direct, slow reading of the checkpoint's layout (rosinality's formulas: per-image modulated
# weights, grouped convolutions, zero-insertion FIR upsampling), evaluated on the written g_ema keys.
def _ref_linear(x, weight, bias, lr_mul, activate):
    out = torch.nn.functional.linear(x, weight * lr_mul / weight.shape[1] ** 0.5) + bias * lr_mul
    return torch.nn.functional.leaky_relu(out, 0.2) * 2**0.5 if activate else out


def _ref_upfirdn(x, kernel, up, pad):
    n, c, h, w = x.shape
    x = x.reshape(n * c, 1, h, 1, w, 1)
    x = torch.nn.functional.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n * c, 1, h * up, w * up)
    x = torch.nn.functional.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    x = torch.nn.functional.conv2d(x, torch.flip(kernel, [0, 1])[None, None])
    return x.reshape(n, c, *x.shape[-2:])


def _ref_modconv(x, w, sd, key, demodulate=True, up=False):
    _, out_ch, in_ch, k, _ = sd[f"{key}.conv.weight"].shape
    n = x.shape[0]
    style = _ref_linear(w, sd[f"{key}.conv.modulation.weight"], sd[f"{key}.conv.modulation.bias"], 1, False)
    weight = sd[f"{key}.conv.weight"] / (in_ch * k * k) ** 0.5 * style.view(n, 1, in_ch, 1, 1)
    if demodulate:
        weight = weight * torch.rsqrt(weight.pow(2).sum([2, 3, 4]) + 1e-8).view(n, out_ch, 1, 1, 1)
    x = x.reshape(1, n * in_ch, *x.shape[2:])
    if up:
        weight = weight.transpose(1, 2).reshape(n * in_ch, out_ch, k, k)
        out = torch.nn.functional.conv_transpose2d(x, weight, stride=2, groups=n)
        return _ref_upfirdn(out.view(n, out_ch, *out.shape[2:]), sd[f"{key}.conv.blur.kernel"], 1, (1, 1))
    out = torch.nn.functional.conv2d(x, weight.reshape(n * out_ch, in_ch, k, k), padding=k // 2, groups=n)
    return out.view(n, out_ch, *out.shape[2:])


def _ref_styled(x, w, sd, key, noise, up=False):
    out = _ref_modconv(x, w, sd, key, up=up) + sd[f"{key}.noise.weight"] * noise
    return torch.nn.functional.leaky_relu(out + sd[f"{key}.activate.bias"][None, :, None, None], 0.2) * 2**0.5


def _ref_torgb(x, w, sd, key, skip):
    out = _ref_modconv(x, w, sd, key, demodulate=False) + sd[f"{key}.bias"]
    return out if skip is None else out + _ref_upfirdn(skip, sd[f"{key}.upsample.kernel"], 2, (2, 1))


@torch.no_grad()
def test_outputs_follow_the_checkpoint_formulas(generator, folder):
    sd = torch.load(next((folder / "generator" / "checkpoint").glob("*.pt")), weights_only=True)["g_ema"]
    z = _z(2, seed=3)
    parts = []
    for name, (start, stop) in GROUPS.items():
        h = z[:, start:stop] * torch.rsqrt(z[:, start:stop].pow(2).mean(1, keepdim=True) + 1e-8)
        for i in range(1, len(generator.mapping.mlps[name]) + 1):
            h = _ref_linear(h, sd[f"style.{name}.{i}.weight"], sd[f"style.{name}.{i}.bias"], 0.01, True)
        parts.append(h)
    w = torch.cat(parts, 1)
    torch.testing.assert_close(generator.mapping(z, None)[:, 0], w, rtol=1e-5, atol=1e-5)
    ws = w[:, None].repeat(1, generator.num_ws, 1)
    x = _ref_styled(sd["input.input"].repeat(2, 1, 1, 1), ws[:, 0], sd, "conv1", sd["noises.noise_0"])
    image = _ref_torgb(x, ws[:, 1], sd, "to_rgb1", None)
    for block in range(generator.num_ws // 2 - 1):
        i = 1 + 2 * block
        x = _ref_styled(x, ws[:, i], sd, f"convs.{2 * block}", sd[f"noises.noise_{i}"], up=True)
        x = _ref_styled(x, ws[:, i + 1], sd, f"convs.{2 * block + 1}", sd[f"noises.noise_{i + 1}"])
        image = _ref_torgb(x, ws[:, i + 2], sd, f"to_rgbs.{block}", image)
    torch.testing.assert_close(generator.synthesis(ws, noise_mode="const"), image, rtol=1e-4, atol=1e-5 * image.abs().max().item())
