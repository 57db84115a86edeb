"""Synthesis speed and peak memory of each backbone at its real size, with random weights.

    python benchmarks/synthesis.py [--backbones stylegan2 stylegan3-t stylegan3-r gan_control]
        [--batch-sizes 1 4] [--device cpu|cuda] [--precision fp32|fp16|bf16] [--threads 2]
        [--repeats 2] [--compile]

Every (backbone, batch size) runs in a fresh subprocess, so the peak memory printed is that
configuration's own: peak resident set size on the CPU, torch.cuda.max_memory_allocated on
CUDA. The first call is a warm-up and is not timed. Backbones whose module does not exist yet
are reported as skipped. Real sizes: StyleGAN2 and StyleGAN3 FFHQ 1024x1024 (official
init_kwargs), GAN-Control 512x512. `--compile` wraps synthesis in torch.compile (exfacegan.compiled);
the warm-up call then includes compilation and is reported as `first_call_s`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

STYLEGAN2_1024 = dict(
    z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={"num_layers": 8},
    channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256,
)
STYLEGAN3_T_1024 = dict(
    z_dim=512, c_dim=0, w_dim=512, img_resolution=1024, img_channels=3, mapping_kwargs={"num_layers": 2},
    channel_base=32768, channel_max=512, num_fp16_res=4, conv_clamp=256, magnitude_ema_beta=0.999,
)
STYLEGAN3_R_1024 = dict(STYLEGAN3_T_1024, conv_kernel=1, channel_base=65536, channel_max=1024, use_radial_filters=True)
BACKBONES = ("stylegan2", "stylegan3-t", "stylegan3-r", "gan_control")


def build(backbone: str, precision: str) -> torch.nn.Module:
    if backbone == "stylegan2":
        from exfacegan.gans.stylegan2 import Generator as StyleGAN2

        return StyleGAN2(**STYLEGAN2_1024, precision=precision)
    if backbone in ("stylegan3-t", "stylegan3-r"):
        from exfacegan.gans.stylegan3 import Generator

        kwargs = STYLEGAN3_T_1024 if backbone == "stylegan3-t" else STYLEGAN3_R_1024
        return Generator(**kwargs, precision=precision)
    if backbone == "gan_control":
        from exfacegan.gans.gan_control import Generator as GANControl

        return GANControl(size=512)
    raise ValueError(f"unknown backbone {backbone!r}; choose from {BACKBONES}")


def measure(backbone: str, batch: int, device: str, precision: str, threads: int, repeats: int,
            compile_synthesis: bool = False) -> dict:
    """Run in the child process: time G.synthesis on random ws, report rate and peak memory."""
    torch.set_num_threads(threads)
    generator = build(backbone, precision).eval().to(device)
    if compile_synthesis:
        from exfacegan.compiled import compile_generator

        compile_generator(generator)
    ws = torch.randn(batch, generator.num_ws, generator.w_dim, device=device)
    dtypes = {"fp16": torch.float16, "bf16": torch.bfloat16}
    # Backbones without their own precision option get autocast, where the pipeline would (exfacegan.precision).
    from exfacegan.precision import autocast_dtype

    autocast = autocast_dtype(precision, device) is not None and backbone == "gan_control"

    def run() -> torch.Tensor:
        with torch.inference_mode(), torch.autocast(device, dtype=dtypes.get(precision, torch.float16), enabled=autocast):
            return generator.synthesis(ws, noise_mode="const")

    first = time.perf_counter()
    run()
    first = time.perf_counter() - first
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(repeats):
        image = run()
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / (repeats * batch)
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux
    return {"s_per_image": seconds, "images_per_s": 1 / seconds, "peak_gib": peak, "shape": list(image.shape),
            "first_call_s": first}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", nargs="+", default=list(BACKBONES[:3]), choices=BACKBONES)
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[1])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="torch.compile the synthesis network")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        result = measure(
            args.backbones[0], args.batch_sizes[0], args.device, args.precision, args.threads, args.repeats,
            args.compile,
        )
        print(json.dumps(result))
        return
    memory = "peak RSS" if args.device == "cpu" else "peak CUDA allocated"
    print(f"device {args.device}, precision {args.precision}, {args.threads} threads")
    for backbone in args.backbones:
        for batch in args.batch_sizes:
            command = [
                sys.executable, __file__, "--child", "--backbones", backbone, "--batch-sizes", str(batch),
                "--device", args.device, "--precision", args.precision, "--threads", str(args.threads),
                "--repeats", str(args.repeats), *(["--compile"] if args.compile else []),
            ]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                last = (done.stderr.strip().splitlines() or ["killed (out of memory?)"])[-1]
                print(f"{backbone:12s} batch {batch:3d}: failed or skipped: {last}")
                continue
            result = json.loads(done.stdout.strip().splitlines()[-1])
            print(
                f"{backbone:12s} batch {batch:3d}: {result['images_per_s']:8.3f} img/s  "
                f"{result['s_per_image']:8.2f} s/img  {memory} {result['peak_gib']:6.2f} GiB  "
                f"first call {result['first_call_s']:6.1f} s  out {result['shape']}"
            )


if __name__ == "__main__":
    main()
