"""`exfacegan report <run_dir | image_folder>`: the identity report of a run or of any image-folder dataset.

    exfacegan report <run_dir | image_folder> [--embedder dlib|arcface_r50_webface600k|arcface_r100_glint360k
                     | iresnet50|iresnet100 --checkpoint PTH | onnx --checkpoint ONNX]
                     [--out DIR] [--device cpu|cuda|cuda:N|auto] [--batch-size N] [--max-impostor-pairs N]

For a run directory the embedder the run judged with (`analyze.judge`, else `embedder`, read from the
run's config.yaml) is reused unless --embedder is given; anything else defaults to dlib.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from exfacegan.cli.networks import EMBEDDERS, build_embedder, run_embedder
from exfacegan.errors import DataError


def report(args: argparse.Namespace) -> int:
    from exfacegan.stages.analyze import analyze, find_run_inputs

    path = Path(args.path)
    if not path.is_dir():
        problem = "is not a folder" if path.exists() else "does not exist"
        raise DataError(f"{path} {problem}; give a run directory or an image folder <root>/<identity>/<images>")
    is_run = (path / "generate" / "dataset").is_dir()
    embedder = None
    if args.embedder is None and is_run:
        embedder = run_embedder(path, args.device)
    if embedder is None:
        embedder = build_embedder(args.embedder or "dlib", args.checkpoint, args.device)
    if is_run:
        inputs = find_run_inputs(path)
        out = Path(args.out) if args.out else path / "report"
    else:
        inputs = {"dataset_dir": path}
        out = Path(args.out) if args.out else Path.cwd() / f"{path.resolve().name}_report"
    metrics = analyze(
        inputs.pop("dataset_dir"), out, embedder, **inputs, batch_size=args.batch_size, device=args.device,
        max_impostor_pairs=args.max_impostor_pairs, num_workers=args.num_workers,
    )
    print(f"EER {100 * metrics['eer']:.2f}%  FMR100 {100 * metrics['fmr100']:.2f}%  "
          f"FMR1000 {100 * metrics['fmr1000']:.2f}%  FDR {metrics['fdr']:.3f}  d' {metrics['d_prime']:.3f}")
    print(f"report: {out / 'report.html'}")
    return 0


def add_report_parser(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("report", help="identity report of a run directory or an image-folder dataset")
    parser.add_argument("path", help="an exfacegan run directory, or an image folder <root>/<identity>/<images>")
    parser.add_argument("--embedder", choices=EMBEDDERS, default=None,
                        help="the judging FR model (default: the run's, else dlib)")
    parser.add_argument("--checkpoint", default=None, help="iresnet backbone .pth (--embedder iresnet*) or .onnx file (--embedder onnx)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/report or ./<name>_report)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-impostor-pairs", type=int, default=1_000_000)
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    parser.set_defaults(handler=report)
