"""GAN-Control model folders: load the released layout as our `Generator`, and write it (tests, conversions).

Released folder layout (what `load_gan_control` reads and `write_gan_control_folder` writes):
    <folder>/generator/args.json                 model_config + training_config.sub_groups_dict
    <folder>/generator/checkpoint/<step>.pt      torch.save dict with `g_ema` (also g, d, optimisers)
    <folder>/<group>*/args.json                  a controller: model_config in_dim, mid_dim, n_mlp, lr_mlp
    <folder>/<group>*/checkpoint/<step>.pt       dict with `controller` (keys fc_stack.<i>.weight/bias)
    <folder>/expressions.npy                     optional: float [K, 64] bank of expression samples
The expression bank ExFaceGAN draws from is the `expression3d` column of GAN-Control's
`ffhq_1K_attributes_samples_df.pkl` (a pandas pickle, not read here); convert it once where pandas is
installed: `np.save("expressions.npy", np.stack(pd.read_pickle(p).expression3d))`. Without a bank the
expression slice is left as the mapping produced it.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from exfacegan.errors import CheckpointError, DataError
from exfacegan.gans.gan_control import BLUR_TAPS, W_AVG_SAMPLES, Controller, Generator
from exfacegan.gans.ops.upfirdn2d import setup_filter

log = logging.getLogger(__name__)


def generator_kwargs(args: Mapping) -> dict:
    """`Generator` keyword arguments from the contents of generator/args.json."""
    try:
        model = args["model_config"]
        if model.get("vanilla", False) or not model.get("split_fc", True) or model.get("marge_fc", False):
            raise CheckpointError("only GAN-Control generators with a split (grouped) mapping are supported "
                                  "(args.json model_config needs split_fc true, vanilla and marge_fc false)")
        if not model.get("conv_transpose", True) or model.get("g_noise_mode", "normal") not in ("normal", "same_for_same_id"):
            raise CheckpointError("args.json asks for conv_transpose false or a g_noise_mode other than normal, "
                                  "which the released GAN-Control code does not run")
        groups = {name: tuple(group["place_in_latent"]) for name, group in args["training_config"]["sub_groups_dict"].items()}
        return {"size": int(model["size"]), "style_dim": int(model["latent_size"]), "n_mlp": int(model["n_mlp"]),
                "channel_multiplier": float(model["channel_multiplier"]), "groups": groups,
                "img_channels": int(model.get("img_channels", 3)), "lr_mlp": float(model.get("lr_mlp", 0.01)),
                "mid_dim": int(model.get("mid_dim", 256)), "channel_max": int(model.get("channel_max", 512))}
    except (KeyError, TypeError) as error:
        raise CheckpointError(f"generator args.json lacks the field {error} (model_config / training_config.sub_groups_dict)") from None


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path} is missing: not a GAN-Control model folder")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{path} is not readable JSON ({error})") from None


def latest_checkpoint(directory: Path) -> Path:
    """`<directory>/checkpoint/<step>.pt` with the highest step (other names only when none is numbered)."""
    files = sorted((directory / "checkpoint").glob("*.pt"))
    if not files:
        raise CheckpointError(f"{directory / 'checkpoint'} holds no <step>.pt checkpoint")
    numbered = [f for f in files if f.stem.isdigit()]
    return max(numbered, key=lambda f: int(f.stem)) if numbered else files[-1]


def _load_entry(path: Path, entry: str) -> dict[str, torch.Tensor]:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{path} is not a readable torch checkpoint ({type(error).__name__})") from None
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get(entry), dict):
        raise CheckpointError(f"{path} has no {entry!r} state dict: not a GAN-Control checkpoint")
    state = checkpoint[entry]
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def generator_key_table(generator: Generator) -> dict[str, str]:
    """Checkpoint (rosinality / GAN-Control) key -> our key, for every generator parameter and buffer."""
    table = {}
    for name, mlp in generator.mapping.mlps.items():
        for i in range(len(mlp)):  # index 0 of the checkpoint's stack is the parameter-free pixel norm
            table |= {f"style.{name}.{i + 1}.{p}": f"mapping.mlps.{name}.{i}.{p}" for p in ("weight", "bias")}
    table["input.input"] = "synthesis.const"
    for j in range(len(generator.synthesis.layers)):
        src, dst = ("conv1" if j == 0 else f"convs.{j - 1}"), f"synthesis.layers.{j}"
        table |= {f"{src}.conv.weight": f"{dst}.conv.weight", f"{src}.conv.modulation.weight": f"{dst}.conv.affine.weight",
                  f"{src}.conv.modulation.bias": f"{dst}.conv.affine.bias", f"{src}.noise.weight": f"{dst}.noise_strength",
                  f"{src}.activate.bias": f"{dst}.bias", f"noises.noise_{j}": f"{dst}.noise_const"}
    for j in range(len(generator.synthesis.torgbs)):
        src, dst = ("to_rgb1" if j == 0 else f"to_rgbs.{j - 1}"), f"synthesis.torgbs.{j}"
        table |= {f"{src}.conv.weight": f"{dst}.conv.weight", f"{src}.conv.modulation.weight": f"{dst}.conv.affine.weight",
                  f"{src}.conv.modulation.bias": f"{dst}.conv.affine.bias", f"{src}.bias": f"{dst}.bias"}
    return table


# Fixed [1,3,3,1] filter buffers of the checkpoint: recomputed here, so accepted and not read.
FILTER_KEY = re.compile(r"(convs\.\d+\.conv\.blur|to_rgbs\.\d+\.upsample)\.kernel")


def _load_renamed(module: nn.Module, state: Mapping[str, torch.Tensor], table: Mapping[str, str], what: str,
                  ignored: re.Pattern | None = None) -> None:
    unexpected = [k for k in state if k not in table and not (ignored and ignored.fullmatch(k))]
    if unexpected:
        raise CheckpointError(f"{what} has unexpected key {unexpected[0]!r} ({len(unexpected)} in all): "
                              "not a GAN-Control network of the shape its args.json describes")
    missing = [k for k in table if k not in state]
    if missing:
        raise CheckpointError(f"{what} lacks key {missing[0]!r} ({len(missing)} missing): truncated or of another architecture")
    ours = module.state_dict()
    renamed = {}
    for src, dst in table.items():
        value = state[src]
        if not torch.is_tensor(value) or value.shape != ours[dst].shape:
            shape = tuple(value.shape) if torch.is_tensor(value) else type(value).__name__
            raise CheckpointError(f"{what} key {src!r} has shape {shape}, but args.json implies {tuple(ours[dst].shape)}")
        renamed[dst] = value
    module.load_state_dict(renamed, strict=False)  # the table names every weight; w_avg is computed, controllers load apart


def _controller_dirs(folder: Path, groups: list[str]) -> dict[str, Path]:
    """A controller folder's name starts with its group's name ('expression_q*' is a different controller)."""
    found = {}
    subdirs = sorted(p for p in folder.iterdir() if p.is_dir() and p.name != "generator")
    for group in groups:
        matches = [p for p in subdirs if p.name.startswith(group) and not (group == "expression" and p.name.startswith("expression_q"))]
        if matches:
            found[group] = matches[0]
    return found


def load_controller(directory: Path, out_dim: int) -> Controller:
    model = _read_json(directory / "args.json").get("model_config", {})
    try:
        controller = Controller(int(model["in_dim"]), out_dim, int(model["n_mlp"]), int(model["mid_dim"]), float(model["lr_mlp"]))
    except KeyError as error:
        raise CheckpointError(f"{directory / 'args.json'} lacks model_config field {error}") from None
    path = latest_checkpoint(directory)
    table = {f"fc_stack.{i}.{p}": f"layers.{i}.{p}" for i in range(len(controller.layers)) for p in ("weight", "bias")}
    _load_renamed(controller, _load_entry(path, "controller"), table, f"{path} 'controller'")
    return controller


def load_gan_control(folder: str | Path, device: str | torch.device = "cpu", *, expressions: str | Path | None = None,
                     w_avg_samples: int = W_AVG_SAMPLES) -> Generator:
    """The released GAN-Control folder (see the module docstring) as a `Generator` with its controllers.

    The latest step of each checkpoint folder is used. `expressions` is a .npy bank [K, 64]
    (default: `<folder>/expressions.npy` when present). `mapping.w_avg` is the mean w of
    `w_avg_samples` z drawn from seed 0, as the checkpoint holds none.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"GAN-Control folder {folder} does not exist (expected <folder>/generator/args.json)")
    generator = Generator(**generator_kwargs(_read_json(folder / "generator" / "args.json")))
    path = latest_checkpoint(folder / "generator")
    _load_renamed(generator, _load_entry(path, "g_ema"), generator_key_table(generator), f"{path} 'g_ema'", FILTER_KEY)
    for group, directory in _controller_dirs(folder, list(generator.mapping.groups)).items():
        start, stop = generator.mapping.groups[group]
        generator.add_controller(group, load_controller(directory, stop - start))
    bank = Path(expressions) if expressions is not None else folder / "expressions.npy"
    if bank.is_file():
        try:
            generator.set_expressions(np.load(bank, allow_pickle=False))
        except ValueError as error:
            raise DataError(f"{bank} is not a numeric .npy array ({error})") from None
    elif expressions is not None:
        raise DataError(f"expression bank {bank} does not exist")
    elif "expression" in generator.controllers:
        log.warning("no expressions.npy in %s: the expression slice is left as the mapping produced it", folder)
    generator = generator.eval().requires_grad_(False).to(device)
    generator.mapping.update_w_avg(w_avg_samples)
    log.info("GAN-Control %s: checkpoint %s, controllers %s", folder, path.name, sorted(generator.controllers))
    return generator


def write_gan_control_folder(path: str | Path, generator: Generator, *, step: int = 10_000) -> Path:
    """Write `generator` (and its controllers and expression bank) in the released folder layout."""
    path = Path(path)
    cfg = generator.init_kwargs
    sub_groups = {name: {"place_in_latent": list(bounds)} for name, bounds in generator.mapping.groups.items()}
    args = {"model_config": {"vanilla": False, "img_channels": cfg["img_channels"], "split_fc": True, "marge_fc": False,
                             "latent_size": cfg["style_dim"], "size": cfg["size"], "n_mlp": cfg["n_mlp"],
                             "channel_multiplier": cfg["channel_multiplier"], "conv_transpose": True,
                             "g_noise_mode": "normal", "lr_mlp": cfg["lr_mlp"], "mid_dim": cfg["mid_dim"],
                             "channel_max": cfg["channel_max"]},
            "training_config": {"sub_groups_dict": sub_groups}}
    ours = {k: v.detach().cpu().clone() for k, v in generator.state_dict().items()}
    g_ema = {src: ours[dst] for src, dst in generator_key_table(generator).items()}
    kernel = setup_filter(BLUR_TAPS) * 4
    for j in range(len(generator.synthesis.torgbs) - 1):
        g_ema |= {f"convs.{2 * j}.conv.blur.kernel": kernel, f"to_rgbs.{j}.upsample.kernel": kernel}
    _write(path / "generator", args, {"g_ema": g_ema}, step)
    for group, controller in generator.controllers.items():
        state = {f"fc_stack.{k.removeprefix('layers.')}": v.detach().cpu().clone() for k, v in controller.state_dict().items()}
        model = {k: v for k, v in controller.init_kwargs.items() if k != "out_dim"}
        args = {"model_config": {"latent_size": cfg["style_dim"], "size": cfg["size"], **model, "loss": f"{group}_loss"}}
        _write(path / f"{group}_loss", args, {"controller": state}, step)
    if generator.expressions is not None:
        np.save(path / "expressions.npy", generator.expressions.cpu().numpy())
    return path


def _write(directory: Path, args: dict, checkpoint: dict, step: int) -> None:
    (directory / "checkpoint").mkdir(parents=True, exist_ok=True)
    (directory / "args.json").write_text(json.dumps(args, indent=2))
    torch.save(checkpoint, directory / "checkpoint" / f"{step:06d}.pt")
