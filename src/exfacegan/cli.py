"""The `exfacegan` console script. Subcommands register themselves in `SUBCOMMANDS`.

    exfacegan report <run_dir | image_folder> [--embedder dlib|iresnet50|iresnet100 --checkpoint PTH]
                     [--out DIR] [--device cpu|cuda] [--batch-size N] [--max-impostor-pairs N]

For a run directory the embedder the run judged with (`analyze.judge`, else `embedder`, read from the
run's config.yaml) is reused unless --embedder is given; anything else defaults to dlib.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from exfacegan.errors import ConfigError, DataError, ExFaceGANError

IRESNET_ARCHS = ("iresnet18", "iresnet34", "iresnet50", "iresnet100", "iresnet200")
EMBEDDERS = ("dlib", *IRESNET_ARCHS)
RUN_CONFIGS = ("config.yaml", ".hydra/config.yaml")


def build_embedder(name: str, checkpoint: str | None, device: str):
    """An embedder by name: dlib's descriptor, or an iresnet with weights from `checkpoint`."""
    from exfacegan import embedders

    if name == "dlib":
        return embedders.DlibEmbedder()
    if checkpoint is None:
        raise ConfigError(f"--embedder {name} needs --checkpoint /path/to/backbone.pth")
    return embedders.load_iresnet_embedder(name, checkpoint, device)


def run_embedder(run_dir: Path, device: str):
    """The embedder a run judged its dataset with, built from its saved config; None if there is none."""
    import exfacegan.run  # noqa: F401  (registers the config resolvers)
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    for name in RUN_CONFIGS:
        path = run_dir / name
        if not path.is_file():
            continue
        cfg = OmegaConf.load(path)
        node = OmegaConf.select(cfg, "analyze.judge") or OmegaConf.select(cfg, "embedder")
        if node is None or "network" not in node:
            return None
        try:
            module = instantiate(node.network, _convert_="all")
        except ExFaceGANError:
            raise
        except Exception as error:  # an unresolvable or outdated saved config
            raise ConfigError(f"cannot rebuild the embedder from {path} ({error}); pass --embedder") from error
        return module.eval().requires_grad_(False).to(device)
    return None


def report(args: argparse.Namespace) -> int:
    from exfacegan.stages.analyze import analyze, find_run_inputs

    path = Path(args.path)
    if not path.exists():
        raise DataError(f"{path} does not exist; give a run directory or an image folder <root>/<identity>/<images>")
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
    parser.add_argument("--checkpoint", default=None, help="iresnet backbone .pth (for --embedder iresnet*)")
    parser.add_argument("--out", default=None, help="output folder (default: <run_dir>/report or ./<name>_report)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-impostor-pairs", type=int, default=1_000_000)
    parser.add_argument("--num-workers", type=int, default=0, help="image decoding processes")
    parser.set_defaults(handler=report)


from exfacegan.cli_compare import add_compare_parser

SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [add_report_parser, add_compare_parser]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="exfacegan", description="ExFaceGAN synthetic face datasets")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for add in SUBCOMMANDS:
        add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except ExFaceGANError as error:
        print(f"exfacegan: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
