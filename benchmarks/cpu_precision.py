"""Eager vs compiled, fp32 vs bf16 synthesis on the CPU, interleaved in one process; bf16's error against fp32.

    python benchmarks/cpu_precision.py --backbone stylegan2 --resolution 1024 --rounds 5
        [--modes eager-fp32 eager-bf16 compiled-fp32 compiled-bf16] [--threads 2]
    python benchmarks/cpu_precision.py --golden   # bf16 vs fp32 on the golden networks + iresnet cosine

On a machine that other work loads, rates drift over minutes; every round runs each mode once
(A/B/A/B...), and the medians over rounds are printed. The first call of each mode is a warm-up
(for compiled modes: the compile time). Random weights (seed 0), batch 1, const noise.
Error columns: image max / mean absolute difference to eager fp32 (image range about [-1, 1]).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from exfacegan.compiled import compile_generator
from exfacegan.gans.latent import synthesize
from exfacegan.precision import cpu_has_native_bf16

SHAPES = {  # official FFHQ init_kwargs, resolution filled in
    "stylegan2": dict(arch="stylegan2", z_dim=512, c_dim=0, w_dim=512, img_channels=3, mapping_kwargs={"num_layers": 8},
                      channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256),
    "stylegan3-t": dict(arch="stylegan3", z_dim=512, c_dim=0, w_dim=512, img_channels=3, mapping_kwargs={"num_layers": 2},
                        channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256, magnitude_ema_beta=0.999),
}
SHAPES["stylegan3-r"] = dict(SHAPES["stylegan3-t"], conv_kernel=1, channel_base=65536, channel_max=1024,
                             use_radial_filters=True)
GOLDEN = {"sg2_64": "stylegan2", "sg3t_64": "stylegan3", "sg3r_64": "stylegan3"}
MODES = ("eager-fp32", "eager-bf16", "compiled-fp32", "compiled-bf16")


def build(backbone: str, resolution: int) -> torch.nn.Module:
    from exfacegan.gans.networks import random_generator

    kwargs = dict(SHAPES[backbone])
    return random_generator(kwargs.pop("arch"), seed=0, img_resolution=resolution, **kwargs).eval()


def render(generator: torch.nn.Module, w: torch.Tensor, precision: str) -> torch.Tensor:
    generator.synthesis.precision = precision
    return synthesize(generator, w, precision=precision)


def speed(backbone: str, resolution: int, modes: list[str], rounds: int) -> dict:
    base = build(backbone, resolution)
    with torch.inference_mode():
        w = base.mapping(torch.randn(1, base.z_dim, generator=torch.Generator().manual_seed(1)), torch.zeros(1, 0))[:, 0]
    networks = {"eager": base}
    if any(mode.startswith("compiled") for mode in modes):
        networks["compiled"] = compile_generator(copy.deepcopy(base))
    first, times, images = {}, {mode: [] for mode in modes}, {}
    for mode in modes:
        kind, precision = mode.split("-")
        start = time.perf_counter()
        images[mode] = render(networks[kind], w, precision)
        first[mode] = time.perf_counter() - start
    for _ in range(rounds):
        for mode in modes:
            kind, precision = mode.split("-")
            start = time.perf_counter()
            render(networks[kind], w, precision)
            times[mode].append(time.perf_counter() - start)
    reference = images.get("eager-fp32")
    result = {}
    for mode in modes:
        row = {"median_s": statistics.median(times[mode]), "runs_s": [round(t, 3) for t in times[mode]],
               "first_call_s": first[mode]}
        if reference is not None:
            difference = (images[mode] - reference).abs()
            row |= {"max_abs_err": float(difference.max()), "mean_abs_err": float(difference.mean())}
        result[mode] = row
    return result


def golden_errors(golden: Path) -> dict:
    """bf16 vs fp32 images of the golden networks and the cosine between their iresnet embeddings."""
    from exfacegan.embedders import IResNetEmbedder
    from exfacegan.embedders.iresnet import IResNet
    from exfacegan.gans.networks import build_generator

    config = json.loads((golden / "iresnet_small_config.json").read_text())
    weights = np.load(golden / "iresnet_small_weights.npz")
    trunk = IResNet(**config["init_kwargs"])
    trunk.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
    embedder = IResNetEmbedder(trunk).eval()
    result = {}
    for name, arch in GOLDEN.items():
        kwargs = json.loads((golden / f"{name}_config.json").read_text())["init_kwargs"]
        weights = np.load(golden / f"{name}_weights.npz")
        generator = build_generator(arch, **kwargs).eval()
        generator.load_state_dict({k: torch.from_numpy(weights[k]) for k in weights.files})
        ws = torch.from_numpy(np.load(golden / f"{name}_io.npz")["ws_psi1"])
        faces = {}
        for precision in ("fp32", "bf16"):
            generator.synthesis.precision = precision
            with torch.inference_mode():
                faces[precision] = generator.synthesis(ws, noise_mode="const").float()
        difference = (faces["bf16"] - faces["fp32"]).abs()
        cosine = (embedder(faces["bf16"]) * embedder(faces["fp32"])).sum(dim=1)
        result[name] = {"max_abs_err": float(difference.max()), "mean_abs_err": float(difference.mean()),
                        "embedding_cosine_min": float(cosine.min()), "embedding_cosine_mean": float(cosine.mean())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="stylegan2", choices=sorted(SHAPES))
    parser.add_argument("--resolution", type=int, default=1024)
    parser.add_argument("--modes", nargs="+", default=["eager-fp32", "eager-bf16"], choices=MODES)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--golden", type=Path, nargs="?", const=Path(__file__).parents[2] / "shared" / "golden")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"native CPU bf16: {cpu_has_native_bf16()}, {args.threads} threads, torch {torch.__version__}")
    if args.golden is not None:
        print(json.dumps(golden_errors(args.golden), indent=1))
        return
    result = speed(args.backbone, args.resolution, args.modes, args.rounds)
    print(f"{args.backbone} {args.resolution}, batch 1, {args.rounds} interleaved rounds")
    for mode, row in result.items():
        errors = f"  max err {row['max_abs_err']:.2e}  mean err {row['mean_abs_err']:.2e}" if "max_abs_err" in row else ""
        print(f"{mode:14s} median {row['median_s']:7.3f} s/img  first call {row['first_call_s']:7.1f} s{errors}  runs {row['runs_s']}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
