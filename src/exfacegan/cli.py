"""The `exfacegan` console script. Subcommands register themselves in `SUBCOMMANDS`.

    exfacegan report <run_dir | image_folder> [--embedder dlib|arcface_r50_webface600k|arcface_r100_glint360k
                     | iresnet50|iresnet100 --checkpoint PTH | onnx --checkpoint ONNX]
                     [--out DIR] [--device cpu|cuda|cuda:N|auto] [--batch-size N] [--max-impostor-pairs N]

For a run directory the embedder the run judged with (`analyze.judge`, else `embedder`, read from the
run's config.yaml) is reused unless --embedder is given; anything else defaults to dlib.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from exfacegan.cli_offsets import add_offsets_parser
from exfacegan.errors import ConfigError, DataError
from exfacegan.stages.export import add_export_parser
from exfacegan.weights import REGISTRY

IRESNET_ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")
ONNX_NAMES = tuple(name for name, entry in REGISTRY.items() if entry.arch == "onnx")
EMBEDDERS = ("dlib", *IRESNET_ARCHS, "onnx", *ONNX_NAMES)


def build_embedder(name: str, checkpoint: str | None, device: str):
    """An embedder by name: dlib's descriptor, an ONNX model of the weights registry, or an iresnet (a `.pth`)
    or any ONNX face model (`onnx`) from `checkpoint`."""
    from exfacegan import embedders

    if name == "dlib":
        return embedders.DlibEmbedder()
    if name in ONNX_NAMES:
        return embedders.load_onnx_embedder(name, device)
    if checkpoint is None:
        raise ConfigError(f"--embedder {name} needs --checkpoint /path/to/{'model.onnx' if name == 'onnx' else 'backbone.pth'}")
    if name == "onnx":
        return embedders.load_onnx_embedder(checkpoint, device)
    return embedders.load_iresnet_embedder(name, checkpoint, device)


def run_embedder(run_dir: Path, device: str):
    """The embedder a run judged its dataset with, built from its saved config; None if there is none."""
    from omegaconf import OmegaConf

    from exfacegan.rebuild import load_run_config, rebuild_network

    saved = load_run_config(run_dir)
    if saved is None:
        return None
    path, cfg = saved
    node = OmegaConf.select(cfg, "analyze.judge") or OmegaConf.select(cfg, "embedder")
    if node is None or "network" not in node:
        return None
    return rebuild_network(node.network, path, device, "; pass --embedder")


def check_args(args: argparse.Namespace) -> None:
    """Refuse impossible arguments in one line, before any network is built; `--device auto` becomes a device."""
    from exfacegan.devices import resolve_device

    for name in ("batch_size", "max_impostor_pairs"):  # None: the subcommand's default
        if getattr(args, name, None) is not None and getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if getattr(args, "num_workers", 0) < 0:
        raise ConfigError(f"--num-workers must be >= 0, got {args.num_workers}")
    if getattr(args, "out", None) and Path(args.out).exists() and not Path(args.out).is_dir():
        raise ConfigError(f"--out {args.out} is an existing file, not a folder")
    if hasattr(args, "device"):
        try:
            args.device = str(resolve_device(args.device))
        except ConfigError as error:
            raise ConfigError(f"--device {args.device}: {error}") from None


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


from exfacegan.cli_compare import add_compare_parser

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_report_parser, add_export_parser,
                                                                   add_offsets_parser, add_compare_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exfacegan", description="ExFaceGAN synthetic face datasets")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from exfacegan.entry import report_errors

    args = build_parser().parse_args(argv)
    return report_errors(lambda: _run(args))


def _run(args: argparse.Namespace) -> int:
    check_args(args)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
