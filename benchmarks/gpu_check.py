"""The measurements of benchmarks/gpu_check.sh: one JSON file and one text table, random weights, nothing downloaded.

    python benchmarks/gpu_check.py --out DIR [--device cuda|cpu] [--quick] [--official STYLEGAN3_CHECKOUT]

Full run (CUDA, about 5 minutes on one GPU): images/s per backbone at 1024 (GAN-Control at 512) for eager
fp32/fp16/bf16 at batch 1/8/32 and compiled fp16 at batch 8; the boundary fit (batched solver) at N = 11,000;
MTCNN's three nets and the iresnet100 embedder; a smoke-size pipeline run on the device; peak GPU memory of
each. `--quick` (the CPU dry run the tests use) shrinks everything: 64 px networks, batch 1/2, N = 200, no
compiled mode and no pipeline run. `--official DIR` also times NVIDIA's own StyleGAN2/3 code (its CUDA
kernels) on the same random weights, by running a driver inside DIR in a subprocess; nothing of it is
imported here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from cpu_precision import SHAPES  # noqa: E402  (official FFHQ init_kwargs)

BACKBONES = ("stylegan2", "stylegan3-t", "stylegan3-r", "gan_control")


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _peak_gib(device: str) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def _reset_peak(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def timed(run: Callable[[], object], device: str, min_seconds: float, max_repeats: int) -> float:
    """Seconds per call after one warm-up call, repeated until `min_seconds` or `max_repeats`."""
    run()
    _sync(device)
    start, repeats = time.perf_counter(), 0
    while repeats < max_repeats and (repeats == 0 or time.perf_counter() - start < min_seconds):
        run()
        repeats += 1
    _sync(device)
    return (time.perf_counter() - start) / repeats


def build_backbone(backbone: str, resolution: int) -> torch.nn.Module:
    from exfacegan.gans.networks import random_generator

    if backbone == "gan_control":
        from exfacegan.gans.gan_control import small_random_gan_control

        if resolution < 512:
            return small_random_gan_control(size=resolution)
        return random_generator("gan_control", seed=0, size=resolution)
    kwargs = dict(SHAPES[backbone])
    return random_generator(kwargs.pop("arch"), seed=0, img_resolution=resolution, **kwargs)


def synthesis_rates(device: str, quick: bool) -> list[dict]:
    from exfacegan.compiled import compile_generator
    from exfacegan.gans.latent import synthesize

    batches = (1, 2) if quick else (1, 8, 32)
    precisions = ("fp32", "bf16") if quick else ("fp32", "fp16", "bf16")
    compiled_modes = () if quick else (("fp16", 8),)
    rows = []
    for backbone in BACKBONES:
        resolution = 64 if quick else (512 if backbone == "gan_control" else 1024)
        generator = build_backbone(backbone, resolution).eval().to(device)
        modes = [("eager", p, b) for p in precisions for b in batches] + [("compiled", p, b) for p, b in compiled_modes]
        compiled = None
        for kind, precision, batch in modes:
            if kind == "compiled" and compiled is None:
                compiled = compile_generator(build_backbone(backbone, resolution).eval().to(device))
            network = compiled if kind == "compiled" else generator
            if hasattr(network.synthesis, "precision"):
                network.synthesis.precision = precision
            w = torch.randn(batch, network.w_dim, device=device)
            _reset_peak(device)
            row = {"backbone": backbone, "resolution": resolution, "mode": kind, "precision": precision, "batch": batch}
            try:
                start = time.perf_counter()
                seconds = timed(lambda: synthesize(network, w, precision=precision), device,
                                0.0 if quick else 3.0, 1 if quick else 20)
                row |= {"images_per_s": batch / seconds, "first_call_s": time.perf_counter() - start,
                        "peak_gib": _peak_gib(device)}
            except torch.OutOfMemoryError:
                row |= {"images_per_s": None, "error": "out of memory"}
            rows.append(row)
        del generator, compiled
    return rows


def boundary_fit(device: str, quick: bool) -> dict:
    from fit import synthetic

    from exfacegan.boundary import fit_boundaries
    from exfacegan.label import identity_labels

    size = 200 if quick else 11_000
    latents, embeddings = synthetic(size, 512, 0.5)
    labels = identity_labels(embeddings, size, device=device)
    _reset_peak(device)
    start = time.perf_counter()
    result = fit_boundaries(latents, labels, "batched", device=device, progress=False)
    _sync(device)
    return {"solver": "batched", "n": size, "seconds": time.perf_counter() - start, "peak_gib": _peak_gib(device),
            "val_accuracy": float(result.val_accuracy[result.valid].mean())}


def face_networks(device: str, quick: bool) -> dict:
    from exfacegan.align.mtcnn_nets import ONet, PNet, RNet
    from exfacegan.embedders import IResNetEmbedder, iresnet

    rows = {}
    crops = 8 if quick else 256
    side = 128 if quick else 512
    cases = {f"mtcnn_pnet_{side}px": (PNet(), (1, 3, side, side)), "mtcnn_rnet_24px": (RNet(), (crops, 3, 24, 24)),
             "mtcnn_onet_48px": (ONet(), (crops, 3, 48, 48))}
    for name, (net, shape) in cases.items():
        net = net.eval().to(device)
        x = torch.rand(shape, device=device)
        _reset_peak(device)
        with torch.inference_mode():
            seconds = timed(lambda: net(x), device, 0.0 if quick else 2.0, 1 if quick else 50)
        rows[name] = {"images_per_s": shape[0] / seconds, "peak_gib": _peak_gib(device)}
    arch, batch = ("iresnet18", 2) if quick else ("iresnet100", 128)
    for precision in ("fp32", "bf16") if quick else ("fp32", "fp16", "bf16"):
        embedder = IResNetEmbedder(iresnet(arch), precision=precision).to(device)
        faces = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8, device=device)
        _reset_peak(device)
        seconds = timed(lambda: embedder(faces), device, 0.0 if quick else 2.0, 1 if quick else 30)
        rows[f"{arch}_{precision}"] = {"images_per_s": batch / seconds, "peak_gib": _peak_gib(device)}
    return rows


def pipeline_run(device: str, out: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "exfacegan.run", "experiment=smoke", "logger=none", f"device={device}",
                           f"run_dir={out / 'smoke_run'}", "overwrite=true"], capture_output=True, text=True)
    result = {"command": f"python -m exfacegan.run experiment=smoke device={device}", "exit_status": done.returncode,
              "seconds": time.perf_counter() - start}
    if done.returncode != 0:
        result["error"] = (done.stderr.strip().splitlines() or ["?"])[-1]
    return result


OFFICIAL_DRIVER = """
import json, sys, time, torch
sys.path.insert(0, '.')
from training import networks_stylegan2, networks_stylegan3
kwargs, state, batches = json.loads(sys.argv[1]), torch.load(sys.argv[2]), json.loads(sys.argv[3])
module = networks_stylegan2 if kwargs.pop('arch') == 'stylegan2' else networks_stylegan3
G = module.Generator(**kwargs).eval().requires_grad_(False).cuda()
G.load_state_dict(state)
rates = {}
for batch in batches:
    ws = torch.randn(batch, G.num_ws, G.w_dim, device='cuda')
    G.synthesis(ws, noise_mode='const'); torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        G.synthesis(ws, noise_mode='const')
    torch.cuda.synchronize()
    rates[batch] = 10 * batch / (time.perf_counter() - start)
print(json.dumps(rates))
"""


def official_rates(checkout: Path, device: str) -> list[dict]:
    """NVIDIA's code, run inside `checkout` (its custom CUDA ops, fp16 blocks as it decides), on our random weights."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for backbone in ("stylegan2", "stylegan3-t", "stylegan3-r"):
            generator = build_backbone(backbone, 1024)
            state = Path(tmp) / f"{backbone}.pt"
            torch.save(generator.state_dict(), state)
            kwargs = dict(SHAPES[backbone], img_resolution=1024)
            if kwargs["arch"] == "stylegan2":
                kwargs.pop("magnitude_ema_beta", None)
            done = subprocess.run([sys.executable, "-c", OFFICIAL_DRIVER, json.dumps(kwargs), str(state), "[1, 8, 32]"],
                                  cwd=checkout, capture_output=True, text=True)
            if done.returncode != 0:
                rows.append({"backbone": backbone, "error": (done.stderr.strip().splitlines() or ["?"])[-1]})
                continue
            for batch, rate in json.loads(done.stdout.strip().splitlines()[-1]).items():
                rows.append({"backbone": backbone, "batch": int(batch), "images_per_s": rate})
    return rows


def table(report: dict) -> str:
    lines = [f"device {report['device']}  torch {report['torch']}  quick {report['quick']}", "",
             "backbone      res   mode      precision  batch   images/s   peak GiB"]
    for row in report["synthesis"]:
        rate = "-" if row.get("images_per_s") is None else f"{row['images_per_s']:9.2f}"
        peak = "-" if row.get("peak_gib") is None else f"{row['peak_gib']:7.2f}"
        lines.append(f"{row['backbone']:12s} {row['resolution']:5d}  {row['mode']:8s}  {row['precision']:9s} "
                     f"{row['batch']:5d}  {rate:>9s}  {peak:>9s}")
    fit = report["boundary_fit"]
    lines += ["", f"boundary fit (batched) N={fit['n']}: {fit['seconds']:.1f} s, val accuracy {fit['val_accuracy']:.3f}", ""]
    lines += [f"{name:22s} {row['images_per_s']:10.1f} images/s" for name, row in report["face_networks"].items()]
    if report.get("pipeline"):
        run = report["pipeline"]
        lines += ["", f"smoke pipeline on {report['device']}: exit {run['exit_status']}, {run['seconds']:.0f} s"]
    for row in report.get("official", []):
        lines.append(f"official {row['backbone']:12s} batch {row.get('batch', '-')}: "
                     f"{row.get('images_per_s', row.get('error'))}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--official", type=Path)
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device here; use --device cpu --quick for the dry run")
    args.out.mkdir(parents=True, exist_ok=True)
    device = "cuda:0" if args.device == "cuda" else args.device
    report = {"device": device, "torch": torch.__version__, "quick": args.quick,
              "gpu": torch.cuda.get_device_name(0) if device.startswith("cuda") else None,
              "synthesis": synthesis_rates(device, args.quick), "boundary_fit": boundary_fit(device, args.quick),
              "face_networks": face_networks(device, args.quick)}
    if not args.quick:
        report["pipeline"] = pipeline_run(device, args.out)
    if args.official is not None:
        report["official"] = official_rates(args.official.resolve(), device)
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=1))
    (args.out / "gpu_check.txt").write_text(table(report))
    print(table(report), end="")


if __name__ == "__main__":
    main()
