"""Throughput of the face side: aligners (FFHQ template, dlib, MTCNN) and embedders (iresnet50, its ONNX
export, dlib).

    python benchmarks/bench_faces.py [--device cpu|cuda] [--threads 2] [--repeats 3]

Prints images per second for each part; the embedders' weights are random (speed does not depend on them);
MTCNN needs its weights (pip install --no-deps facenet-pytorch==2.6.0). The ONNX embedder runs an iresnet50
exported as insightface's torch2onnx.py exports it, next to onnxruntime on the same file (the dev extra).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from exfacegan.align import DlibAligner, FFHQTemplateAligner, MTCNNAligner
from exfacegan.embedders import DlibEmbedder, IResNetEmbedder, iresnet, load_onnx_embedder
from exfacegan.imaging import to_unit_range


def _rate(run: Callable[[], object], count: int, repeats: int, device: torch.device) -> float:
    run()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return count * repeats / (time.perf_counter() - start)


def _onnx_rates(faces: torch.Tensor, threads: int, repeats: int, device: torch.device) -> None:
    batch = faces.expand(64 if device.type == "cuda" else 8, -1, -1, -1).contiguous()
    with tempfile.TemporaryDirectory() as folder:
        path = f"{folder}/iresnet50.onnx"
        torch.onnx.export(iresnet("iresnet50").eval(), torch.randn(1, 3, 112, 112), path, input_names=["data"],
                          opset_version=11, dynamo=False, dynamic_axes={"data": {0: "batch"}})
        embedder = load_onnx_embedder(path, device)
        rate = _rate(lambda: embedder(batch), len(batch), repeats, device)
        print(f"embed onnx iresnet50 (exfacegan), batch {len(batch)}: {rate:8.1f} img/s")
        try:
            import onnxruntime
        except ImportError:
            print("embed onnx iresnet50 (onnxruntime): not installed (pip install -e '.[dev]')")
            return
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        providers = ["CUDAExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
        session = onnxruntime.InferenceSession(path, options, providers=providers)
        data = to_unit_range(batch).cpu().numpy()
        rate = _rate(lambda: session.run(None, {"data": data}), len(batch), repeats, torch.device("cpu"))
        print(f"embed onnx iresnet50 (onnxruntime {session.get_providers()[0]}), batch {len(batch)}: {rate:8.1f} img/s")


def _align_line(name: str, aligner: torch.nn.Module, batch: torch.Tensor, repeats: int, device: torch.device) -> str:
    rate = _rate(lambda: aligner(batch), len(batch), repeats, device)
    found = int(aligner(batch)[1].sum())
    return f"align {name}, {len(batch)} x 1024^2: {rate:8.2f} img/s ({found}/{len(batch)} faces found)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    from skimage.data import astronaut

    # FFHQ-like framing: the face fills about half of a 1024 image, as in a StyleGAN FFHQ output.
    photo = torch.from_numpy(astronaut()[19:219, 124:324]).permute(2, 0, 1)[None].float() / 127.5 - 1
    photos = F.interpolate(photo, size=(1024, 1024), mode="bilinear").expand(8, -1, -1, -1).contiguous().to(device)
    ffhq = FFHQTemplateAligner().to(device)
    print(f"device {device}, {args.threads} threads")
    print(f"align ffhq_template, 8 x 1024^2: {_rate(lambda: ffhq(photos), 8, args.repeats, device):8.1f} img/s")
    for detect_size in (320, None):
        print(_align_line(f"dlib (hog, detect_size={detect_size})", DlibAligner(detect_size=detect_size), photos[:2], 1, device))
    for detect_size, count in ((150, 8), (None, 2)):
        mtcnn = MTCNNAligner(detect_size=detect_size).to(device)
        print(_align_line(f"mtcnn (min face 60, detect_size={detect_size})", mtcnn, photos[:count], args.repeats, device))
    faces, _ = DlibAligner(detect_size=320)(photos)
    dlib_embedder = DlibEmbedder()
    print(f"embed dlib, 8 faces: {_rate(lambda: dlib_embedder(faces), 8, 1, device):8.1f} img/s")
    for precision in ("fp32", "fp16", "bf16") if device.type == "cuda" else ("fp32",):
        embedder = IResNetEmbedder(iresnet("iresnet50"), precision).to(device)
        batch = faces.expand(64 if device.type == "cuda" else 8, -1, -1, -1).contiguous()
        rate = _rate(lambda: embedder(batch), len(batch), args.repeats, device)
        print(f"embed iresnet50 {precision}, batch {len(batch)}: {rate:8.1f} img/s")
    _onnx_rates(faces, args.threads, args.repeats, device)


if __name__ == "__main__":
    main()
